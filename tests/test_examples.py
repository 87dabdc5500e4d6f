"""The examples run as written, each on the port given with --port; and the seed's
Basic Server, as written, on its own port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import SUPPORT
from support.wire import RawClient

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SEED_PORT = 15234


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def restore_ctrl_c() -> None:
    """Ctrl-C as a terminal delivers it, even when the suite itself runs as a background
    job (which starts with SIGINT ignored, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def run_example() -> Iterator:
    """Starts example programs; stops any still running afterwards."""
    started: list[subprocess.Popen] = []

    def run(name: str, *args: str, **env: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / name), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
            preexec_fn=restore_ctrl_c,
        )
        started.append(process)
        return process

    yield run
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def wait_for_broker(port: int, proc: subprocess.Popen) -> RawClient:
    deadline = time.monotonic() + 20
    while True:
        try:
            return RawClient(port, host="localhost")
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def seed_server():
    proc = subprocess.Popen(
        [sys.executable, str(SUPPORT / "seed_basic_server.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=restore_ctrl_c,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def test_seed_basic_server_serves_and_stops_on_ctrl_c(seed_server):
    client = wait_for_broker(SEED_PORT, seed_server)
    client.connect("seed-test")
    client.subscribe("system.broker.shutdown")
    seed_server.send_signal(signal.SIGINT)
    frames = client.expect_closed(timeout=20)
    client.close()
    # The program never reaches its own `await broker.stop()` (asyncio turns Ctrl-C into
    # a cancelled task), so the broker is stopped at interpreter exit: clients are
    # still told, before their connection closes.
    assert frames[0]["params"]["topic"] == "system.broker.shutdown"
    assert frames[0]["params"]["payload"] == {"reason": "broker process exiting"}
    seed_server.wait(timeout=20)
    _, err = seed_server.communicate(timeout=10)
    assert "KeyboardInterrupt" in err
    assert "Fatal Python error" not in err


def test_raw_socket_client_example(broker):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "raw_socket_client.py"), "--port", str(broker.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "'client_id': 'raw-example'" in result.stdout
    assert "'subscribed': ['example.*']" in result.stdout
    assert "delivered: {'jsonrpc': '2.0', 'method': 'message'" in result.stdout
    assert "'disconnected': True" in result.stdout


def test_basic_server_takes_a_port_and_stops_on_ctrl_c_without_a_traceback(run_example):
    port = free_port()
    server = run_example("basic_server.py", "--port", str(port))
    assert server.stdout is not None
    assert server.stdout.readline().strip() == f"listening on localhost:{port}; Ctrl-C stops"
    with RawClient(port, host="localhost") as client:
        client.connect("example-test")
        client.subscribe("system.broker.shutdown")
        server.send_signal(signal.SIGINT)
        frames = client.expect_closed(timeout=20)
    # Its own `await broker.stop()` runs: the default reason, not the exit hook's.
    assert frames[0]["params"]["payload"] == {"reason": "broker stopped"}
    _, err = server.communicate(timeout=20)
    assert server.returncode == 0
    assert err == ""


def wait_for_client(port: int, client_id: str, pattern: str, process: subprocess.Popen) -> None:
    """Waits until `client_id` holds `pattern` on the broker at `port`."""
    deadline = time.monotonic() + 30
    with RawClient(port) as observer:
        observer.connect("observer")
        while True:
            clients = {c["client_id"]: c for c in observer.result("status")["clients"]}
            if pattern in clients.get(client_id, {}).get("subscriptions", []):
                return
            assert process.poll() is None, process.communicate(timeout=10)
            assert time.monotonic() < deadline, f"{client_id} did not subscribe: {clients}"
            time.sleep(0.05)


@pytest.mark.parametrize(
    "example,client_id,pattern",
    [("qt_main_window.py", "main_app", "jobs.*"), ("qt_dashboard.py", "dashboard", "jobs.#")],
)
def test_qt_examples_connect_to_the_port_given(
    run_example, start_broker, example, client_id, pattern
):
    broker = start_broker(host="localhost")
    window = run_example(example, "--port", str(broker.port), QT_QPA_PLATFORM="offscreen")
    wait_for_client(broker.port, client_id, pattern, window)
