"""The `message-broker` command."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from wire import RawClient

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
