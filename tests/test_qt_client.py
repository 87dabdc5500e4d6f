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

from message_broker import URL_ENV, BrokerConfig, Message, MessageBroker, ResponderError
from message_broker.qt_client import QtBrokerClient, QtBrokerHost, QtSubscription

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


def test_headers_reach_qt_callbacks(qtbot, qt_client):
    client = qt_client()
    got: list[Message] = []
    with qtbot.waitSignal(client.subscribed, timeout=WAIT_MS):
        client.subscribe(["docs.*"], got.append)
    with qtbot.waitSignal(client.message_received, timeout=WAIT_MS):
        client.publish("docs.new", "# hi", headers={"trace-id": "qt-1"})
    assert got[0].headers == {"trace-id": "qt-1"}
    with qtbot.waitSignal(client.error_occurred, timeout=WAIT_MS) as error:
        assert client.publish("docs.new", 1, headers={"n": 1}) == ""
    assert "strings" in error.args[0]


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
    count = 10_000
    # The GUI thread's own CPU time at the start, at each tick and when the last
    # message is in: what the client makes it do between two ticks, however long the
    # machine keeps the process waiting besides (and however quickly the burst is done).
    ticks: list[float] = []

    def on_message(msg) -> None:
        got.append(msg.payload["n"])
        if len(got) == count:
            ticks.append(time.thread_time())

    client.message.connect(on_message)
    with qtbot.waitSignal(client.subscribed, timeout=WAIT_MS):
        client.subscribe("burst")
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.thread_time()) if len(got) < count else None)
    ticks.append(time.thread_time())
    timer.start()
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
    assert max(gaps) < 0.050, f"the GUI thread worked {max(gaps) * 1000:.0f} ms without a tick"


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


def connect_and_echo(qtbot, client: QtBrokerClient) -> None:
    """Connects ``client``, sends itself a message, and disconnects."""
    with qtbot.waitSignal(client.connected, timeout=WAIT_MS):
        client.connect_to_broker()
    try:
        with qtbot.waitSignal(client.subscribed, timeout=WAIT_MS):
            client.subscribe("echo")
        with qtbot.waitSignal(client.message_received, timeout=WAIT_MS) as received:
            client.publish("echo", {"n": 1})
        assert received.args[:3] == ["echo", {"n": 1}, client.client_id]
    finally:
        with qtbot.waitSignal(client.disconnected, timeout=WAIT_MS):
            client.disconnect_from_broker()


def test_a_broker_that_requires_its_token_needs_no_configuration(qtbot, start_broker):
    """The client finds the token in the broker's runtime file by itself."""
    broker = start_broker(require_token=True)
    connect_and_echo(qtbot, QtBrokerClient("qt", "127.0.0.1", broker.port, connect_retries=0))


@pytest.mark.skipif(sys.platform == "win32", reason="the local socket is a Unix socket")
def test_the_local_socket_by_url(qtbot, start_broker):
    broker = start_broker(require_token=True)
    client = QtBrokerClient("qt", url=f"unix://{broker.local_socket}", connect_retries=0)
    connect_and_echo(qtbot, client)


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


def test_importing_with_the_pyside6_release_that_crashes_is_refused():
    # The installed PySide6, made to say it is 6.12.0 (whose emits crash the interpreter).
    code = (
        "import PySide6\n"
        "PySide6.__version__ = '6.12.0'\n"
        "try:\n"
        "    import message_broker.qt_client\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
        "else:\n"
        "    print('imported')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        "ImportError: message_broker.qt_client cannot run on PySide6 6.12.0: "
    )
    assert "interpreter aborts" in result.stdout
    assert "pip install 'PySide6-Essentials>=6.6,!=6.12.0'" in result.stdout


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


# -- what the asyncio client does too: qos=1, queues, retained messages, last will -----


def queue_of(broker: MessageBroker, name: str) -> dict:
    (queue,) = [q for q in broker.status()["queues"] if q["name"] == name]
    return queue


