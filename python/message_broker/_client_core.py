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
import functools
import itertools
import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from message_broker import _core
from message_broker.config import DEFAULT_HOST, DEFAULT_PORT
from message_broker.errors import (
    BrokerError,
    ConnectionLostError,
    InvalidMessageError,
    NotConnectedError,
    PayloadValidationError,
    error_from_code,
)
from message_broker.message import Message
from message_broker.typed import decode, decoding, encode

logger = logging.getLogger("message_broker.client")

if TYPE_CHECKING:
    from message_broker._core import Event

Callback = Callable[[Message], Any]

# How an operation ends: (what it gives back, None) or (what it is about, the error).
Done = Callable[[Any, BrokerError | None], None]

# How a deferred callback ends: (what it returned, None) or (None, what it raised).
Finish = Callable[[Any, "Exception | None"], None]

CLIENT_DEFAULTS = _core.CLIENT_DEFAULTS
"""The defaults of the clients' options: the engine's own, read from the extension."""

URL_ENV = "MESSAGE_BROKER_URL"
"""The environment variable a client reads where to connect from when it is given
neither ``url`` nor ``host`` nor ``port``."""

DEFAULT_MAX_BUFFERED = 10_000
"""Messages a subscription without a callback holds until they are taken."""

HELD = object()
"""What a subscription's buffer returns for a message it keeps: a message from a queue
is then settled when it is taken (see :class:`MessageBuffer`), not when handed over."""


class _DefaultHost(str):
    """The default host, ``localhost``, that also says the caller gave none."""

    __slots__ = ()


class _DefaultPort(int):
    """The default port, 15234, that also says the caller gave none."""

    __slots__ = ()


HOST_NOT_GIVEN: str = _DefaultHost(DEFAULT_HOST)
"""The clients' default ``host``: equal to ``DEFAULT_HOST``, and told apart from a host
given explicitly, so that a client given no address at all reads ``MESSAGE_BROKER_URL``."""
PORT_NOT_GIVEN: int = _DefaultPort(DEFAULT_PORT)
"""The clients' default ``port``, as :data:`HOST_NOT_GIVEN` is their host."""


def connection_target(url: str | None, host: str, port: int) -> tuple[str | None, str, int]:
    """``(url, host, port)`` for ``_core.ClientOptions``: as given, and
    ``MESSAGE_BROKER_URL`` when none of the three was (``host`` and ``port`` are the
    clients' defaults, :data:`HOST_NOT_GIVEN` and :data:`PORT_NOT_GIVEN`)."""
    if url is None and type(host) is _DefaultHost and type(port) is _DefaultPort:
        from_environment = os.environ.get(URL_ENV, "").strip()
        if from_environment:
            try:
                _core.client_url(from_environment, DEFAULT_HOST, DEFAULT_PORT)
            except ValueError as error:
                raise ValueError(f"{URL_ENV}: {error}") from None
            url = from_environment
    return url, host, port


def broker_url(url: str | None = None, host: str | None = None, port: int | None = None) -> str:
    """Where a client given these arguments connects, as a URL (``tcp://host:port`` or
    ``unix:///path``), without connecting.

    ``url`` when given (``tcp://host:port``, ``host:port``, ``unix:///path`` or the
    path of a local socket), else ``host`` and ``port`` when either is given (the
    defaults, ``localhost`` and 15234, for the other), else the ``MESSAGE_BROKER_URL``
    environment variable when set, else ``tcp://localhost:15234``. Raises
    ``ValueError`` saying what was expected (and naming ``MESSAGE_BROKER_URL`` when the
    fault is there). This is what :class:`~message_broker.BrokerClient` and the other
    clients do with their ``url``, ``host`` and ``port``.
    """
    return _core.client_url(
        *connection_target(
            url,
            HOST_NOT_GIVEN if host is None else host,
            PORT_NOT_GIVEN if port is None else port,
        )
    )


