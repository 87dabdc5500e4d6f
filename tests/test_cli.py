"""The `message-broker` command."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
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


def test_the_broker_command_runs_without_the_client_side(run_broker, monkeypatch):
    # An idle broker is about 10 MB smaller without asyncio (ssl comes with it) and the
    # client's modules: the broker command imports none of them.
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    broker = run_broker("--host", "127.0.0.1", "--port", "0")
    with RawClient(broker.port) as client:
        client.connect("light")
        client.subscribe("light.check")
    code, _, err = broker.stop()
    assert code == 0, err
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in err.splitlines()
        if line.startswith("import time:")
    }
    assert "message_broker._core" in imported
    client_side = {"asyncio", "ssl", "message_broker.client", "message_broker._cli_commands"}
    assert not imported & client_side


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


def test_serve_prints_the_explorer_page_address_with_the_token(run_broker):
    broker = run_broker("--host", "127.0.0.1", "--port", "0", "--http-port", "0")
    assert broker.proc.stdout is not None
    lines = [broker.proc.stdout.readline() for _ in range(3)]
    (page,) = [line for line in lines if "explorer page" in line]
    address = re.search(r"(http://127\.0\.0\.1:(\d+)/)#token=([0-9a-f]{64})$", page.strip())
    assert address, page
    runtime = json.loads(
        Path(os.environ["MESSAGE_BROKER_RUNTIME_DIR"], f"broker-{broker.port}.json").read_text()
    )
    assert address.group(3) == runtime["token"]
    with urllib.request.urlopen(f"{address.group(1)}healthz", timeout=10) as health:
        assert json.load(health) == {"status": "ok"}
    code, _, _ = broker.stop()
    assert code == 0


def test_client_command_without_a_broker():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    result = cli("status", "--port", port, "--host", "127.0.0.1")
    assert result.returncode == 1
    assert "cannot reach the broker" in result.stderr


# -- errors: one line, the right exit code, never a traceback ---------------------------


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["request", "t", "{}", "--timeout", "0"], "--timeout: must be more than 0"),
        (["request", "t", "--timeout", "3601"], "--timeout: must be at most 3600"),
        (["status", "--port", "0"], "--port: a port is a number from 1 to 65535, got '0'"),
        (["pub", "a.b", "1", "--port", "70000"], "got '70000'"),
        (["serve", "--port", "70000"], "got '70000'"),
        (["sub", "--count", "0", "x"], "--count: must be at least 1"),
        (["pub", "jobs.x", "hello"], """text must be quoted as a JSON string: '"hello"'"""),
        (["pub", "jobs.x", '{"a":'], "not valid JSON (Expecting value"),
        (["pub", "t", "1", "--qos", "2"], "invalid choice: 2"),
        (["pub", "t", "1", "--ttl", "-1"], "--ttl: must be at least 0"),
        (["pub", "t", "1", "--headers", '{"k": 1}'], "headers are a JSON object of strings"),
        (["status", "--url", "tcp://127.0.0.1:1", "--port", "2"], "leave out --host and --port"),
        (["sub", "--durable", "x"], "--durable needs --queue NAME"),
        (["queues", "purge"], "queues purge needs the queue's NAME"),
        (["queues", "list", "orders"], "say purge or delete before its name"),
        (["bench", "--messages", "0"], "--messages: must be at least 1"),
        (["bench", "--subscribers", "101"], "--subscribers: must be at most 100"),
    ],
)
def test_bad_arguments_are_refused_in_one_line_with_exit_2(args, needle):
    result = cli(*args)
    assert result.returncode == 2
    line = one_line_error(result)
    assert line.startswith(f"message-broker {args[0]}: "), line
    assert needle in line


def test_no_broker_is_one_line_with_the_reason():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = cli("pub", "t", "1", "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 1
    line = one_line_error(result)
    assert line.startswith(f"message-broker: cannot reach the broker at tcp://127.0.0.1:{port}: ")
    assert "refused" in line.lower()


def test_a_publish_the_broker_refuses_fails_the_command(start_broker):
    broker = start_broker(permissions=[{"client": "cli", "publish": {"deny": ["secret.#"]}}])
    port = str(broker.port)
    refused = cli(
        "pub", "secret.x", "1", "--port", port, "--host", "127.0.0.1", "--client-id", "cli"
    )
    assert refused.returncode == 1
    assert "may not publish" in one_line_error(refused)
    allowed = cli("pub", "open.x", "1", "--port", port, "--host", "127.0.0.1", "--client-id", "cli")
    assert allowed.returncode == 0, allowed.stderr


def test_config_file_errors_name_the_file_and_line(tmp_path: Path):
    config = tmp_path / "broker.toml"
    config.write_text('host = "127.0.0.1"\nport = \n')
    result = cli("--config", str(config))
    assert result.returncode == 2
    assert f"{config}, line 2, column 8: " in one_line_error(result)
    config.write_text("prot = 0\n")
    result = cli("--config", str(config))
    assert result.returncode == 2
    assert "did you mean port?" in one_line_error(result)


# -- pub ---------------------------------------------------------------------------------


def test_pub_options_and_a_payload_from_standard_input(start_broker):
    broker = start_broker(
        queues=[{"name": "one", "patterns": ["full.*"], "durable": True, "max_length": 1}]
    )
    port = str(broker.port)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "message_broker",
            "pub",
            "state.lamp",
            "-",
            "--port",
            port,
            "--host",
            "127.0.0.1",
            "--retain",
            "--ttl",
            "60",
            "--headers",
            '{"trace": "t1"}',
        ],
        input='{"on": true}\n',
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    with RawClient(broker.port) as late:
        late.connect("late")
        late.subscribe("state.*")
        retained = late.next_message(timeout=20)
    assert retained["payload"] == {"on": True} and retained["retained"] is True
    assert (retained["ttl"], retained["headers"]) == (60, {"trace": "t1"})

    # qos 1: confirmed once the queue stored it, refused when the queue is full.
    first = cli("pub", "full.a", "1", "--qos", "1", "--port", port, "--host", "127.0.0.1")
    assert first.returncode == 0, first.stderr
    second = cli("pub", "full.a", "2", "--qos", "1", "--port", port, "--host", "127.0.0.1")
    assert second.returncode == 1
    assert "one" in one_line_error(second)
    empty_input = subprocess.run(
        [sys.executable, "-m", "message_broker", "pub", "t", "-", "--port", port],
        input="hello",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert empty_input.returncode == 2
    assert "standard input" in one_line_error(empty_input)


# -- sub ---------------------------------------------------------------------------------


def test_sub_marks_retained_messages_and_reports_reconnections(start_broker, spawn):
    first = start_broker()
    port = first.port
    with RawClient(port) as publisher:
        publisher.connect("pub")
        publisher.publish("lamp.state", {"on": True}, retain=True)
    follower = spawn("sub", "lamp.*", "--count", "2", "--port", str(port), "--host", "127.0.0.1")
    wait_for_subscription(port, "lamp.*")
    first.stop_sync()
    second = start_broker(port=port)
    wait_for_subscription(port, "lamp.*")  # subscriptions come back with the connection
    with RawClient(port) as publisher:
        publisher.connect("pub")
        publisher.publish("lamp.state", {"on": False})
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    retained, live = out.strip().splitlines()
    assert "[retained]" in retained and retained.endswith('{"on": true}')
    assert "[retained]" not in live and live.endswith('{"on": false}')
    assert err.strip().splitlines() == [
        "message-broker: disconnected (the broker is shutting down); reconnecting",
        "message-broker: reconnected",
    ]
    second.stop_sync()


def test_sub_from_a_durable_queue_takes_its_count_and_leaves_the_rest(start_broker, spawn):
    broker = start_broker(queues=[{"name": "jobs", "patterns": ["jobs.*"], "durable": True}])
    port = str(broker.port)
    with RawClient(broker.port) as publisher:
        publisher.connect("pub")
        for n in range(3):
            publisher.publish("jobs.new", n, qos=1)
    follower = spawn(
        "sub",
        "jobs.*",
        "--queue",
        "jobs",
        "--durable",
        "--count",
        "2",
        "--json",
        "--port",
        port,
        "--host",
        "127.0.0.1",
    )
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    import json

    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["payload"], r["queue"]) for r in records] == [(0, "jobs"), (1, "jobs")]
    (queue,) = broker.status()["queues"]
    assert (queue["depth"], queue["in_flight"], queue["acked"]) == (1, 0, 2)


def test_a_plain_sub_never_keeps_a_request_waiting(broker, spawn):
    port = str(broker.port)
    spawn("sub", "ask.*", "--port", port, "--host", "127.0.0.1")
    wait_for_subscription(broker.port, "ask.*")
    started = time.monotonic()
    result = cli("request", "ask.x", "--timeout", "20", "--port", port, "--host", "127.0.0.1")
    assert result.returncode == 1
    assert "no responders" in one_line_error(result)
    assert time.monotonic() - started < 15, "refused at once, not after the timeout"


def test_sub_stops_quietly_when_its_reader_goes_away(broker):
    port = str(broker.port)
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "message_broker",
            "sub",
            "out.*",
            "--port",
            port,
            "--host",
            "127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_subscription(broker.port, "out.*")
        assert follower.stdout is not None
        follower.stdout.close()
        with RawClient(broker.port) as publisher:
            publisher.connect("pub")
            publisher.publish("out.x", 1)
            publisher.publish("out.x", 2)
        assert follower.wait(30) == 141
        assert follower.stderr is not None
        assert follower.stderr.read() == ""
    finally:
        if follower.poll() is None:
            follower.kill()
        follower.wait(10)


@pytest.mark.parametrize("command", [["sub", "quiet.*"], ["reply", "quiet.*", "1"]])
def test_ctrl_c_exits_130_quietly(broker, command):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "message_broker",
            *command,
            "--port",
            str(broker.port),
            "--host",
            "127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it, even when the suite runs as a background job.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_for_subscription(broker.port, "quiet.*")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 130
    assert (out, err) == ("", "")


# -- reply -------------------------------------------------------------------------------


def test_reply_answers_requests_until_its_count(broker, spawn):
    port = str(broker.port)
    responder = spawn(
        "reply", "svc.*", "null", "--count", "2", "--port", port, "--host", "127.0.0.1"
    )
    wait_for_subscription(broker.port, "svc.*")
    with RawClient(broker.port) as asker:
        asker.connect("asker")
        asker.publish("svc.note", "not a request: no answer, not counted")
        assert asker.call("request", {"topic": "svc.a", "payload": 1})["result"] is None
        assert asker.call("request", {"topic": "svc.b", "payload": 2})["result"] is None
    out, err = responder.communicate(timeout=30)
    assert responder.returncode == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert "svc.a  from asker" in lines[0] and lines[0].endswith("  1")
    assert "svc.b  from asker" in lines[1]


# -- status, queues ----------------------------------------------------------------------


def test_status_json_and_queues_list_purge_delete(start_broker):
    import json

    broker = start_broker(queues=[{"name": "orders", "patterns": ["orders.*"], "durable": True}])
    where = ("--port", str(broker.port), "--host", "127.0.0.1")
    with RawClient(broker.port) as publisher:
        publisher.connect("pub")
        for n in range(2):
            publisher.publish("orders.new", n, qos=1)
    status = cli("status", "--json", *where)
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert document["queues"][0]["name"] == "orders"
    assert any(c["client_id"].startswith("message-broker-status-") for c in document["clients"])

    listed = cli("queues", *where)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.strip().splitlines()
    assert header.split() == ["QUEUE", "DURABLE", "READY", "IN", "FLIGHT", "CONSUMERS", "PATTERNS"]
    assert row.split() == ["orders", "yes", "2", "0", "0", "orders.*"]
    as_json = cli("queues", "--json", *where)
    assert json.loads(as_json.stdout)[0]["depth"] == 2

    purged = cli("queues", "purge", "orders", *where)
    assert (purged.returncode, purged.stdout.strip()) == (0, "queue orders: 2 message(s) purged")
    (queue,) = broker.status()["queues"]
    assert (queue["depth"], queue["patterns"]) == (0, ["orders.*"]), "emptied, still bound"

    deleted = cli("queues", "delete", "orders", *where)
    assert (deleted.returncode, deleted.stdout.strip()) == (
        0,
        "queue orders: deleted, with 0 message(s)",
    )
    assert cli("queues", *where).stdout.strip() == "no queues"
    missing = cli("queues", "purge", "orders", *where)
    assert missing.returncode == 1
    assert 'there is no queue "orders"' in one_line_error(missing)


# -- where the commands connect ------------------------------------------------------------


def test_url_from_the_environment_unless_host_or_port_is_given(broker):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nowhere = s.getsockname()[1]

    def status(*args: str, url: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "message_broker", "status", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "MESSAGE_BROKER_URL": url},
        )

    found = status(url=f"tcp://127.0.0.1:{broker.port}")
    assert found.returncode == 0, found.stderr
    assert f"on 127.0.0.1:{broker.port}" in found.stdout
    given = status(
        "--host", "127.0.0.1", "--port", str(broker.port), url=f"tcp://127.0.0.1:{nowhere}"
    )
    assert given.returncode == 0, given.stderr
    explicit = status("--url", f"tcp://127.0.0.1:{nowhere}", url=f"tcp://127.0.0.1:{broker.port}")
    assert explicit.returncode == 1
    assert f"cannot reach the broker at tcp://127.0.0.1:{nowhere}" in one_line_error(explicit)


# -- bench -------------------------------------------------------------------------------


def test_bench_reports_throughput_and_latency_with_a_progress_line(broker):
    result = cli(
        "bench",
        "--messages",
        "1500",
        "--rate",
        "1000",
        "--subscribers",
        "2",
        "--size",
        "64",
        "--port",
        str(broker.port),
        "--host",
        "127.0.0.1",
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("bench: 1500 messages of 64 bytes on bench.")
    assert lines[1].startswith("publish: 1500 msgs in ") and "msgs/s" in lines[1]
    assert lines[2].startswith("receive: 3000/3000 msgs, per subscriber ")
    assert re.match(
        r"latency, publish to delivery: p50 [\d.]+ ms  p90 [\d.]+ ms  p99 [\d.]+ ms  max", lines[3]
    )
    # Not a terminal: a progress line a second, on standard error.
    assert re.search(r"^bench: published \d+/1500, received \d+/3000$", result.stderr, re.M)
    assert broker.status()["client_count"] == 0, "every bench connection is closed"


def test_bench_stops_at_its_timeout(broker):
    started = time.monotonic()
    result = cli(
        "bench",
        "--messages",
        "100000",
        "--rate",
        "200",
        "--timeout",
        "1.5",
        "--port",
        str(broker.port),
        "--host",
        "127.0.0.1",
        timeout=60,
    )
    assert time.monotonic() - started < 20
    assert result.returncode == 1
    assert "bench stopped after --timeout 1.5 s" in result.stderr
    assert "missing: " in result.stdout and "not arrived within --timeout" in result.stdout


def test_the_readme_lists_the_commands_and_options_there_are(capsys):
    from message_broker._cli import main

    from support.readme import readme_blocks

    (usage,) = readme_blocks("### Command-line clients", "text")
    lines = [line.split() for line in usage.splitlines() if line.startswith("message-broker ")]
    assert {words[1] for words in lines} == {
        "pub",
        "sub",
        "request",
        "reply",
        "status",
        "queues",
        "bench",
    }
    for words in lines:
        with pytest.raises(SystemExit):
            main([words[1], "--help"])
        help_text = capsys.readouterr().out
        for option in (w.strip("[]") for w in words if w.strip("[").startswith("--")):
            assert option in help_text, (words[1], option)
        for action in ("purge", "delete"):
            if action in words:
                assert action in help_text


def test_the_readme_examples_of_payloads_run_as_written(broker):
    from support import REPOSITORY

    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n### Command-line clients\n", 1)[1].split("\n## ", 1)[0]
    prose = section.split("```")[-1]  # after the usage block
    examples = re.findall(r"`([^`]*message-broker pub [^`]*)`", prose)
    expected = {"jobs.x": "hello", "jobs.new": {"id": 7}}
    assert len(examples) == len(expected), examples
    where = f" --port {broker.port} --host 127.0.0.1"
    with RawClient(broker.port) as watcher:
        watcher.connect("watcher")
        watcher.subscribe("jobs.*")
        for example in examples:
            command = example.replace("message-broker", f"{sys.executable} -m message_broker")
            result = subprocess.run(
                command + where, shell=True, capture_output=True, text=True, timeout=30
            )
            assert result.returncode == 0, result.stderr
            message = watcher.next_message(timeout=20)
            assert message["payload"] == expected[message["topic"]]
