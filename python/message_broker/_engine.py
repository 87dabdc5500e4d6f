"""What the asyncio and Qt clients share: starting the extension's client engine,
its event kinds, and turning its events into messages and exceptions."""

from __future__ import annotations

import logging
import math
import socket
import unicodedata
from collections.abc import Iterable
from typing import Any

from message_broker import _core
from message_broker.errors import (
    BrokerError,
    ConnectionLostError,
    InvalidMessageError,
    NoRespondersError,
    QueueFullError,
    RequestTimeoutError,
    StorageError,
)
from message_broker.message import Message

# Event kinds (src/python/client.rs).
MESSAGE, RESPONSE, PUBLISH_FAILED, CONNECTED, DISCONNECTED = 0, 1, 2, 3, 4
CONNECT_FAILED, WRITABLE, CLOSED, UNDECODABLE = 5, 6, 7, 8

TIMEOUT, NO_RESPONDERS, INVALID_PARAMS = -32002, -32003, -32602
QUEUE_FULL, STORAGE_FAILED = -32011, -32012

logger = logging.getLogger("message_broker.client")

# Events taken per drain: large enough to amortise the wake-up, small enough that
# handing them to Python keeps one turn of the event loop short.
DRAIN_LIMIT = 1000
MAX_CLIENT_ID = 256


def encode_payload(payload: Any) -> str:
    try:
        return _core.dumps(payload)
    except (TypeError, ValueError) as error:
        raise InvalidMessageError(f"payload cannot be sent as JSON: {error}") from None


def publish(engine: _core.Client, topic: str, payload: Any, ttl: float | None = None) -> str:
    """Queues a message. Raises InvalidMessageError for what the broker would refuse,
    and passes on BlockingIOError (queue full) and ConnectionError (cannot queue)."""
    try:
        return engine.publish(topic, payload, ttl)
    except ValueError as error:
        raise InvalidMessageError(str(error)) from None


def publish_with(
    engine: _core.Client, topic: str, payload: Any, ttl: float | None, qos: int, retain: bool
) -> tuple[str, int | None]:
    """Like :func:`publish` with qos and retain; returns the message id and, for
    ``qos=1``, the call whose answer confirms it."""
    try:
        return engine.publish_with(topic, payload, ttl, qos, retain)
    except ValueError as error:
        raise InvalidMessageError(str(error)) from None


def check_publish_options(qos: Any, ttl: Any, retain: Any) -> None:
    if isinstance(qos, bool) or qos not in (0, 1):
        raise InvalidMessageError(f"qos must be 0 (at most once) or 1 (at least once), got {qos!r}")
    if ttl != 0 and (
        isinstance(ttl, bool)
        or not isinstance(ttl, (int, float))
        or not (math.isfinite(ttl) and ttl > 0)
    ):
        raise InvalidMessageError(
            f"ttl must be 0 (no limit) or a positive number of seconds, got {ttl!r}"
        )
    if not isinstance(retain, bool):
        raise InvalidMessageError(f"retain must be True or False, got {retain!r}")


def remote_error(code: int, message: str) -> BrokerError:
    if code == TIMEOUT:
        return RequestTimeoutError(message, code)
    if code == NO_RESPONDERS:
        return NoRespondersError(message, code)
    if code == INVALID_PARAMS:
        return InvalidMessageError(message, code)
    if code == _core.CONNECTION_LOST:
        return ConnectionLostError(message, code)
    if code == QUEUE_FULL:
        return QueueFullError(message, code)
    if code == STORAGE_FAILED:
        return StorageError(message, code)
    return BrokerError(message, code)


def pattern_list(patterns: str | Iterable[str]) -> list[str]:
    """Patterns as a list without repeats; a single string is one pattern."""
    if isinstance(patterns, str):
        return [patterns]
    patterns = list(patterns)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"patterns must be strings, got {type(pattern).__name__} {pattern!r}")
    return list(dict.fromkeys(patterns))