class Front(Protocol):
    """What a front does when the core has news for it. Each runs on the thread that
    drives the core. A front that looks at every delivered message before its
    callbacks also has ``_on_message(message)``."""

    def _on_connected(self) -> None: ...
    def _on_disconnected(self, reason: str, reconnecting: bool) -> None: ...
    def _on_connect_failed(self, reason: str, code: int | None) -> None:
        """The first connection failed; ``code`` is the broker's error code when it
        refused the connect itself (``UNAUTHORIZED`` for a missing or wrong token)."""

    def _on_closed(self) -> None:
        """The engine has stopped for good; calls still waiting have failed."""

    def _on_writable(self) -> None:
        """Room again in the outgoing queue, after a publish raised BlockingIOError."""

    def _on_publish_failed(self, message_id: str, error: BrokerError) -> None:
        """The broker refused a message published without confirmation."""

    def _on_problem(self, report: str) -> None:
        """Something the user should hear of, already logged (a message that could not
        be delivered, a request that could not be answered)."""

    def _on_invalid_payload(self, error: PayloadValidationError) -> None:
        """A received payload did not decode into its type; already logged."""

    def _defer(self, result: Any, finish: Finish) -> bool:
        """True when ``result`` is work still running (a coroutine) that the front
        finishes later, calling ``finish(value, None)`` with what it returned or
        ``finish(None, exception)`` with what it raised."""


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
    # subscribe(..., type=): what the callback's payloads are decoded into.
    payload_type: Any = None

    def limits(self) -> dict[str, Any]:
        """The queue's options that were given (the broker's defaults stand for the rest)."""
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name not in _NOT_LIMITS and getattr(self, field.name) is not None
        }


_NOT_LIMITS = ("queue", "durable", "passive", "no_local", "payload_type")


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


class MessageBuffer:
    """The messages of a subscription without a callback, until they are taken.

    :meth:`put` is that subscription's callback. It keeps at most ``limit`` messages:
    past that (a consumer slower than its messages) a message is dropped and counted
    in :attr:`dropped` (one from a queue is given back to the queue instead), with a
    warning logged when dropping starts, and again after the buffer has drained to
    half since. Memory stays bounded whatever the rate.

    A message from a queue is acknowledged when the next message is taken (the
    consumer is done with it without raising), unless it was settled before; when the
    subscription ends, the ones not taken yet are dropped: the broker gives them back
    to the queue. The fronts add the waiting, each its own way.
    """

    def __init__(self, limit: int, name: str) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_buffered must be a whole number of 1 or more, got {limit!r}")
        self.limit = limit
        self.dropped = 0
        self.ended = False
        self._name = name
        self._messages: deque[Message] = deque()
        self._in_hand: Message | None = None
        self._overflowing = False

    def __len__(self) -> int:
        return len(self._messages)

    def put(self, message: Message) -> object:
        if len(self._messages) < self.limit:
            self._messages.append(message)
            self._wake()
            return HELD
        self.dropped += 1
        if message.queue is not None:
            message._finish(False, True)
        if not self._overflowing:
            self._overflowing = True
            logger.warning(
                "the subscription to %s holds %d messages nobody has taken: it drops new ones"
                " (%d so far) until it has room; take them faster, or give it a callback",
                self._name,
                self.limit,
                self.dropped,
            )
        return HELD

    def take(self) -> Message | None:
        """The oldest message, or ``None`` when there is none; settles the message from
        a queue taken before."""
        in_hand, self._in_hand = self._in_hand, None
        if in_hand is not None:
            in_hand._finish(True, True)
        if not self._messages:
            return None
        message = self._messages.popleft()
        if self._overflowing and len(self._messages) <= self.limit // 2:
            self._overflowing = False
        if message.queue is not None:
            self._in_hand = message
        return message

    def end(self) -> None:
        """No more messages come. Those from a queue not taken yet are dropped (the
        broker gives them back to the queue); the others can still be taken."""
        self.ended = True
        if any(message.queue is not None for message in self._messages):
            self._messages = deque(m for m in self._messages if m.queue is None)
        self._wake()

    def _wake(self) -> None:
        """A message came, or the end: wake whoever waits."""


