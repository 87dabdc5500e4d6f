"""Clients that misbehave: bad input, limits passed, answers never read, silence. Each
case gets a clear error or a closed connection for that client only, and is followed by
a check that a well-behaved client still publishes and receives."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time

import pytest

from support.wire import Closed, RawClient, error_code


def assert_healthy(port: int, name: str = "health") -> None:
    """A fresh subscriber and publisher can still talk through the broker."""
    with RawClient(port) as sub, RawClient(port) as pub:
        sub.connect(f"{name}-sub")
        pub.connect(f"{name}-pub")
        sub.subscribe("health.check")
        pub.publish("health.check", {"ok": True})
        assert sub.next_message(topic="health.check")["payload"] == {"ok": True}


def test_random_garbage_closes_only_that_connection(start_broker):
    broker = start_broker()
    bystander = RawClient(broker.port)
    bystander.connect("bystander")
    bystander.subscribe("health.check")
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
            garbage = os.urandom(4096)
            # A first byte that selects length-prefixed framing with a huge length.
            sock.sendall(b"\x7f" + garbage)
            sock.settimeout(5)
            try:
                while sock.recv(65536):
                    pass
            except ConnectionResetError:
                pass
    assert_healthy(broker.port, "garbage")
    assert bystander.next_message()["payload"] == {"ok": True}


def test_http_request_gets_an_error_and_is_closed(start_broker):
    broker = start_broker()
    with RawClient(broker.port) as client:
        client.send_raw(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        frames = client.expect_closed()
        assert [error_code(f) for f in frames] == [-32004]
        assert "far beyond" in frames[0]["error"]["message"]
    assert_healthy(broker.port)


def test_oversized_frame_is_refused_and_the_connection_goes_on(start_broker):
    broker = start_broker(max_message_size=1024)
    with RawClient(broker.port) as client:
        client.connect("big")
        client.subscribe("t")
        published_before = client.result("status")["messages"]["published"]
        big = (
            b'{"jsonrpc":"2.0","method":"publish","params":{"topic":"t","payload":"'
            + (b"x" * 2000)
            + b'"},"id":1}'
        )
        client.send_raw(client.frame(big))
        response = client.recv()
        assert error_code(response) == -32004
        assert "max_message_size" in response["error"]["message"]
        # Nothing was published, and the connection still works.
        assert client.result("status")["messages"]["published"] == published_before
        client.publish("t", "small")
        assert client.next_message()["payload"] == "small"
    assert_healthy(broker.port)


def test_oversized_line_is_refused_and_the_connection_goes_on(start_broker):
    broker = start_broker(max_message_size=1024)
    with RawClient(broker.port, lines=True) as client:
        client.connect("big-lines")
        client.send_raw(b'{"x":"' + b"y" * 5000 + b'"}\n')
        assert error_code(client.recv()) == -32004
        assert client.result("ping")["pong"] is True
    assert_healthy(broker.port)


def test_length_far_beyond_the_limit_closes_the_connection(start_broker):
    broker = start_broker(max_message_size=1024)
    with RawClient(broker.port) as client:
        client.connect("huge")
        client.send_raw(struct.pack(">I", 2**31))
        frames = client.expect_closed()
        assert [error_code(f) for f in frames] == [-32004]
    assert_healthy(broker.port)


def test_deeply_nested_json_is_refused_without_crashing(start_broker):
    broker = start_broker()
    with RawClient(broker.port) as client:
        client.connect("deep")
        depth = 200_000
        body = (
            b'{"jsonrpc":"2.0","method":"publish","params":{"topic":"t","payload":'
            + b"[" * depth
            + b"]" * depth
            + b'},"id":1}'
        )
        client.send_raw(client.frame(body))
        response = client.recv()
        assert error_code(response) == -32700
        assert "nested" in response["error"]["message"]
        assert client.result("ping")["pong"] is True
    assert_healthy(broker.port)


def test_truncated_frame_then_close(start_broker):
    broker = start_broker()
    watcher = RawClient(broker.port)
    watcher.connect("watcher")
    watcher.subscribe("system.client.disconnected")
    with RawClient(broker.port) as client:
        client.connect("truncated")
        client.send_raw(struct.pack(">I", 100) + b'{"jsonrpc":')
    event = watcher.next_message()
    assert event["payload"]["client_id"] == "truncated"
    assert "middle of a frame" in event["payload"]["reason"]
    assert_healthy(broker.port)


def test_slow_loris_is_cut_off(start_broker):
    broker = start_broker(frame_timeout=0.5)
    with RawClient(broker.port) as loris:
        loris.connect("loris")
        started = time.monotonic()
        loris.send_raw(struct.pack(">I", 1000) + b"{")
        # A byte now and then does not keep a frame alive past frame_timeout.
        for _ in range(3):
            time.sleep(0.1)
            try:
                loris.send_raw(b" ")
            except OSError:
                break
        frames = loris.expect_closed()
        assert [error_code(f) for f in frames] == [-32009]
        assert time.monotonic() - started < 5
    assert_healthy(broker.port)


def test_connection_that_never_connects_is_closed(start_broker):
    broker = start_broker(handshake_timeout=0.3)
    with RawClient(broker.port) as idle:
        frames = idle.expect_closed()
        assert [error_code(f) for f in frames] == [-32009]
        assert "connect" in frames[0]["error"]["message"]
    assert_healthy(broker.port)


def test_line_client_cut_off_in_its_first_line_gets_a_line(start_broker):
    broker = start_broker(handshake_timeout=0.3)
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
        sock.sendall(b'{"jsonrpc":"2.0","method":"connect"')
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.startswith(b"{") and data.endswith(b"\n"), data
    assert b"-32009" in data


def test_connection_flood_past_max_connections(start_broker):
    broker = start_broker(max_connections=5)
    held = [RawClient(broker.port) for _ in range(5)]
    for i, client in enumerate(held):
        client.connect(f"held{i}")
    refused = []
    for _ in range(20):
        client = RawClient(broker.port)
        with contextlib.suppress(OSError):
            client.send(client.request_obj("connect", {"client_id": "extra"}, 1))
        refused.append(client)
    for client in refused:
        try:
            frames = client.expect_closed()
        except (ConnectionResetError, Closed):
            frames = []
        assert [error_code(f) for f in frames] in ([-32005], []), frames
        client.close()
    status = held[0].result("status")
    assert status["connections"]["rejected"] == 20
    assert status["client_count"] == 5
    # Freeing a slot lets a new client in.
    held.pop().close()
    deadline = time.monotonic() + 5
    while held[0].result("status")["connections"]["open"] > 4:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert_healthy_with_slots(broker.port, held)


def assert_healthy_with_slots(port: int, held: list[RawClient]) -> None:
    """With one slot free: a new client can still reach a held subscriber."""
    held[0].subscribe("health.check")
    with RawClient(port) as pub:
        pub.connect("late-pub")
        pub.publish("health.check", {"ok": True})
    assert held[0].next_message(topic="health.check")["payload"] == {"ok": True}
    for client in held:
        client.close()


def test_refused_client_speaking_lines_gets_a_line(start_broker):
    broker = start_broker(max_connections=1)
    with RawClient(broker.port) as holder:
        holder.connect("holder")
        with RawClient(broker.port, lines=True) as extra:
            extra.send(extra.request_obj("connect", {"client_id": "x"}, 1))
            frames = extra.expect_closed()
            assert [error_code(f) for f in frames] == [-32005]


def test_subscriber_that_never_reads(start_broker):
    broker = start_broker(max_queue_size=100)
    stuck = RawClient(broker.port)
    stuck.connect("stuck")
    stuck.subscribe("flood")
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    watcher = RawClient(broker.port)
    watcher.connect("watcher")
    watcher.subscribe("flood", "system.client.slow")
    pub = RawClient(broker.port)
    pub.connect("pub")

    payload = "x" * 4000
    count, chunk = 5000, 50
    received = []
    for start in range(0, count, chunk):
        for n in range(start, start + chunk):
            pub.notify("publish", {"topic": "flood", "payload": {"n": n, "pad": payload}})
        # The reading subscriber keeps up and gets everything, in order.
        received += [watcher.next_message(topic="flood")["payload"]["n"] for _ in range(chunk)]
    assert received == list(range(count))
    slow = watcher.next_message(topic="system.client.slow")["payload"]
    assert slow["client_id"] == "stuck"
    assert slow["queue_size"] == 100

    status = pub.result("status")
    stuck_status = next(c for c in status["clients"] if c["client_id"] == "stuck")
    assert stuck_status["dropped"] > 0
    assert stuck_status["queued"] <= 100
    assert status["messages"]["dropped"] == stuck_status["dropped"]
    # Every message is accounted for: written to the socket, queued, or dropped.
    assert stuck_status["delivered"] + stuck_status["dropped"] == count
    assert_healthy(broker.port)
    stuck.close()


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


@pytest.mark.parametrize("lines", [False, True])
def test_heartbeat_timeout_drops_silent_pingers_only(start_broker, lines):
    broker = start_broker(heartbeat_interval=0.1, heartbeat_timeout=0.4)
    pinger = RawClient(broker.port, lines=lines)
    pinger.connect("pinger")
    pinger.result("ping")
    quiet = RawClient(broker.port, lines=lines)
    quiet.connect("quiet")  # never pings, like a simple AutoHotkey script
    frames = pinger.expect_closed()
    assert [error_code(f) for f in frames] == [-32008]
    # Longer than heartbeat_timeout since quiet connected: a timer, not a message, would
    # drop it.
    time.sleep(0.5)
    assert quiet.result("status")["client_count"] == 1
    pinger.close()
    quiet.close()
    assert_healthy(broker.port)


def test_regular_pings_keep_a_client_alive(start_broker):
    broker = start_broker(heartbeat_interval=0.1, heartbeat_timeout=0.4)
    with RawClient(broker.port) as client:
        client.connect("alive")
        for _ in range(10):
            client.result("ping")
            time.sleep(0.1)
        assert client.result("status")["client_count"] == 1