def test_qos1_is_confirmed_or_refused_by_signals(qtbot, start_broker):
    broker = start_broker(queues=[{"name": "small", "patterns": ["orders.*"], "max_length": 1}])
    client = QtBrokerClient("qt", "127.0.0.1", broker.port)
    with qtbot.waitSignal(client.connected, timeout=WAIT_MS):
        client.connect_to_broker()
    try:
        with qtbot.waitSignal(client.published, timeout=WAIT_MS) as confirmed:
            first = client.publish("orders.new", {"id": 1}, qos=1)
        assert confirmed.args == [first]
        assert queue_of(broker, "small")["depth"] == 1
        with (
            qtbot.waitSignal(client.publish_failed, timeout=WAIT_MS) as failed,
            qtbot.waitSignal(client.error_occurred, timeout=WAIT_MS),
        ):
            second = client.publish("orders.new", {"id": 2}, qos=1)
        assert failed.args[0] == second and "small" in failed.args[1]

        with qtbot.waitSignal(client.queue_purged, timeout=WAIT_MS) as purged:
            client.purge_queue("small")
        assert purged.args == ["small", 1]
        assert queue_of(broker, "small")["depth"] == 0
        with qtbot.waitSignal(client.published, timeout=WAIT_MS):
            client.publish("orders.new", {"id": 3}, qos=1)

        with qtbot.waitSignal(client.queue_deleted, timeout=WAIT_MS) as deleted:
            client.delete_queue("small")
        assert deleted.args == ["small", 1]
        assert broker.status()["queues"] == []
        with qtbot.waitSignal(client.error_occurred, timeout=WAIT_MS) as error:
            client.delete_queue("small")
        assert "small" in error.args[0] and "no queue" in error.args[0]
        with qtbot.waitSignal(client.error_occurred, timeout=WAIT_MS) as error:
            assert client.publish("orders.new", 1, qos=2) == ""
        assert "qos" in error.args[0]
    finally:
        with qtbot.waitSignal(client.disconnected, timeout=WAIT_MS):
            client.disconnect_from_broker()


def test_queue_callbacks_acknowledge_and_failures_redeliver(qtbot, qt_client, broker):
    consumer = qt_client("consumer")
    publisher = qt_client("pub")
    seen: list[tuple[str, int]] = []
    letters: list[Message] = []

    def work(message: Message) -> None:
        seen.append((message.payload, message.delivery_count))
        if message.payload == "fails once" and not message.redelivered:
            raise RuntimeError("given back to the queue")
        if message.payload == "rejected":
            message.nack(requeue=False)

    with qtbot.waitSignal(publisher.subscribed, timeout=WAIT_MS):
        publisher.subscribe("dead_letter.jobs", letters.append)
    with qtbot.waitSignal(consumer.subscribed, timeout=WAIT_MS) as subscribed:
        consumer.subscribe("jobs.*", work, queue="jobs", durable=True, max_length=10)
    assert subscribed.args == [["jobs.*"]]
    for payload in ("fine", "fails once", "rejected"):
        with qtbot.waitSignal(publisher.published, timeout=WAIT_MS):
            publisher.publish("jobs.new", payload, qos=1)
    qtbot.waitUntil(lambda: len(seen) == 4 and len(letters) == 1, timeout=WAIT_MS)
    assert sorted(seen) == [("fails once", 1), ("fails once", 2), ("fine", 1), ("rejected", 1)]
    assert (letters[0].payload["payload"], letters[0].payload["reason"]) == ("rejected", "rejected")
    qtbot.waitUntil(lambda: queue_of(broker, "jobs")["in_flight"] == 0, timeout=WAIT_MS)
    queue = queue_of(broker, "jobs")
    assert (queue["acked"], queue["redelivered"], queue["dead_lettered"]) == (2, 1, 1)