class SubscriptionHandle(list[str]):
    """What ``subscribe`` returns: the patterns subscribed (a ``list`` of them, equal
    to the plain list), and the handle of this one subscription. Each front adds how
    to end it and, without a callback, how to take its messages."""

    def __init__(self, buffer: MessageBuffer | None = None) -> None:
        super().__init__()
        self.queue: str | None = None
        """The queue it consumes from, for a queue or durable subscription."""
        self._buffer = buffer
        self._id: int | None = None
        self._active = False

    @property
    def active(self) -> bool:
        """True until it is unsubscribed (by itself, by the client's ``unsubscribe`` of
        all its patterns or its queue, by ``drain``) or its client is closed."""
        return self._active

    @property
    def pending(self) -> int:
        """Messages received and not taken yet (0 for a subscription with a callback)."""
        return 0 if self._buffer is None else len(self._buffer)

    @property
    def dropped(self) -> int:
        """Messages dropped because the buffer was full (see ``max_buffered``)."""
        return 0 if self._buffer is None else self._buffer.dropped

    def __repr__(self) -> str:
        state = "active" if self._active else "ended"
        queue = "" if self.queue is None else f" queue={self.queue!r}"
        return f"<{type(self).__name__} {list(self)!r}{queue} {state}>"

    def _started(self, subscription: int, patterns: list[str], queue: str | None) -> None:
        self[:] = patterns
        self.queue = queue
        self._id = subscription
        self._active = True

    def _ended(self) -> None:
        self._active = False
        if self._buffer is not None:
            self._buffer.end()


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
        # The callback of every subscription (None: acknowledged without one), read by
        # the engine as it delivers.
        self.callbacks: dict[int, Callback | None] = {}
        # Passive subscriptions never answer a request with their callback's failure.
        self._passive: set[int] = set()
        self._handles: dict[int, SubscriptionHandle] = {}
        self._subscription_ids = itertools.count(1)
        # Why the engine stopped by itself, once it has: what "not connected" says.
        self._stop_reason: str | None = None
        self._calls: dict[int, Callable[[str | None, BrokerError | None], None]] = {}
        # A front that looks at every delivered message, before its callbacks, has
        # ``_on_message``.
        self.observer: Callable[[Message], None] | None = getattr(front, "_on_message", None)
        self._defer = front._defer
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
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
    def open(self, will: dict[str, Any] | None, wait: float | None = None) -> socket.socket:
        """Starts the engine; returns the socket that becomes readable when it has
        events (the engine owns the other end). Raises :class:`InvalidMessageError`
        for a ``will`` the broker would refuse, ``TypeError`` when it is not a dict.
        With ``wait`` (seconds), the first connection is tried until then instead of
        ``connect_retries`` times; ``TypeError``/``ValueError`` when it is not a
        positive number."""
        if wait is not None:
            if isinstance(wait, bool) or not isinstance(wait, (int, float)):
                raise TypeError(f"wait must be a number of seconds, got {wait!r}")
            if not 0 < wait < float("inf"):
                raise ValueError(f"wait must be a positive number of seconds, got {wait!r}")
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        self._stop_reason = None
        try:
            self.engine = _core.Client(self.options, writer.detach(), will, wait)
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
            self._stop_reason = engine.stop_reason
            engine.close()
        self.callbacks.clear()
        self._passive.clear()
        handles, self._handles = self._handles, {}
        for handle in handles.values():
            handle._ended()
        calls, self._calls = self._calls, {}
        error = self.not_connected()
        for done in calls.values():
            done(None, error)

    @property
    def stop_reason(self) -> str | None:
        """Why the engine stopped by itself (its first connection failed, its session
        was taken over, its connection was lost with ``reconnect`` off), once it has."""
        engine = self.engine
        return engine.stop_reason if engine is not None else self._stop_reason

    def not_connected(self) -> NotConnectedError:
        """The error of a call that cannot be made: the client is not running, saying
        why it stopped when it stopped by itself."""
        reason = self.stop_reason
        if reason is not None:
            return NotConnectedError(f"not connected: {reason}; call {self._connect_call} again")
        return NotConnectedError(f"not connected: call {self._connect_call} first")

    def refused(self, error: ConnectionError) -> NotConnectedError:
        """A ``ConnectionError`` of the engine: not connected (and not queued), or
        stopped, saying why."""
        if self.stop_reason is not None:
            return self.not_connected()
        return NotConnectedError(str(error))

    def pump(self, limit: int | None = None) -> int:
        """Handles the waiting events in order, at most a batch (or ``limit``): the
        engine calls the callbacks of each delivery from its own loop and hands every
        other event to :meth:`handle`. Returns how many were handled, 0 when none was
        waiting."""
        engine = self.engine
        if engine is None:
            return 0
        try:
            return engine.dispatch(self) if limit is None else engine.dispatch(self, limit)
        except Exception:
            logger.exception("client %s: events could not be handled", self.client_id)
            return 0

    def handle(self, event: Event) -> None:
        """Handles one event other than a delivery. A failure is logged and never costs
        the other events (nor ends the client)."""
        try:
            self._handlers[type(event)](event)
        except Exception:
            logger.exception("client %s: an event could not be handled", self.client_id)

    def handling_failed(self, error: Exception) -> None:
        """A delivery could not be handled (the front's look at it failed): logged, and
        the next event goes on."""
        logger.error(
            "client %s: an event could not be handled",
            self.client_id,
            exc_info=(type(error), error, error.__traceback__),
        )

    def require(self) -> _core.Client:
        if self.engine is None:
            raise self.not_connected()
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
            message_id, call = engine.publish(topic, encode(payload), qos, ttl, retain, headers)
        except ValueError as error:
            raise InvalidMessageError(str(error)) from None
        except ConnectionError as error:
            raise self.refused(error) from None
        if call is not None and confirmed is not None:
            self._calls[call] = lambda _, error: confirmed(message_id, error)
        return message_id

    def subscribe(
        self,
        patterns: str | Iterable[str],
        callback: Callback | None,
        options: SubscribeOptions,
        done: Done,
        handle: SubscriptionHandle | None = None,
    ) -> list[str]:
        """Calls ``callback`` (if any) with every message matching ``patterns``; returns
        the patterns. ``done(patterns, error)`` follows once the broker holds them, at
        once when nothing had to be sent (or the connection is down: they are sent on
        reconnection). A queue subscription the broker refuses is undone.

        ``handle``, when given, becomes this subscription's: it holds the patterns,
        :meth:`release` ends this subscription alone, and it hears when the
        subscription ends (whatever ends it)."""
        engine = self.require()
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        if options.payload_type is not None and callback is not None:
            callback = decoding(callback, options.payload_type, self.report_invalid)
        patterns = pattern_list(patterns)
        limits = options.limits()
        if options.queue is None and not options.durable:
            if limits:
                raise ValueError(
                    "prefetch, max_length, max_bytes, max_deliveries and dead_letter_topic "
                    "apply to queues: give queue= or durable=True"
                )
            subscription = self._add_callback(callback, handle, patterns, None)
            if options.passive:
                self._passive.add(subscription)
            try:
                call = engine.subscribe(
                    subscription, patterns, bool(options.passive), bool(options.no_local)
                )
            except ValueError as error:
                self._forget(subscription)
                raise InvalidMessageError(str(error)) from None
            self._expect(call, lambda _, error: done(patterns, _succeeded_unless_refused(error)))
            return patterns
        if options.passive or options.no_local:
            raise ValueError("passive and no_local apply to plain subscriptions, not to queues")
        name = self.client_id if options.queue is None else options.queue
        if not isinstance(name, str):
            raise TypeError(f"queue must be a string, got {name!r}")
        params = {"patterns": patterns, "queue": name, "durable": bool(options.durable), **limits}
        subscription = self._add_callback(callback, handle, patterns, name)
        try:
            call = engine.subscribe_queue(subscription, name, patterns, params)
        except ValueError as error:
            self._forget(subscription)
            raise InvalidMessageError(str(error)) from None

        def answered(_: object, error: BrokerError | None) -> None:
            error = _succeeded_unless_refused(error)
            if error is not None:
                if self.engine is not None:
                    self.engine.unsubscribe_queue(name)
                self._forget(subscription)
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
            self._forget(subscription)
        self._expect(call, lambda _, error: done(removed, _succeeded_unless_refused(error)))
        return removed

    def release(self, handle: SubscriptionHandle, done: Done) -> None:
        """Ends the subscription of ``handle`` and no other: the other callbacks on its
        patterns keep theirs, and the broker drops a pattern only once no subscription
        holds it. ``done(None, error)`` follows (at once when nothing was sent, or the
        subscription had ended already)."""
        subscription = handle._id
        if self.engine is None or subscription is None or subscription not in self.callbacks:
            handle._ended()
            done(None, None)
            return
        _, call = self.engine.release(subscription)
        self._forget(subscription)
        self._expect(call, lambda _, error: done(None, _succeeded_unless_refused(error)))

    def release_all(self, done: Done) -> None:
        """Ends every subscription, for draining: the callbacks keep receiving the
        messages the broker sent before it dropped the subscriptions, until it has
        answered the last unsubscribe. ``done(None, None)`` follows."""
        engine = self.require()
        subscriptions = list(self.callbacks)
        calls = [call for s in subscriptions if (call := engine.release(s)[1]) is not None]
        waiting = len(calls)

        def answered(_: object, __: BrokerError | None) -> None:
            nonlocal waiting
            waiting -= 1
            if waiting <= 0:
                for subscription in subscriptions:
                    self._forget(subscription)
                done(None, None)

        if not calls:
            answered(None, None)
        for call in calls:
            self._calls[call] = answered

    def flush(self, done: Done) -> None:
        """``done(None, None)`` once the broker has answered a ping written after
        everything queued so far: all of it has reached the broker. Raises
        :class:`NotConnectedError` without a connection, ``BlockingIOError`` when the
        outgoing queue is full."""
        call = self._call("ping", {})
        self._calls[call] = lambda _, error: done(None, error)

    def unsubscribe_queue(self, name: str, done: Done) -> list[str]:
        """Stops consuming from queue ``name``; returns ``[name]`` if this client
        consumed from it. ``done(that list, error)`` follows."""
        subscription, call = self.require().unsubscribe_queue(name)
        if subscription is not None:
            self._forget(subscription)
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
        self,
        topic: str,
        payload: Any,
        timeout: float,
        done: Done,
        headers: Any = None,
        response_type: Any = None,
    ) -> None:
        """Sends a request: ``done(reply payload, None)``, or ``done(topic, error)``.
        Raises at once for what cannot be sent (see :meth:`publish`). With
        ``response_type`` the reply is decoded into it; one that does not validate is
        the error (:class:`PayloadValidationError`)."""
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        params = {"topic": topic, "payload": encode(payload), "timeout": timeout}
        if headers:
            params["headers"] = headers
        call = self._call("request", params)

        def answered(result: str | None, error: BrokerError | None) -> None:
            if error is not None or result is None:
                done(topic, error)
            elif response_type is None:
                done(_core.loads(result), None)
            else:
                try:
                    reply = decode(_core.loads(result), response_type, topic)
                except PayloadValidationError as invalid:
                    logger.warning("%s", invalid)
                    done(topic, invalid)
                    return
                done(reply, None)

        self._calls[call] = answered

    def report_invalid(self, error: PayloadValidationError) -> None:
        """A received payload did not decode into its type: logged, and told to the
        front (``on_error``, ``error_occurred``); the message goes no further."""
        sender = "" if error.sender is None else f" (from {error.sender!r})"
        logger.warning("%s%s", error, sender)
        self._front._on_invalid_payload(error)

    def call(self, method: str, params: dict[str, Any], done: Done) -> None:
        """Sends a call of any method of the protocol: ``done(its decoded result,
        None)``, or ``done(None, error)``. Raises at once what :meth:`_call` raises."""
        call = self._call(method, params)

        def answered(result: str | None, error: BrokerError | None) -> None:
            if error is not None or result is None:
                done(None, error)
            else:
                done(_core.loads(result), None)

        self._calls[call] = answered

    def _call(self, method: str, params: dict[str, Any]) -> int:
        try:
            return self.require().call(method, params)
        except ValueError as error:
            raise InvalidMessageError(str(error)) from None
        except ConnectionError as error:
            raise self.refused(error) from None

    def _add_callback(
        self,
        callback: Callback | None,
        handle: SubscriptionHandle | None,
        patterns: list[str],
        queue: str | None,
    ) -> int:
        subscription = next(self._subscription_ids)
        self.callbacks[subscription] = callback
        if handle is not None:
            self._handles[subscription] = handle
            handle._started(subscription, patterns, queue)
        return subscription

    def _forget(self, subscription: int) -> None:
        """The subscription is gone: its callback goes, and its handle hears of it."""
        self.callbacks.pop(subscription, None)
        self._passive.discard(subscription)
        handle = self._handles.pop(subscription, None)
        if handle is not None:
            handle._ended()

    def _expect(self, call: int | None, done: Done) -> None:
        """``done`` gets the answer to ``call``, at once when nothing was sent."""
        if call is None:
            done(None, None)
        else:
            self._calls[call] = done

    # -- deliveries -----------------------------------------------------------------------
    # The engine calls each delivery's callbacks (Client.dispatch): a callback that
    # returns None has handled its message, one from a queue is acknowledged once every
    # callback has, and given back when one failed. What else a callback does comes here.
    def returned(
        self, callback: Callback, message: Message, subscription: int, result: Any
    ) -> bool:
        """A callback returned ``result``, not None: the message held in a buffer, work
        still running (a coroutine), or the answer to a request. True when the message
        is settled later, by whoever holds it (a message from a queue)."""
        if result is HELD:
            return message.queue is not None
        answers = subscription not in self._passive
        finish = functools.partial(self._finish_deferred, callback, message, answers)
        if self._defer(result, finish):
            return message.queue is not None
        self._answer(message, result)
        return False

    def raised(
        self, callback: Callback, message: Message, subscription: int, error: Exception
    ) -> bool:
        """A callback raised ``error``: logged. True when it is the answer to a request
        (its subscription is not passive)."""
        logger.error(
            "callback %r failed on a message on %r",
            callback,
            message.topic,
            exc_info=(type(error), error, error.__traceback__),
        )
        return subscription not in self._passive

    def _finish_deferred(
        self,
        callback: Callback,
        message: Message,
        answers: bool,
        result: Any,
        error: Exception | None,
    ) -> None:
        """A deferred callback ended. What it returned answers a request, and a
        message from a queue is acknowledged (unless settled already). What it raised
        is logged, answers a request (unless its subscription is passive), and a
        message from a queue goes back to it unless that answered its requester."""
        if error is None:
            self._answer(message, result)
            message.ack()
            return
        logger.error(
            "callback %r failed on a message on %r",
            callback,
            message.topic,
            exc_info=(type(error), error, error.__traceback__),
        )
        if answers and self.answer_failure(message, error):
            message.ack()
        else:
            message.nack(requeue=True)

    def _answer(self, message: Message, result: Any) -> None:
        """A callback's value answers a request, unless it is None or the request was
        answered already (with ``respond``, or by another callback)."""
        if result is None or message.reply_to is None or message.responded:
            return
        try:
            message.respond(encode(result))
        except (BrokerError, ValueError, ConnectionError, BlockingIOError) as error:
            self._problem(f"could not answer the request on {message.topic!r}: {error}")

    def answer_failure(self, message: Message, error: Exception) -> bool:
        """Answers a request with what its callback raised, so its requester fails at
        once with ResponderError; True when sent."""
        if message.reply_to is None or message.responded:
            return False
        try:
            message._respond_error(type(error).__name__, str(error))
        except (BrokerError, ValueError, ConnectionError, BlockingIOError) as refusal:
            self._problem(
                f"could not tell the requester on {message.topic!r} of the failure: {refusal}"
            )
            return False
        return True

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
            done(None, error_from_code(event.code, event.message, event.data))

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