def check_client_id(client_id: str) -> None:
    if not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_ID:
        raise ValueError(f"client_id must be a string of 1 to {MAX_CLIENT_ID} characters")
    if any(unicodedata.category(ch) == "Cc" for ch in client_id):
        raise ValueError("client_id must not contain control characters")


def engine_options(
    *,
    client_type: str,
    connect_timeout: float,
    connect_retries: int,
    reconnect: bool,
    reconnect_delay: float,
    max_reconnect_delay: float,
    heartbeat: bool,
    max_pending: int,
    will: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if connect_retries < 0 or max_pending < 1:
        raise ValueError("connect_retries must be >= 0 and max_pending >= 1")
    return {
        "client_type": client_type,
        "version": _core.__version__,
        "connect_timeout": connect_timeout,
        "connect_retries": connect_retries,
        "reconnect": reconnect,
        "reconnect_delay": reconnect_delay,
        "max_reconnect_delay": max_reconnect_delay,
        "heartbeat": heartbeat,
        "max_pending": max_pending,
        "will": None if will is None else encode_will(will),
    }


def encode_will(will: dict[str, Any]) -> str:
    """The ``will`` of ``connect`` as JSON text, checked here so that a mistake shows at
    the call and not as a refused connection."""
    if not isinstance(will, dict):
        raise TypeError(f"will must be a dict with topic and payload, got {will!r}")
    unknown = set(will) - {"topic", "payload", "qos", "retain", "ttl"}
    if unknown or not isinstance(will.get("topic"), str):
        raise ValueError(
            "will is a dict with a topic (str) and optionally payload, qos, retain and ttl"
            + (f"; unknown keys: {', '.join(sorted(unknown))}" if unknown else "")
        )
    check_publish_options(will.get("qos", 0), will.get("ttl", 0), will.get("retain", False))
    return encode_payload(will)


def open_engine(
    client_id: str, host: str, port: int, options: dict[str, Any]
) -> tuple[_core.Client, socket.socket]:
    """Starts an engine; returns it and the socket that becomes readable when it has
    events (the engine owns the other end)."""
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    try:
        engine = _core.Client(client_id, host, port, writer.detach(), **options)
    except BaseException:
        reader.close()
        raise
    return engine, reader


def message_from_event(
    event: tuple[Any, ...], engine: _core.Client
) -> tuple[tuple[int, ...], Message]:
    """The subscriptions a message event belongs to, and the message."""
    (_, subscriptions, topic, payload, sender, message_id, timestamp, reply_to, ttl) = event[:9]
    qos, retained, from_queue = event[9:]
    message = Message(topic, payload, sender, message_id, timestamp, reply_to, ttl, qos, retained)
    if from_queue is not None:
        queue, tag, delivery_count, generation = from_queue
        message.queue, message.delivery_count = queue, delivery_count

        def settle(ack: bool, requeue: bool) -> None:
            engine.settle(generation, [tag], ack, requeue)

        message._settle = settle
    return subscriptions, message


def reject_undecodable(event: tuple[Any, ...], engine: _core.Client) -> str:
    """Handles a message whose payload Python cannot hold (an integer past Python's
    digit limit): it is logged and never reaches a callback; from a queue it is
    rejected without requeue, so it goes to the queue's dead-letter topic instead of
    coming back to the next consumer. Returns the text that was logged."""
    _, topic, text, sender, message_id, reason, from_queue = event
    shown = text if len(text) <= 80 else f"{text[:80]}... ({len(text)} characters)"
    report = (
        f"message {message_id} on {topic!r} from {sender!r} was not delivered:"
        f" its payload cannot be turned into a Python value ({reason}): {shown}"
    )
    if from_queue is not None:
        queue, tag, _, generation = from_queue
        engine.settle(generation, [tag], False, False)
        report += f"; rejected to the dead-letter topic of queue {queue!r}"
    logger.warning("%s", report)
    return report