def test_queue_messages_without_callback_are_settled_in_slots_or_after_them(
    qtbot, qt_client, broker
):
    consumer = qt_client("consumer")
    publisher = qt_client("pub")
    seen: list[tuple[str, int]] = []

    def slot(message: Message) -> None:
        seen.append((message.payload, message.delivery_count))
        if message.delivery_count == 1:
            message.nack()  # back to the queue, delivered again

    consumer.message.connect(slot)
    with qtbot.waitSignal(consumer.subscribed, timeout=WAIT_MS):
        consumer.subscribe("tasks.*", queue="tasks")
    with qtbot.waitSignal(publisher.published, timeout=WAIT_MS):
        publisher.publish("tasks.one", "again", qos=1)
    qtbot.waitUntil(lambda: len(seen) == 2, timeout=WAIT_MS)
    assert seen == [("again", 1), ("again", 2)]
    qtbot.waitUntil(lambda: queue_of(broker, "tasks")["acked"] == 1, timeout=WAIT_MS)
    assert queue_of(broker, "tasks")["redelivered"] == 1


def test_retained_messages_reach_later_subscribers(qtbot, qt_client):
    publisher = qt_client("pub")
    with qtbot.waitSignal(publisher.published, timeout=WAIT_MS):
        publisher.publish("home.temp", {"c": 21}, qos=1, retain=True)
    later = qt_client("later")
    got: list[Message] = []
    later.message.connect(got.append)
    with qtbot.waitSignal(later.subscribed, timeout=WAIT_MS):
        later.subscribe("home.*")
    qtbot.waitUntil(lambda: len(got) == 1, timeout=WAIT_MS)
    assert (got[0].topic, got[0].payload, got[0].retained) == ("home.temp", {"c": 21}, True)


WILL_CHILD = """
import sys
from PySide6.QtCore import QCoreApplication
from message_broker.qt_client import QtBrokerClient

app = QCoreApplication(sys.argv)
client = QtBrokerClient("qt_willy", "127.0.0.1", int(sys.argv[1]))
client.published.connect(lambda message_id: print("ready", flush=True))
client.connected.connect(
    lambda: client.publish("clients.qt_willy.status", {"online": True}, qos=1, retain=True)
)
client.connect_to_broker(
    will={"topic": "clients.qt_willy.status", "payload": {"online": False}, "retain": True}
)
app.exec()
"""


