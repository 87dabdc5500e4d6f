"""The client logic that ``BrokerClient`` (asyncio) and ``QtBrokerClient`` (Qt) share.

Sans-I/O: :class:`ClientCore` owns the extension's engine and what a client keeps
between events (callbacks by subscription, calls waiting for their answers), and
turns each typed event of the engine into callback calls, replies, acknowledgements,
completions and reports. It never waits and never schedules: the front that drives
it (an asyncio task, a Qt socket notifier) feeds it the events with :meth:`handle`,
hears back through the :class:`Front` methods, and turns the completions it passes
to each operation into futures or signals.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from message_broker import _core
from message_broker.errors import (
    BrokerError,
    ConnectionLostError,
    InvalidMessageError,
    NotConnectedError,
    error_from_code,
)
from message_broker.message import Message

logger = logging.getLogger("message_broker.client")

if TYPE_CHECKING:
    from message_broker._core import Event

Callback = Callable[[Message], Any]

# How an operation ends: (what it gives back, None) or (what it is about, the error).
Done = Callable[[Any, BrokerError | None], None]

CLIENT_DEFAULTS = _core.CLIENT_DEFAULTS
"""The defaults of the clients' options: the engine's own, read from the extension."""


class Front(Protocol):
    """What a front does when the core has news for it. Each runs on the thread that
    drives the core."""

    def _on_connected(self) -> None: ...
    def _on_disconnected(self, reason: str, reconnecting: bool) -> None: ...
    def _on_connect_failed(self, reason: str, code: int | None) -> None:
        """The first connection failed; ``code`` is the broker's error code when it
        refused the connect itself (``UNAUTHORIZED`` for a missing or wrong token)."""

    def _on_closed(self) -> None:
        """The engine has stopped for good; calls still waiting have failed."""

    def _on_writable(self) -> None:
        """Room again in the outgoing queue, after a publish raised BlockingIOError."""

    def _on_message(self, message: Message) -> None:
        """Every delivered message, before its callbacks."""

    def _on_publish_failed(self, message_id: str, error: BrokerError) -> None:
        """The broker refused a message published without confirmation."""

    def _on_problem(self, report: str) -> None:
        """Something the user should hear of, already logged (a message that could not
        be delivered, a request that could not be answered)."""

    def _defer(self, callback: Callback, result: Any, message: Message) -> bool:
        """True when ``result`` is work still running (a coroutine) that the front
        finishes later, ending with :meth:`ClientCore.callback_done` or
        :meth:`ClientCore.callback_failed`."""


@dataclasses.dataclass(frozen=True)
class SubscribeOptions:
    """What ``subscribe`` was given beyond the patterns and the callback."""

    queue: str | None = None
    durable: bool = False
    prefetch: int | None = None
    max_length: int | None = None
    max_bytes: int | None = None
    max_deliveries: int | None = None
    dead_letter_topic: str | None = None
    passive: bool = False
    no_local: bool = False

    def limits(self) -> dict[str, Any]:
        """The queue's options that were given (the broker's defaults stand for the rest)."""
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name not in _NOT_LIMITS and getattr(self, field.name) is not None
        }


_NOT_LIMITS = ("queue", "durable", "passive", "no_local")


def pattern_list(patterns: str | Iterable[str]) -> list[str]:
    """Patterns as a list without repeats; a single string is one pattern."""
    if isinstance(patterns, str):
        return [patterns]
    patterns = list(patterns)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"patterns must be strings, got {type(pattern).__name__} {pattern!r}")
    return list(dict.fromkeys(patterns))


def _succeeded_unless_refused(error: BrokerError | None) -> BrokerError | None:
    """A lost connection does not undo a subscription change: the engine restores its
    subscriptions on reconnection, and the broker dropped them all anyway."""
    return None if isinstance(error, ConnectionLostError) else error


class ClientCore:
    """One client's engine and state, driven by a front (see the module's docstring).

    ``connect_call`` names the front's method that connects, for the error raised when
    an operation comes before it.
    """

    def __init__(self, options: _core.ClientOptions, front: Front, connect_call: str) -> None:
        self.options = options
        self.engine: _core.Client | None = None
        self.undecodable = 0
        self._front = front
        self._connect_call = connect_call
        self._callbacks: dict[int, Callback | None] = {}
        self._subscription_ids = itertools.count(1)
        self._calls: dict[int, Callable[[str | None, BrokerError | None], None]] = {}
        # Called for every message: looked up once.
        self._on_message = front._on_message
        self._defer = front._defer
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            _core.Delivery: self._deliver,
            _core.Undecodable: self._undecodable,
            _core.Answer: self._answered,
            _core.CallFailed: self._call_failed,
            _core.PublishFailed: self._publish_failed,
            _core.Connected: self._connected,
            _core.Disconnected: self._disconnected,
            _core.ConnectFailed: self._connect_failed,
            _core.Writable: lambda _: front._on_writable(),
            _core.Closed: self._closed,
        }

    @property
    def client_id(self) -> str:
        return self.options.client_id

    @property
    def running(self) -> bool:
        """True from :meth:`open` until the engine has stopped."""
        return self.engine is not None

    @property
    def is_connected(self) -> bool:
        return self.engine is not None and self.engine.is_connected

    # -- the engine's life ----------------------------------------------------------------
    def open(self, will: dict[str, Any] | None) -> socket.socket:
        """Starts the engine; returns the socket that becomes readable when it has
        events (the engine owns the other end). Raises :class:`InvalidMessageError`
        for a ``will`` the broker would refuse, ``TypeError`` when it is not a dict."""
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        try:
            self.engine = _core.Client(self.options, writer.detach(), will)
        except ValueError as error:
            reader.close()
            raise InvalidMessageError(str(error)) from None
        except BaseException:
            reader.close()
            raise
        return reader

    def close(self) -> None:
        """Asks the engine to flush, say goodbye and stop; the ``Closed`` event follows."""
        if self.engine is not None:
            self.engine.close()

    def stop(self) -> None:
        """Stops the engine at once (the front is going away) and fails every call that
        waits for it."""
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.close()
        self._callbacks.clear()
        calls, self._calls = self._calls, {}
        error = NotConnectedError("the client is closed")
        for done in calls.values():
            done(None, error)

    def take_events(self) -> list[Event]:
        """The events that are waiting, oldest first (at most a batch)."""
        if self.engine is None:
            return []
        try:
            return self.engine.drain()
        except Exception:
            logger.exception("client %s: events could not be taken", self.client_id)
            return []

    def handle(self, events: Iterable[Event]) -> None:
        """Handles events in order. A failure is logged and never costs the other
        events (nor ends the client)."""
        handlers = self._handlers
        for event in events:
            try:
                handlers[type(event)](event)
            except Exception:
                logger.exception("client %s: an event could not be handled", self.client_id)

    def require(self) -> _core.Client:
        if self.engine is None:
            raise NotConnectedError(f"not connected: call {self._connect_call} first")
        return self.engine

    # -- operations -----------------------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: Any,
        qos: Any,
        ttl: Any,
        retain: Any,
        headers: Any,
        confirmed: Done | None = None,
    ) -> str:
        """Queues a message; returns its id. With ``qos=1``, ``confirmed(message_id,
        error)`` follows once the broker has stored it, or could not.

        Raises :class:`InvalidMessageError` for what the broker would refuse,
        ``BlockingIOError`` when the outgoing queue is full (room comes with
        ``_on_writable``), :class:`NotConnectedError` when it cannot be queued at all.
        """
        engine = self.require()
        try:
            message_id, call = engine.publish(topic, payload, qos, ttl, retain, headers)
        except ValueError as error:
            raise InvalidMessageError(str(error)) from None
        except ConnectionError as error:
            raise NotConnectedError(str(error)) from None
        if call is not None and confirmed is not None:
            self._calls[call] = lambda _, error: confirmed(message_id, error)
        return message_id

    def subscribe(
        self,
        patterns: str | Iterable[str],
        callback: Callback | None,
        options: SubscribeOptions,
        done: Done,
    ) -> list[str]:
        """Calls ``callback`` (if any) with every message matching ``patterns``; returns
        the patterns. ``done(patterns, error)`` follows once the broker holds them, at
        once when nothing had to be sent (or the connection is down: they are sent on
        reconnection). A queue subscription the broker refuses is undone."""
        engine = self.require()
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        patterns = pattern_list(patterns)
        limits = options.limits()
        if options.queue is None and not options.durable:
            if limits:
                raise ValueError(
                    "prefetch, max_length, max_bytes, max_deliveries and dead_letter_topic "
                    "apply to queues: give queue= or durable=True"
                )
            subscription = self._add_callback(callback)
            try:
                call = engine.subscribe(
                    subscription, patterns, bool(options.passive), bool(options.no_local)
                )
            except ValueError as error:
                del self._callbacks[subscription]
                raise InvalidMessageError(str(error)) from None
            self._expect(call, lambda _, error: done(patterns, _succeeded_unless_refused(error)))
            return patterns
        if options.passive or options.no_local:
            raise ValueError("passive and no_local apply to plain subscriptions, not to queues")
        name = self.client_id if options.queue is None else options.queue
        if not isinstance(name, str):
            raise TypeError(f"queue must be a string, got {name!r}")
        params = {"patterns": patterns, "queue": name, "durable": bool(options.durable), **limits}
        subscription = self._add_callback(callback)
        try:
            call = engine.subscribe_queue(subscription, name, patterns, params)
        except ValueError as error:
            del self._callbacks[subscription]
            raise InvalidMessageError(str(error)) from None

        def answered(_: object, error: BrokerError | None) -> None:
            error = _succeeded_unless_refused(error)
            if error is not None:
                if self.engine is not None:
                    self.engine.unsubscribe_queue(name)
                self._callbacks.pop(subscription, None)
            done(patterns, error)

        self._expect(call, answered)
        return patterns

    def unsubscribe(self, patterns: str | Iterable[str], done: Done) -> list[str]:
        """Stops ``patterns`` for every callback; returns those that were subscribed.
        ``done(removed, error)`` follows once the broker has dropped them."""
        try:
            removed, emptied, call = self.require().unsubscribe(pattern_list(patterns))
        except ValueError as error:
            raise InvalidMessageError(str(error)) from None
        for subscription in emptied:
            self._callbacks.pop(subscription, None)
        self._expect(call, lambda _, error: done(removed, _succeeded_unless_refused(error)))
        return removed

    def unsubscribe_queue(self, name: str, done: Done) -> list[str]:
        """Stops consuming from queue ``name``; returns ``[name]`` if this client
        consumed from it. ``done(that list, error)`` follows."""
        subscription, call = self.require().unsubscribe_queue(name)
        if subscription is not None:
            self._callbacks.pop(subscription, None)
        stopped = [] if subscription is None else [name]
        self._expect(call, lambda _, error: done(stopped, _succeeded_unless_refused(error)))
        return stopped

    def delete_queue(self, name: str, done: Done) -> None:
        """Deletes a queue and its messages: ``done(messages it held, None)``, or
        ``done(name, error)`` (:class:`InvalidMessageError` for no such queue)."""
        call = self._call("delete_queue", {"name": name})

        def answered(result: str | None, error: BrokerError | None) -> None:
            if error is not None or result is None:
                done(name, error)
            else:
                done(int(_core.loads(result)["messages"]), None)

        self._calls[call] = answered

    def purge_queue(self, name: str, done: Done) -> None:
        """Drops a queue's ready messages, keeping the queue: ``done(messages dropped,
        None)``, or ``done(name, error)`` (:class:`InvalidMessageError` for no such queue)."""
        call = self._call("purge_queue", {"name": name})

        def answered(result: str | None, error: BrokerError | None) -> None:
            if error is not None or result is None:
                done(name, error)
            else:
                done(int(_core.loads(result)["purged"]), None)

        self._calls[call] = answered

    def request(
        self, topic: str, payload: Any, timeout: float, done: Done, headers: Any = None
    ) -> None:
        """Sends a request: ``done(reply payload, None)``, or ``done(topic, error)``.
        Raises at once for what cannot be sent (see :meth:`publish`)."""
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        params = {"topic": topic, "payload": payload, "timeout": timeout}
        if headers:
            params["headers"] = headers
        call = self._call("request", params)

        def answered(result: str | None, error: BrokerError | None) -> None:
            if error is not None or result is None:
                done(topic, error)
            else:
                done(_core.loads(result), None)

        self._calls[call] = answered

    def _call(self, method: str, params: dict[str, Any]) -> int:
        try:
            return self.require().call(method, params)
        except ValueError as error:
            raise InvalidMessageError(str(error)) from None
        except ConnectionError as error:
            raise NotConnectedError(str(error)) from None

    def _add_callback(self, callback: Callback | None) -> int:
        subscription = next(self._subscription_ids)
        self._callbacks[subscription] = callback
        return subscription

    def _expect(self, call: int | None, done: Done) -> None:
        """``done`` gets the answer to ``call``, at once when nothing was sent."""
        if call is None:
            done(None, None)
        else:
            self._calls[call] = done

    # -- deliveries -----------------------------------------------------------------------
    def _deliver(self, delivery: _core.Delivery) -> None:
        message = delivery.message
        self._on_message(message)
        answered = False
        # A message from a queue has one subscription: it is acknowledged when its
        # callback succeeds (or, without a callback, once the front has handed it
        # over) and given back when it fails or the subscription has gone meanwhile.
        succeeded = False
        for subscription in delivery.subscriptions:
            if subscription not in self._callbacks:
                continue
            callback = self._callbacks[subscription]
            if callback is None:
                succeeded = True
                continue
            try:
                result = callback(message)
            except Exception:
                logger.exception("callback %r failed on a message on %r", callback, message.topic)
                continue
            if result is not None:
                if self._defer(callback, result, message):
                    if message.queue is not None:
                        return  # settled when it ends
                    continue
                if message.reply_to is not None and not answered:
                    answered = True
                    self._reply(message, result)
            succeeded = True
        if message.queue is not None:
            message._finish(succeeded, True)

    def callback_done(self, message: Message, result: Any) -> None:
        """A deferred callback returned ``result``: it answers a request, and a message
        from a queue is acknowledged (unless settled already)."""
        if result is not None and message.reply_to is not None:
            self._reply(message, result)
        message.ack()

    def callback_failed(self, callback: Callback, message: Message) -> None:
        """A deferred callback raised (call it from the ``except`` block): logged, and a
        message from a queue goes back to it."""
        logger.exception("callback %r failed on a message on %r", callback, message.topic)
        message.nack(requeue=True)

    def _reply(self, message: Message, result: Any) -> None:
        assert message.reply_to is not None
        try:
            self.require().publish(message.reply_to, result, 0, 0, False, None)
        except (BrokerError, ValueError, ConnectionError, BlockingIOError) as error:
            self._problem(f"could not answer the request on {message.topic!r}: {error}")

    def _undecodable(self, event: _core.Undecodable) -> None:
        """A message whose payload Python cannot hold (an integer past Python's digit
        limit) is reported and never reaches a callback; from a queue it is rejected
        without requeue, so it goes to the queue's dead-letter topic instead of coming
        back to the next consumer."""
        self.undecodable += 1
        text = event.payload_text
        shown = text if len(text) <= 80 else f"{text[:80]}... ({len(text)} characters)"
        report = (
            f"message {event.id} on {event.topic!r} from {event.sender!r} was not delivered:"
            f" its payload cannot be turned into a Python value ({event.reason}): {shown}"
        )
        if event.reject():
            report += f"; rejected to the dead-letter topic of queue {event.queue!r}"
        self._problem(report)

    def _problem(self, report: str) -> None:
        logger.warning("%s", report)
        self._front._on_problem(report)

    # -- answers and state changes --------------------------------------------------------
    def _answered(self, event: _core.Answer) -> None:
        done = self._calls.pop(event.call, None)
        if done is not None:
            done(event.result, None)

    def _call_failed(self, event: _core.CallFailed) -> None:
        done = self._calls.pop(event.call, None)
        if done is not None:
            done(None, error_from_code(event.code, event.message))

    def _publish_failed(self, event: _core.PublishFailed) -> None:
        logger.warning(
            "the broker refused message %s: %s (code %s)",
            event.message_id,
            event.message,
            event.code,
        )
        self._front._on_publish_failed(event.message_id, error_from_code(event.code, event.message))

    def _connected(self, _: _core.Connected) -> None:
        options = self.options
        logger.info("client %s connected to %s:%s", options.client_id, options.host, options.port)
        self._front._on_connected()

    def _disconnected(self, event: _core.Disconnected) -> None:
        logger.info("client %s disconnected: %s", self.client_id, event.reason)
        self._front._on_disconnected(event.reason, event.reconnecting)

    def _connect_failed(self, event: _core.ConnectFailed) -> None:
        logger.warning("client %s could not connect: %s", self.client_id, event.reason)
        self._front._on_connect_failed(event.reason, event.code)

    def _closed(self, _: _core.Closed) -> None:
        self.stop()
        self._front._on_closed()
