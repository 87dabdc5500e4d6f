"""The line between the package and its extension: facts read from the extension
rather than restated, and the Message the extension builds for each delivery."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle

import pytest

from message_broker import BrokerClient, BrokerConfig, Message, _core

from support.waiting import eventually


def test_defaults_are_the_extensions():
    config = BrokerConfig()
    for name, default in _core.BROKER_DEFAULTS.items():
        assert getattr(config, name) == default, name
    assert {field.name for field in dataclasses.fields(BrokerConfig)} == {
        *_core.BROKER_DEFAULTS,
        "queues",
        "permissions",
    }
    parameters = inspect.signature(BrokerClient).parameters
    for name, default in _core.CLIENT_DEFAULTS.items():
        assert parameters[name].default == default, name
    assert (parameters["host"].default, parameters["port"].default) == (
        _core.DEFAULT_HOST,
        _core.DEFAULT_PORT,
    )


def test_the_extension_checks_client_ids_and_publish_options():
    _core.validate_client_id("app-1")
    for bad in ["", "x" * 257, "a\nb", 5]:
        with pytest.raises(ValueError, match="client_id"):
            _core.validate_client_id(bad)
    _core.validate_publish_options(1, 2.5, True)
    for qos, ttl, retain, needle in [
        (2, 0, False, "qos"),
        (True, 0, False, "qos"),
        (1.0, 0, False, "qos"),
        (0, -1, False, "ttl"),
        (0, float("inf"), False, "ttl"),
        (0, 10**400, False, "ttl"),
        (0, "5", False, "ttl"),
        (0, 0, 1, "retain"),
    ]:
        with pytest.raises(ValueError, match=needle):
            _core.validate_publish_options(qos, ttl, retain)


def test_bad_options_are_named():
    for options, needle in [
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"connect_retries": -1}, "connect_retries"),
        ({"max_pending": 0}, "max_pending"),
        ({"reconnect_delay": -1.0}, "reconnect_delay"),
    ]:
        with pytest.raises(ValueError, match=needle):
            BrokerClient("c", **options)


def test_message_behaves_as_a_value():
    message = Message("jobs.done", {"n": 1}, "worker", "id-1", 1.5, ttl=30)
    assert message == Message("jobs.done", {"n": 1}, "worker", "id-1", 1.5, None, 30)
    assert message != Message("jobs.done", {"n": 2}, "worker", "id-1", 1.5, ttl=30)
    assert message != ("jobs.done", {"n": 1})
    with pytest.raises(TypeError):
        hash(message)
    assert repr(message) == (
        "Message(topic='jobs.done', payload={'n': 1}, sender='worker', id='id-1',"
        " timestamp=1.5, reply_to=None, ttl=30.0, qos=0, retained=False, queue=None,"
        " delivery_count=0, headers=None)"
    )
    assert pickle.loads(pickle.dumps(message)) == message
    traced = Message("t", 1, "s", "i", headers={"trace": "x"})
    assert traced.headers == {"trace": "x"} and traced != Message("t", 1, "s", "i")
    assert pickle.loads(pickle.dumps(traced)) == traced
    assert copy.copy(message) == message
    match message:
        case Message(topic, payload):
            assert (topic, payload) == ("jobs.done", {"n": 1})
    message.payload = [1, 2]
    assert message.payload == [1, 2]
    assert (message.is_request, message.redelivered, message.settled) == (False, False, True)
    message.ack()
    message.nack(requeue=False)  # nothing to settle for a message not from a queue


async def test_deliveries_are_messages_built_by_the_extension(broker):
    client = BrokerClient("c", host="127.0.0.1", port=broker.port)
    assert await client.connect()
    try:
        got: list[Message] = []
        await client.subscribe("jobs.*", got.append)
        message_id = await client.publish("jobs.done", {"n": 1}, ttl=5)
        await eventually(lambda: got)
        (message,) = got
        assert type(message) is Message
        assert message == Message(
            "jobs.done", {"n": 1}, "c", message_id, message.timestamp, None, 5.0
        )
    finally:
        await client.disconnect()


async def test_deliveries_go_from_the_extension_straight_to_the_callbacks(broker):
    client = BrokerClient("c", host="127.0.0.1", port=broker.port)
    publisher = BrokerClient("p", host="127.0.0.1", port=broker.port)
    assert await client.connect()
    assert await publisher.connect()
    try:
        core = client._core
        handled: list[object] = []
        handle = core.handle

        def counting_handle(event):
            handled.append(event)
            handle(event)

        core.handle = counting_handle  # type: ignore[method-assign]
        first: list[int] = []
        second: list[int] = []
        await client.subscribe("burst.*", lambda m: first.append(m.payload))
        await client.subscribe("burst.odd", lambda m: second.append(m.payload["n"]))
        for n in range(2000):
            publisher.publish_nowait(f"burst.{'odd' if n % 2 else 'even'}", {"n": n})
        await publisher.flush()
        await eventually(lambda: len(first) == 2000 and len(second) == 1000)
        assert first == [{"n": n} for n in range(2000)]
        assert second == list(range(1, 2000, 2))
        # The core saw the answers to its own calls, never a delivery.
        assert handled and all(not isinstance(event, Message) for event in handled)
        assert len(handled) < 10, handled
    finally:
        await client.disconnect()
        await publisher.disconnect()