def test_last_will_is_published_when_the_client_dies(qtbot, qt_client, broker):
    watcher = qt_client("watcher")
    heard: list[Message] = []
    watcher.message.connect(heard.append)
    with qtbot.waitSignal(watcher.subscribed, timeout=WAIT_MS):
        watcher.subscribe("clients.*.status")
    child = subprocess.Popen(
        [sys.executable, "-c", WILL_CHILD, str(broker.port)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        qtbot.waitUntil(lambda: len(heard) == 1, timeout=WAIT_MS)
        child.kill()
        qtbot.waitUntil(lambda: len(heard) == 2, timeout=WAIT_MS)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(30)
    assert [(m.payload, m.sender) for m in heard] == [
        ({"online": True}, "qt_willy"),
        ({"online": False}, "qt_willy"),
    ]


def test_a_will_the_broker_would_refuse_fails_the_connection_at_once(qtbot):
    client = QtBrokerClient("qt", "127.0.0.1", 1)
    with qtbot.waitSignal(client.connection_failed, timeout=WAIT_MS) as failed:
        client.connect_to_broker(will={"topic": "system.nope"})
    assert "reserved" in failed.args[0]
    assert not client.is_connected


def test_a_qt_responder_that_raises_fails_the_request_at_once(qtbot, qt_client):
    service = qt_client("svc")
    client = qt_client("client")

    def divide(msg: Message) -> float:
        return msg.payload["a"] / msg.payload["b"]

    with qtbot.waitSignal(service.subscribed, timeout=WAIT_MS):
        service.subscribe("math.divide", divide)
    outcomes: list[tuple[object, object]] = []
    with qtbot.waitSignal(client.request_failed, timeout=WAIT_MS) as failed:
        number = client.request(
            "math.divide",
            {"a": 1, "b": 0},
            timeout=60,
            callback=lambda r, e: outcomes.append((r, e)),
        )
    assert failed.args[0] == number and "ZeroDivisionError" in failed.args[1]
    ((reply, error),) = outcomes
    assert reply is None and isinstance(error, ResponderError)
    assert (error.error_type, error.error_message, error.responder) == (
        "ZeroDivisionError",
        "division by zero",
        "svc",
    )


def test_a_qt_request_over_max_message_size_fails_at_once(qtbot, start_broker):
    broker = start_broker(max_message_size=4096)
    client = QtBrokerClient("qt", "127.0.0.1", broker.port)
    with qtbot.waitSignal(client.connected, timeout=WAIT_MS):
        client.connect_to_broker()
    try:
        failures: list[tuple[int, str]] = []
        client.request_failed.connect(lambda number, reason: failures.append((number, reason)))
        number = client.request("anything", "x" * 5000, timeout=60)
        # Emitted during the call, not after a timeout.
        assert [n for n, _ in failures] == [number]
        assert "max_message_size" in failures[0][1]
    finally:
        client.disconnect_from_broker()


def test_a_qt_client_connects_again_after_a_failed_connect(qtbot):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = QtBrokerClient("qt", "127.0.0.1", port, connect_retries=0, reconnect_delay=0.05)
    with qtbot.waitSignal(client.connection_failed, timeout=WAIT_MS):
        client.connect_to_broker()
    with qtbot.waitSignal(client.connection_failed, timeout=WAIT_MS):
        client.connect_to_broker()
    broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=port))
    try:
        # Started once the client waits for it: connect_retries=0 alone would give up.
        QTimer.singleShot(300, broker.start_sync)
        with qtbot.waitSignal(client.connected, timeout=WAIT_MS):
            client.connect_to_broker(wait=20)
        with qtbot.waitSignal(client.disconnected, timeout=WAIT_MS):
            client.disconnect_from_broker()
    finally:
        broker.stop_sync()


def test_a_qt_client_taken_over_says_so(qtbot, qt_client):
    first = qt_client("same-id")
    with qtbot.waitSignal(first.error_occurred, timeout=WAIT_MS) as error:
        qt_client("same-id")
    assert "taken over by another connection with this client_id" in error.args[0]
    assert not first.is_connected


@pytest.mark.parametrize(
    "arguments, error, named",
    [
        ({"port": "41234"}, TypeError, "port"),
        ({"host": None}, TypeError, "host"),
        ({"host": ""}, ValueError, "host"),
        ({"connect_timeout": 0}, ValueError, "connect_timeout"),
        ({"max_pending": True}, TypeError, "max_pending"),
    ],
)
def test_qt_constructor_arguments_are_checked_at_once(arguments, error, named):
    with pytest.raises(error, match=named):
        QtBrokerClient("qt", **arguments)


def test_a_subscription_handle_ends_one_callback_and_keeps_the_others(qtbot, qt_client, broker):
    client = qt_client()
    first: list[int] = []
    second: list[int] = []
    with qtbot.waitSignal(client.subscribed, timeout=WAIT_MS):
        first_sub = client.subscribe("jobs.*", lambda m: first.append(m.payload))
    with qtbot.waitSignal(client.subscribed, timeout=WAIT_MS):
        second_sub = client.subscribe("jobs.*", lambda m: second.append(m.payload))
    assert isinstance(first_sub, QtSubscription) and first_sub == ["jobs.*"]
    first_sub.unsubscribe()
    assert not first_sub.active and second_sub.active
    with qtbot.waitSignal(client.message, timeout=WAIT_MS):
        client.publish("jobs.a", 1)
    assert (first, second) == ([], [1])
    holders = {c["client_id"]: c["subscriptions"] for c in broker.status()["clients"]}
    assert holders["qt"] == ["jobs.*"], "still held for the second callback"
    assert client.subscribe("bad..pattern") is None, "a refused subscribe returns no handle"


