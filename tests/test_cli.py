"""The `message-broker` command."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.wire import RawClient

LISTENING = re.compile(r"listening on (\S+):(\d+)")


class BrokerProcess:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "message_broker", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = LISTENING.search(line)
        if not match:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"broker did not start: {line!r} {err}")
        self.port = int(match.group(2))

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out, err


@pytest.fixture
def run_broker() -> Iterator:
    started: list[BrokerProcess] = []

    def run(*args: str) -> BrokerProcess:
        process = BrokerProcess(*args)
        started.append(process)
        return process

    yield run
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully_and_clients_hear_it(run_broker, sig):
    broker = run_broker("--host", "127.0.0.1", "--port", "0")
    with RawClient(broker.port) as client:
        client.connect("listener")
        client.subscribe("system.broker.shutdown")
        code, out, err = broker.stop(sig)
        frames = client.expect_closed()
    assert code == 0, err
    assert frames[0]["params"]["topic"] == "system.broker.shutdown"
    assert frames[0]["params"]["payload"]["reason"] == f"received {signal.Signals(sig).name}"
    assert "stopped" in out
    assert "shutting down" in err


def test_serve_subcommand_log_messages_and_level(run_broker):
    broker = run_broker(
        "serve", "--host", "127.0.0.1", "--port", "0", "--log-messages", "--log-level", "debug"
    )
    with RawClient(broker.port) as client:
        client.connect("logger")
        client.publish("audit.trail", {"x": 1})
    code, _, err = broker.stop()
    assert code == 0
    assert "message_broker.messages" in err
    assert "topic=audit.trail" in err and '{"x": 1}' in err  # forwarded verbatim
    assert "DEBUG" in err


def test_config_file(run_broker, tmp_path: Path):
    config = tmp_path / "broker.toml"
    config.write_text('host = "127.0.0.1"\nport = 0\nmax_connections = 1\n')
    broker = run_broker("--config", str(config))
    with RawClient(broker.port) as first:
        first.connect("first")
        with RawClient(broker.port) as second:
            second.send(second.request_obj("connect", {"client_id": "second"}, 1))
            assert second.expect_closed()[0]["error"]["code"] == -32005
    assert broker.stop()[0] == 0


def test_bad_config_exits_2_with_a_message(tmp_path: Path):
    config = tmp_path / "broker.toml"
    config.write_text("max_queue_size = 0\n")
    result = subprocess.run(
        [sys.executable, "-m", "message_broker", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "max_queue_size" in result.stderr


def test_port_in_use_exits_1_with_a_message(run_broker):
    broker = run_broker("--host", "127.0.0.1", "--port", "0")
    result = subprocess.run(
        [sys.executable, "-m", "message_broker", "--host", "127.0.0.1", "--port", str(broker.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "cannot start" in result.stderr and str(broker.port) in result.stderr


def test_installed_command_and_version():
    command = shutil.which("message-broker", path=os.path.dirname(sys.executable))
    assert command, "the message-broker command is installed beside the interpreter"
    result = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.startswith("message-broker ")


def test_help_lists_the_options():
    result = subprocess.run(
        [sys.executable, "-m", "message_broker", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    for option in ("--host", "--port", "--config", "--log-messages", "--log-level"):
        assert option in result.stdout


@pytest.fixture
def spawn() -> Iterator:
    """Starts command-line processes; kills any still running afterwards."""
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-m", "message_broker", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def wait_for_subscription(port: int, pattern: str) -> None:
    """Waits until some client holds `pattern` (a CLI subscriber is ready)."""
    deadline = time.monotonic() + 20
    with RawClient(port) as observer:
        observer.connect("observer")
        while not any(pattern in c["subscriptions"] for c in observer.result("status")["clients"]):
            assert time.monotonic() < deadline, f"nobody subscribed to {pattern}"
            time.sleep(0.05)


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "message_broker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_pub_and_sub_commands(broker, spawn):
    port = str(broker.port)
    follower = spawn("sub", "--port", port, "--host", "127.0.0.1", "--count", "2", "demo.#")
    wait_for_subscription(broker.port, "demo.#")
    for topic, payload in (("demo.hello", '{"text": "héllo"}'), ("demo.x.y", "[1, 2]")):
        result = cli("pub", "--port", port, "--host", "127.0.0.1", topic, payload)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip()  # the message id
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert re.match(r"\d\d:\d\d:\d\d\.\d{3}  demo\.hello  from message-broker-pub-\d+  ", lines[0])
    assert lines[0].endswith('{"text": "héllo"}')
    assert "demo.x.y" in lines[1] and lines[1].endswith("[1, 2]")


def test_sub_json_output(broker, spawn):
    import json

    port = str(broker.port)
    follower = spawn("sub", "--port", port, "--host", "127.0.0.1", "--json", "--count", "1", "t")
    wait_for_subscription(broker.port, "t")
    with RawClient(broker.port) as pub:
        pub.connect("pub")
        message_id = pub.publish("t", {"n": 1})
    out, _ = follower.communicate(timeout=30)
    record = json.loads(out)
    assert record["topic"] == "t" and record["payload"] == {"n": 1}
    assert record["sender"] == "pub" and record["id"] == message_id


def test_request_and_status_commands(broker):
    port = str(broker.port)
    with RawClient(broker.port) as service:
        service.connect("svc")
        service.subscribe("math.double")
        result_holder: list[subprocess.CompletedProcess] = []
        import threading

        thread = threading.Thread(
            target=lambda: result_holder.append(
                cli("request", "--port", port, "--host", "127.0.0.1", "math.double", "21")
            )
        )
        thread.start()
        request = service.next_message(timeout=20)
        service.publish(request["reply_to"], request["payload"] * 2)
        thread.join(30)
    assert result_holder[0].returncode == 0, result_holder[0].stderr
    assert result_holder[0].stdout.strip() == "42"

    status = cli("status", "--port", port, "--host", "127.0.0.1")
    assert status.returncode == 0, status.stderr
    assert "CLIENT" in status.stdout and "SUBSCRIPTIONS" in status.stdout
    assert "message-broker-status-" in status.stdout


def test_client_command_errors(broker):
    port = str(broker.port)
    nobody = cli("request", "--port", port, "--host", "127.0.0.1", "nobody.home", "{}")
    assert nobody.returncode == 1
    assert "no responders" in nobody.stderr
    bad_json = cli("pub", "--port", port, "--host", "127.0.0.1", "t", "not json")
    assert bad_json.returncode == 2
    assert "not valid JSON" in bad_json.stderr
    reserved = cli("pub", "--port", port, "--host", "127.0.0.1", "system.x", "1")
    assert reserved.returncode == 1
    assert "reserved" in reserved.stderr


def test_commands_find_the_token_and_take_the_unix_socket(start_broker):
    guarded = start_broker(require_token=True)
    port = str(guarded.port)
    # No --token: the command reads the runtime file, as any program of this user.
    found = cli("status", "--port", port, "--host", "127.0.0.1")
    assert found.returncode == 0, found.stderr
    assert f"tcp 127.0.0.1:{port} (token required)" in found.stdout
    assert f"unix {guarded.local_socket} (no token)" in found.stdout
    for url in (f"unix://{guarded.local_socket}", guarded.local_socket):
        local = cli("pub", "--url", url, "t", "1")
        assert local.returncode == 0, local.stderr
    wrong = cli("pub", "--port", port, "--host", "127.0.0.1", "--token", "ab" * 32, "t", "1")
    assert wrong.returncode == 1
    assert "wrong token" in wrong.stderr
    bad_url = cli("status", "--url", "tcp://127.0.0.1")
    assert bad_url.returncode == 2
    assert "needs a port" in bad_url.stderr


def test_serve_says_where_the_socket_and_token_are(run_broker):
    runtime = Path(tempfile.mkdtemp(prefix="mb-"))
    try:
        broker = run_broker("--port", "0", "--require-token", "--runtime-dir", str(runtime / "r"))
        assert broker.proc.stdout is not None
        socket_line, token_line = broker.proc.stdout.readline(), broker.proc.stdout.readline()
        assert f"local socket (this user only, no token): {runtime}/r/broker-" in socket_line
        runtime_file = runtime / "r" / f"broker-{broker.port}.json"
        assert f"token for TCP clients (required): in {runtime_file}" in token_line
        code, _, _ = broker.stop()
        assert code == 0
        assert not runtime_file.exists()
        plain = run_broker("--port", "0", "--no-local-socket", "--runtime-dir", str(runtime / "r"))
        assert plain.proc.stdout is not None
        assert "local socket" not in plain.proc.stdout.readline()
        plain.stop()
    finally:
        shutil.rmtree(runtime)


def test_client_command_without_a_broker():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    result = cli("status", "--port", port, "--host", "127.0.0.1")
    assert result.returncode == 1
    assert "cannot reach the broker" in result.stderr
