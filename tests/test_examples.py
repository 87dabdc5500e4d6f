"""The examples run as written."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.wire import RawClient

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SEED_PORT = 15234


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
        [sys.executable, str(EXAMPLES / "basic_server.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it, even when the suite itself runs as a
        # background job (which starts with SIGINT ignored, and children inherit that).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
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
        [sys.executable, str(EXAMPLES / "raw_socket_client.py"), str(broker.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "'client_id': 'raw-example'" in result.stdout
    assert "'subscribed': ['example.*']" in result.stdout
    assert "delivered: {'jsonrpc': '2.0', 'method': 'message'" in result.stdout
    assert "'disconnected': True" in result.stdout
