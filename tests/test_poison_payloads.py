"""Payloads the broker forwards as written but that are odd in Python (numbers beyond
float range, lone surrogates, integers past Python's digit limit): each reaches
subscribers as `json.loads` reads it, or is reported when Python cannot hold it, and
never ends a client or costs it the messages after it."""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from message_broker import BrokerClient, Message, MessageBroker

from support.waiting import eventually
from support.wire import RawClient

# JSON texts as a raw client (an `nc` or AutoHotkey publisher) can send them.
DECODABLE = ["1e999", "-1e400", '"\\ud800"', '{"k": "x\\udc00y"}', '["\\udbff\\u0041"]']
# Past Python's default limit of 4,300 digits for int(): no Python value can hold it.
TOO_MANY_DIGITS = "9" * 5000
ODD = [*DECODABLE, TOO_MANY_DIGITS]


def publish_raw(raw: RawClient, topic: str, payload_text: str) -> None:
    """Publishes `payload_text` exactly as written, confirmed by the broker."""
    body = '{"jsonrpc":"2.0","method":"publish","id":%d,"params":{"topic":"%s","payload":%s}}'
    raw.send_raw(raw.frame((body % (len(raw.pending) + 1000, topic, payload_text)).encode()))
    while True:
        frame = raw.recv()
        if isinstance(frame, dict) and "method" not in frame:
            assert "error" not in frame, frame
            return


def same(a: Any, b: Any) -> bool:
    """Equality that also holds for payloads containing the same lone surrogates."""
    return json.dumps(a) == json.dumps(b)


@pytest.fixture
async def connect(broker: MessageBroker) -> AsyncIterator[Callable[..., Any]]:
    clients: list[BrokerClient] = []

    async def make(client_id: str) -> BrokerClient:
        client = BrokerClient(client_id, "127.0.0.1", broker.port, reconnect_delay=0.05)
        assert await client.connect()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.disconnect()


async def received_in_order(
    got: list[Message], raw: RawClient, client: BrokerClient, topic: str
) -> list[Message]:
    """Publishes every odd payload, each followed by a good one, and waits for the last
    good one: returns what arrived."""
    for n, text in enumerate(ODD):
        publish_raw(raw, topic, text)
        publish_raw(raw, topic, json.dumps({"good": n}))
    await eventually(lambda: any(m.payload == {"good": len(ODD) - 1} for m in got))
    assert client.is_connected
    return got


def check_deliveries(got: list[Message]) -> None:
    payloads = [m.payload for m in got]
    expected: list[Any] = []
    for n, text in enumerate(DECODABLE):
        expected += [json.loads(text), {"good": n}]
    expected.append({"good": len(ODD) - 1})  # the undecodable one is not delivered
    assert len(payloads) == len(expected), payloads
    assert all(same(a, b) for a, b in zip(payloads, expected, strict=True)), payloads
    assert payloads[0] == float("inf") and payloads[2] == float("-inf")


async def test_a_plain_subscriber_gets_every_odd_payload_and_the_next_good_one(
    connect: Any, raw: Callable[..., RawClient], caplog: pytest.LogCaptureFixture
) -> None:
    subscriber = await connect("plain")
    got: list[Message] = []
    await subscriber.subscribe(["odd.#"], got.append)
    publisher = raw()
    publisher.connect("nc")
    with caplog.at_level(logging.WARNING, logger="message_broker.client"):
        check_deliveries(await received_in_order(got, publisher, subscriber, "odd.bad"))
    assert subscriber.undecodable_messages == 1
    (report,) = [r.getMessage() for r in caplog.records if "cannot be turned" in r.getMessage()]
    assert "'odd.bad'" in report and "from 'nc'" in report and "digit" in report, report
    # Still usable both ways.
    assert await subscriber.request("status", {})


async def test_a_queue_group_rejects_the_undecodable_one_to_dead_letters_and_goes_on(
    connect: Any, raw: Callable[..., RawClient]
) -> None:
    worker = await connect("worker")
    watcher = await connect("watcher")
    got: list[Message] = []
    letters: list[Message] = []
    await worker.subscribe(["odd.#"], got.append, queue="odd_workers")
    await watcher.subscribe(["dead_letter.odd_workers"], letters.append)
    publisher = raw()
    publisher.connect("nc")
    check_deliveries(await received_in_order(got, publisher, worker, "odd.queue"))
    # The dead letter embeds the same payload, so it is undecodable for the watcher too.
    await eventually(lambda: watcher.undecodable_messages == 1)
    status = await watcher.request("status", {})
    (queue,) = [q for q in status["queues"] if q["name"] == "odd_workers"]
    assert queue["dead_lettered"] == 1 and queue["acked"] == len(ODD) * 2 - 1
    assert queue["depth"] == 0 and queue["in_flight"] == 0
    assert not letters


