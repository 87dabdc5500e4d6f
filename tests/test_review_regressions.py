"""Regression tests for defects found in review of the broker core."""

from __future__ import annotations

import socket
import struct
import threading
import time

from message_broker import BrokerConfig, MessageBroker

from support.wire import RawClient, error_code


def test_reading_broker_state_while_it_starts_never_deadlocks():
    broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=0))
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            _ = broker.is_running, broker.port, repr(broker)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    done = threading.Event()

    def cycle() -> None:
        for _ in range(30):
            broker.start_sync()
            broker.stop_sync()
        done.set()

    worker = threading.Thread(target=cycle, daemon=True)
    worker.start()
    finished = done.wait(60)
    stop.set()
    poller.join(10)
    assert finished, "start/stop deadlocked against a thread reading the broker's state"


def test_a_guessed_reply_address_cannot_answer_a_request(raw):
    service, intruder, client = raw(), raw(), raw()
    service.connect("svc")
    service.subscribe("svc.q")
    intruder.connect("intruder")
    client.connect("client")
    client.send(client.request_obj("request", {"topic": "svc.q", "payload": 1}, 1))
    reply_to = service.next_message()["reply_to"]
    guessed = reply_to.rsplit(".", 1)[0]  # the sequence number without the token
    assert intruder.result("publish", {"topic": guessed, "payload": "forged"})["recipients"] == 0
    assert service.result("publish", {"topic": reply_to, "payload": "real"})["recipients"] == 1
    assert client.wait_response(1)["result"] == "real"


def test_anonymous_ids_never_take_over_a_named_client(raw):
    named = raw()
    named.connect("client-2")
    anonymous = raw()
    anonymous_id = anonymous.result("connect", {})["client_id"]
    assert anonymous_id != "client-2"
    assert named.result("ping")["pong"] is True
    assert named.result("status")["client_count"] == 2


def test_batch_with_disconnect_answers_everything_and_closes(raw):
    silent, client = raw(), raw()
    silent.connect("silent")
    silent.subscribe("svc.slow")
    client.connect("batcher")
    client.send(
        [
            {
                "jsonrpc": "2.0",
                "method": "request",
                "params": {"topic": "svc.slow", "timeout": 30},
                "id": 10,
            },
            {"jsonrpc": "2.0", "method": "disconnect", "id": 11},
            {"jsonrpc": "2.0", "method": "publish", "params": {"topic": "svc.slow"}, "id": 12},
        ]
    )
    started = time.monotonic()
    frames = client.expect_closed()
    assert time.monotonic() - started < 1.5
    responses = {r["id"]: r for r in frames[0]}
    assert error_code(responses[10]) == -32001
    assert responses[11]["result"] == {"disconnected": True}
    assert error_code(responses[12]) == -32001
    # The publish after disconnect was not carried out: after the request, the next
    # message the subscriber sees is a marker published later by someone else.
    assert silent.next_message()["reply_to"]
    with RawClient(silent.sock.getpeername()[1]) as marker:
        marker.connect("marker")
        marker.publish("svc.slow", "marker")
    assert silent.next_message()["payload"] == "marker"


def test_large_messages_are_bounded_by_bytes_per_client(start_broker):
    broker = start_broker(max_message_size=1024 * 1024, max_queue_bytes=4 * 1024 * 1024)
    stuck = RawClient(broker.port)
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect("stuck")
    stuck.subscribe("big")
    pub = RawClient(broker.port)
    pub.connect("pub")
    blob = "x" * 900_000
    for _ in range(40):
        pub.notify("publish", {"topic": "big", "payload": blob})
    status = pub.result("status", timeout=30)
    entry = next(c for c in status["clients"] if c["client_id"] == "stuck")
    assert entry["queued_bytes"] <= 4 * 1024 * 1024
    assert entry["dropped"] > 0
    assert entry["delivered"] + entry["dropped"] == 40
    stuck.close()
    pub.close()


def test_a_client_that_never_reads_is_cut_off_and_its_id_freed(start_broker):
    """A client that sends requests but never reads its answers: the broker's writer
    stalls, and after frame_timeout the connection is closed and its slot freed."""
    broker = start_broker(frame_timeout=0.5, max_queue_size=100)
    hog = RawClient(broker.port)
    hog.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.connect("hog")
    ping = b'{"jsonrpc":"2.0","method":"ping","id":1}'
    burst = (struct.pack(">I", len(ping)) + ping) * 1000
    hog.sock.settimeout(0.2)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            hog.sock.sendall(burst)
        except TimeoutError:
            continue  # the broker stopped reading: its answers are not being read
        except OSError:
            break  # reset by the broker
    with RawClient(broker.port) as other:
        other.connect("observer")
        while other.result("status")["connections"]["open"] > 1:
            assert time.monotonic() < deadline, "the stalled connection was never closed"
            time.sleep(0.05)
        assert [c["client_id"] for c in other.result("status")["clients"]] == ["observer"]
    hog.close()


def test_line_client_cut_off_in_its_first_line_gets_a_line(start_broker):
    broker = start_broker(handshake_timeout=0.3)
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
        sock.sendall(b'{"jsonrpc":"2.0","method":"connect"')
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.startswith(b"{") and data.endswith(b"\n"), data
    assert b"-32009" in data
