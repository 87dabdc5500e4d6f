"""QtBrokerClient and QtBrokerHost, headless (QT_QPA_PLATFORM=offscreen, set in conftest)."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QCoreApplication, QThread, QTimer

from message_broker import BrokerConfig, Message, MessageBroker
from message_broker.qt_client import QtBrokerClient, QtBrokerHost

from support import TESTS
from support.wire import RawClient

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WAIT_MS = 10_000


@pytest.fixture
def qt_client(qtbot, broker):
    clients: list[QtBrokerClient] = []

    def make(client_id: str = "qt", **options) -> QtBrokerClient:
        client = QtBrokerClient(client_id, "127.0.0.1", broker.port, **options)
        with qtbot.waitSignal(client.connected, timeout=WAIT_MS):
            client.connect_to_broker()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.disconnect_from_broker()


def test_every_signal_fires_with_the_seed_types(qtbot, qt_client, broker):
    client = qt_client()
    with qtbot.waitSignal(client.subscribed, timeout=WAIT_MS) as subscribed:
        client.subscribe(["jobs.*"])
    assert subscribed.args == [["jobs.*"]]

    with (
        qtbot.waitSignal(client.published, timeout=WAIT_MS) as published,
        qtbot.waitSignal(client.message_received, timeout=WAIT_MS) as received,
    ):
        message_id = client.publish("jobs.activated", {"job_id": "123", "big": 2**70})
    assert published.args == [message_id]
    topic, payload, sender, msg_id = received.args
    assert [type(a) for a in received.args] == [str, dict, str, str]
    assert (topic, payload, sender, msg_id) == (
        "jobs.activated",
        {"job_id": "123", "big": 2**70},
        "qt",
        message_id,
    )

    with qtbot.waitSignal(client.message_received, timeout=WAIT_MS) as received:
        client.publish("jobs.list", [1, 2])
    assert received.args[1] == {"value": [1, 2]}

    with qtbot.waitSignal(client.error_occurred, timeout=WAIT_MS) as error:
        assert client.publish("system.nope", 1) == ""
    assert "reserved" in error.args[0]

    with qtbot.waitSignal(client.disconnected, timeout=WAIT_MS):
        client.disconnect_from_broker()
    assert not client.is_connected


def test_connection_failed(qtbot):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = QtBrokerClient("lonely", "127.0.0.1", port, connect_retries=0)
    with qtbot.waitSignal(client.connection_failed, timeout=WAIT_MS) as failed:
        client.connect_to_broker()
    assert isinstance(failed.args[0], str) and "cannot connect" in failed.args[0]


def test_signals_arrive_on_the_owner_thread(qtbot, qt_client):
    client = qt_client()
    gui_thread = QCoreApplication.instance().thread()
    seen = []

    def on_message(topic, payload, sender, msg_id):
        seen.append((QThread.currentThread() is gui_thread, threading.get_ident()))

    client.message_received.connect(on_message)
    with qtbot.waitSignal(client.subscribed, timeout=WAIT_MS):
        client.subscribe("t")
    with qtbot.waitSignal(client.message_received, timeout=WAIT_MS):
        client.publish("t", {"x": 1})
    assert seen == [(True, threading.get_ident())]


def test_callbacks_answer_requests_and_replies_arrive_as_signals(qtbot, qt_client):
    service = qt_client("svc")
    client = qt_client("client")
    with qtbot.waitSignal(service.subscribed, timeout=WAIT_MS):
        service.subscribe("math.double", lambda msg: msg.payload * 2)
    replies = []
    with qtbot.waitSignal(client.reply_received, timeout=WAIT_MS) as reply:
        number = client.request("math.double", 21, callback=lambda r, e: replies.append((r, e)))
    assert reply.args == [number, 42]
    assert replies == [(42, None)]
    with qtbot.waitSignal(client.request_failed, timeout=WAIT_MS) as failed:
        number = client.request("nobody.home", {})
    assert failed.args[0] == number and "no responders" in failed.args[1]


def test_10000_messages_in_order_while_the_gui_keeps_ticking(qtbot, qt_client, broker):
    client = qt_client()
    got: list[int] = []
    client.message.connect(lambda msg: got.append(msg.payload["n"]))
    with qtbot.waitSignal(client.subscribed, timeout=WAIT_MS):
        client.subscribe("burst")
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    count = 10_000
    # The publisher runs in its own process: in this one it would hold the GIL while
    # encoding its batches and stall the GUI thread itself.
    publisher = subprocess.Popen(
        [sys.executable, "-m", "support.burst_publisher", str(broker.port), "burst", str(count)],
        cwd=TESTS,
    )
    try:
        qtbot.waitUntil(lambda: len(got) >= count, timeout=60_000)
        assert publisher.wait(30) == 0
    finally:
        if publisher.poll() is None:
            publisher.kill()
            publisher.wait()
    timer.stop()
    assert got == list(range(count))
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) > 10
    assert max(gaps) < 0.050, f"the GUI loop stalled for {max(gaps) * 1000:.0f} ms"


def test_broker_restart_gives_disconnected_then_connected(qtbot):
    first = MessageBroker(BrokerConfig(host="127.0.0.1", port=0))
    port = first.start_sync()
    client = QtBrokerClient("qt", "127.0.0.1", port, reconnect_delay=0.05)
    events: list[str] = []
    client.connected.connect(lambda: events.append("connected"))
    client.disconnected.connect(lambda: events.append("disconnected"))
    got: list[Message] = []
    client.message.connect(got.append)
    with qtbot.waitSignal(client.connected, timeout=WAIT_MS):
        client.connect_to_broker()
    with qtbot.waitSignal(client.subscribed, timeout=WAIT_MS):
        client.subscribe("jobs.*")
    with qtbot.waitSignal(client.disconnected, timeout=WAIT_MS):
        first.stop_sync()
    second = MessageBroker(BrokerConfig(host="127.0.0.1", port=port))
    try:
        with qtbot.waitSignal(client.connected, timeout=WAIT_MS):
            second.start_sync()
        assert events == ["connected", "disconnected", "connected"]
        with RawClient(port) as pub:
            pub.connect("pub")
            pub.publish("jobs.after", "resumed")
        qtbot.waitUntil(lambda: any(m.payload == "resumed" for m in got), timeout=WAIT_MS)
    finally:
        client.disconnect_from_broker()
        qtbot.waitUntil(lambda: not client.is_connected, timeout=WAIT_MS)
        second.stop_sync()


def test_host_mode(qtbot):
    host = QtBrokerHost(BrokerConfig(host="127.0.0.1", port=0))
    with qtbot.waitSignal(host.started, timeout=WAIT_MS) as started:
        port = host.start()
    assert started.args == [port] and host.port == port
    a, b = host.create_client("a"), host.create_client("b")
    for client in (a, b):
        with qtbot.waitSignal(client.connected, timeout=WAIT_MS):
            client.connect_to_broker()
    with qtbot.waitSignal(b.subscribed, timeout=WAIT_MS):
        b.subscribe("hello")
    with qtbot.waitSignal(b.message_received, timeout=WAIT_MS) as received:
        a.publish("hello", {"from": "a"})
    assert received.args[1] == {"from": "a"}
    with qtbot.waitSignal(host.stopped, timeout=WAIT_MS):
        host.stop()


def test_seed_main_window_runs_and_closes_cleanly(tmp_path):
    """The seed's MainWindow, as written, in its own process: it connects, subscribes
    on `connected`, receives, and exits with 0 when the window closes."""
    script = tmp_path / "run_window.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(EXAMPLES)!r})\n"
        "from PySide6.QtCore import QTimer\n"
        "from PySide6.QtWidgets import QApplication\n"
        "from qt_main_window import MainWindow\n"
        "app = QApplication(sys.argv)\n"
        "window = MainWindow()\n"
        "window.show()\n"
        "window._broker.subscribed.connect(lambda p: window.publish_event('42'))\n"
        "window._broker.message_received.connect(lambda *a: QTimer.singleShot(50, window.close))\n"
        "sys.exit(app.exec())\n"
    )
    with MessageBroker() as broker:  # the seed's client uses localhost:15234
        assert broker.port == 15234
        result = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
        )
    assert result.returncode == 0, result.stderr
    assert "jobs.activated from main_app: {'job_id': '42'}" in result.stdout


def test_importing_the_package_without_pyside6():
    code = (
        "import sys; sys.modules['PySide6'] = None\n"
        "import message_broker\n"
        "try:\n"
        "    import message_broker.qt_client\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'message-broker[qt]'" in result.stdout


def test_dashboard_example_publishes_and_lists_messages(qtbot):
    from PySide6.QtCore import Qt

    sys.path.insert(0, str(EXAMPLES))
    try:
        from qt_dashboard import Dashboard
    finally:
        sys.path.remove(str(EXAMPLES))
    host = QtBrokerHost(BrokerConfig(host="127.0.0.1", port=0))
    host.start()
    window = Dashboard(host.create_client("dashboard"), "test")
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.state.text() == "connected as dashboard", timeout=WAIT_MS)
    qtbot.waitUntil(
        lambda: any(c["subscriptions"] for c in host.broker.status()["clients"]), timeout=WAIT_MS
    )
    window.payload.setText('{"job_id": "dashboard-test", "text": "Grüße"}')
    qtbot.mouseClick(window.send, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.messages.count() >= 1, timeout=WAIT_MS)
    line = window.messages.item(window.messages.count() - 1).text()
    assert "jobs.activated  from dashboard" in line and "Grüße" in line
    window.payload.setText("not json")
    qtbot.mouseClick(window.send, Qt.MouseButton.LeftButton)
    assert "the payload is not JSON" in window.messages.item(window.messages.count() - 1).text()
    window.close()
    host.stop()