def test_a_qt_client_given_no_address_uses_message_broker_url(qtbot, broker, monkeypatch):
    monkeypatch.setenv(URL_ENV, f"127.0.0.1:{broker.port}")
    client = QtBrokerClient("qt")
    assert client.url == f"tcp://127.0.0.1:{broker.port}"
    with qtbot.waitSignal(client.connected, timeout=WAIT_MS):
        client.connect_to_broker()
    client.disconnect_from_broker()
    qtbot.waitUntil(lambda: not client.is_connected, timeout=WAIT_MS)


@pytest.mark.parametrize("where", ["in a slot", "after waitSignal"])
def test_connect_to_broker_works_as_soon_as_disconnected_for_good(qtbot, broker, where):
    # `disconnected` for a client that will not reconnect by itself comes once the
    # engine has stopped: connect_to_broker() from a slot on it, or right after it,
    # connects again instead of doing nothing. Many cycles, to hit the window between
    # the engine's Disconnected and Closed events.
    client = QtBrokerClient("qt-again", "127.0.0.1", broker.port)
    events: list[str] = []
    client.connected.connect(lambda: events.append("connected"))
    client.disconnected.connect(lambda: events.append("disconnected"))
    client.error_occurred.connect(lambda text: events.append(f"error: {text}"))
    again = [where == "in a slot"]
    client.disconnected.connect(lambda: again[0] and client.connect_to_broker())
    with qtbot.waitSignal(client.connected, timeout=WAIT_MS):
        client.connect_to_broker()
    cycles = 40
    try:
        for _ in range(cycles):
            if again[0]:
                with qtbot.waitSignals([client.disconnected, client.connected], timeout=WAIT_MS):
                    client.disconnect_from_broker()
            else:
                with qtbot.waitSignal(client.disconnected, timeout=WAIT_MS):
                    client.disconnect_from_broker()
                with qtbot.waitSignal(client.connected, timeout=WAIT_MS):
                    client.connect_to_broker()
    finally:
        again[0] = False
        client.disconnect_from_broker()
    assert events == ["connected"] + ["disconnected", "connected"] * cycles
    qtbot.waitUntil(lambda: len(events) == 2 * cycles + 2, timeout=WAIT_MS)
    assert events[-1] == "disconnected"


def test_a_qt_client_taken_over_hears_disconnected_then_why_once_stopped(qtbot, qt_client):
    first = qt_client("same-id")
    events: list[str] = []
    first.disconnected.connect(
        lambda: events.append(f"disconnected, running={first._core.running}")
    )
    first.error_occurred.connect(lambda text: events.append(f"error: {text}"))
    qt_client("same-id")
    qtbot.waitUntil(lambda: len(events) >= 2, timeout=WAIT_MS)
    qtbot.wait(100)  # nothing more comes
    assert events == [
        "disconnected, running=False",
        "error: disconnected for good: taken over by another connection with this client_id",
    ]


def test_closed_while_reconnecting_gives_no_second_disconnected(qtbot, broker):
    client = QtBrokerClient("qt", "127.0.0.1", broker.port, reconnect_delay=30)
    events: list[str] = []
    client.connected.connect(lambda: events.append("connected"))
    client.disconnected.connect(
        lambda: events.append(f"disconnected, running={client._core.running}")
    )
    client.error_occurred.connect(lambda text: events.append(f"error: {text}"))
    with qtbot.waitSignal(client.connected, timeout=WAIT_MS):
        client.connect_to_broker()
    with qtbot.waitSignal(client.disconnected, timeout=WAIT_MS):
        broker.stop_sync()
    assert events == ["connected", "disconnected, running=True"], "at once: it reconnects"
    client.disconnect_from_broker()
    qtbot.waitUntil(lambda: not client._core.running, timeout=WAIT_MS)
    qtbot.wait(100)  # nothing more comes
    assert events == ["connected", "disconnected, running=True"]