async def test_a_durable_queue_is_not_blocked_by_a_poison_message(
    connect: Any, raw: Callable[..., RawClient]
) -> None:
    # Queued while nobody consumes, so the poison message is at the head of the queue
    # when the consumers arrive: each consumer would meet it in turn.
    first = await connect("first")
    await first.subscribe(["odd.#"], print, queue="odd_jobs", durable=True)
    await first.unsubscribe(queue="odd_jobs")
    publisher = raw()
    publisher.connect("nc")
    publish_raw(publisher, "odd.durable", TOO_MANY_DIGITS)
    for n, text in enumerate(DECODABLE):
        publish_raw(publisher, "odd.durable", text)
        publish_raw(publisher, "odd.durable", json.dumps({"good": n}))
    publish_raw(publisher, "odd.durable", json.dumps({"good": len(ODD) - 1}))

    consumers = [await connect(f"consumer{i}") for i in range(2)]
    got: list[Message] = []
    for consumer in consumers:
        await consumer.subscribe(["odd.#"], got.append, queue="odd_jobs", durable=True)
    await eventually(lambda: len(got) == len(DECODABLE) * 2 + 1)
    assert all(c.is_connected for c in consumers)
    assert sum(c.undecodable_messages for c in consumers) == 1, "rejected once, not passed on"
    ordered = sorted(got, key=lambda m: m.timestamp)
    expected = [json.loads(t) for t in DECODABLE]
    assert all(any(same(m.payload, e) for m in ordered) for e in expected)
    status = await consumers[0].request("status", {})
    (queue,) = [q for q in status["queues"] if q["name"] == "odd_jobs"]
    assert queue["dead_lettered"] == 1 and queue["redelivered"] == 0
    assert queue["depth"] == 0 and queue["in_flight"] == 0


async def test_a_client_keeps_going_when_a_callback_or_an_event_fails(
    connect: Any, raw: Callable[..., RawClient], caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever goes wrong with one event stays with that event."""
    client = await connect("sturdy")
    got: list[Any] = []

    def explode(message: Message) -> None:
        raise RuntimeError("callback trouble")

    await client.subscribe(["odd.#"], explode)
    await client.subscribe(["odd.#"], lambda m: got.append(m.payload))
    publisher = raw()
    publisher.connect("nc")
    with caplog.at_level(logging.ERROR, logger="message_broker.client"):
        for n in range(3):
            publish_raw(publisher, "odd.x", str(n))
        await eventually(lambda: got == [0, 1, 2])
    assert client.is_connected
    assert sum("callback trouble" in (r.exc_text or "") for r in caplog.records) == 3


def frame_bytes(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_the_escaped_version_string_is_the_same_version(raw: Callable[..., RawClient]) -> None:
    client = raw()
    client.send_raw(frame_bytes(b'{"jsonrpc":"2\\u002e0","method":"ping","id":1}'))
    assert client.recv()["result"]["pong"] is True


def test_the_qt_client_survives_every_odd_payload(qtbot: Any, broker: MessageBroker) -> None:
    from message_broker.qt_client import QtBrokerClient

    client = QtBrokerClient("qt_odd", "127.0.0.1", broker.port)
    with qtbot.waitSignal(client.connected, timeout=10_000):
        client.connect_to_broker()
    got: list[Message] = []
    errors: list[str] = []
    client.message.connect(got.append)
    client.error_occurred.connect(errors.append)
    with qtbot.waitSignal(client.subscribed, timeout=10_000):
        client.subscribe(["odd.#"])
    publisher = RawClient(broker.port)
    try:
        publisher.connect("nc")
        for n, text in enumerate(ODD):
            publish_raw(publisher, "odd.qt", text)
            publish_raw(publisher, "odd.qt", json.dumps({"good": n}))
        qtbot.waitUntil(
            lambda: any(m.payload == {"good": len(ODD) - 1} for m in got), timeout=10_000
        )
    finally:
        publisher.close()
    assert client.is_connected
    check_deliveries(got)
    assert client.undecodable_messages == 1
    assert len(errors) == 1 and "cannot be turned into a Python value" in errors[0]
    with qtbot.waitSignal(client.disconnected, timeout=10_000):
        client.disconnect_from_broker()
