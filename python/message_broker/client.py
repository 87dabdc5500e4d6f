"""``BrokerClient``: the asyncio client.

The connection lives in the extension (on its own threads): it connects, pings,
reconnects and restores subscriptions, and writes in large batches. What a client
does with the events it hears is in :mod:`message_broker._client_core`, shared with
the Qt client; this module drives that core from the event loop that called
:meth:`BrokerClient.connect`, and turns its completions into awaitables. The
extension wakes that loop once per burst of events, by writing to a socket the loop
awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any

from message_broker import _core
from message_broker._client_core import (
    CLIENT_DEFAULTS,
    DEFAULT_MAX_BUFFERED,
    HOST_NOT_GIVEN,
    PORT_NOT_GIVEN,
    URL_ENV,
    ClientCore,
    Finish,
    MessageBuffer,
    SubscribeOptions,
    SubscriptionHandle,
    broker_url,
    connection_target,
    pattern_list,
)
from message_broker.errors import (
    ERROR_CODES,
    BrokerError,
    InvalidMessageError,
    NotConnectedError,
    OutgoingQueueFullError,
    PayloadValidationError,
    RequestTimeoutError,
    error_from_code,
)
from message_broker.message import Message
from message_broker.typed import PLAIN_TYPES, encode

__all__ = ["URL_ENV", "BrokerClient", "Callback", "Subscription", "broker_url"]

logger = logging.getLogger("message_broker.client")

Callback = Callable[[Message], Any | Awaitable[Any]]
"""A subscriber: called with each matching :class:`Message`, sync or async. A value
other than ``None`` that it returns (or that its coroutine returns) answers a request,
unless it answered with :meth:`Message.respond` already; an exception it raises answers
it with the failure (the requester gets :class:`ResponderError`)."""

ConnectionCallback = Callable[[], Any]
DisconnectionCallback = Callable[[str], Any]
ErrorCallback = Callable[[BrokerError], Any]

# Extra time a request waits beyond its own timeout before giving up on the broker.
_REQUEST_GRACE = 5.0


def check_timeout(timeout: float | None, *, optional: bool) -> None:
    """Raises ``ValueError`` unless ``timeout`` is a number of seconds, 0 or more (or
    ``None`` where ``optional``: no limit)."""
    if timeout is None and optional:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds (0 or more), got {timeout!r}")


class _AsyncBuffer(MessageBuffer):
    """A subscription's buffer, awaited on the client's event loop."""

    def __init__(self, limit: int, name: str) -> None:
        super().__init__(limit, name)
        self._waiters: list[asyncio.Future[None]] = []

    def _wake(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def get(self, timeout: float | None, name: str) -> Message | None:
        """The next message; ``None`` once the subscription has ended and every message
        is taken. Raises ``TimeoutError`` when none comes within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            message = self.take()
            if message is not None or self.ended:
                return message
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                if deadline is None:
                    await waiter
                else:
                    await asyncio.wait_for(waiter, max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                raise TimeoutError(f"no message on {name} within {timeout} s") from None
            finally:
                # A waiter that timed out (or was cancelled) goes at once: a consumer
                # polling a quiet subscription must not pile them up.
                if waiter in self._waiters:
                    self._waiters.remove(waiter)


class Subscription(SubscriptionHandle):
    """One subscription of a :class:`BrokerClient`, as :meth:`BrokerClient.subscribe`
    returns it: the list of its patterns (it compares equal to the plain list), and
    a handle.

    >>> sub = await client.subscribe("jobs.*")          # no callback: take the messages
    >>> msg = await sub.next_msg(timeout=5)
    >>> async for msg in sub:                            # until it is unsubscribed
    ...     print(msg.payload)
    >>> await sub.unsubscribe()                          # this subscription only

    Made with a callback, it only unsubscribes. Without one it keeps up to
    ``max_buffered`` messages for :meth:`next_msg` and ``async for``; see
    :meth:`BrokerClient.subscribe` for what happens past that and how messages from a
    queue are acknowledged. Not made directly.
    """

    def __init__(self, client: BrokerClient, buffer: _AsyncBuffer | None) -> None:
        super().__init__(buffer)
        self._client = client
        self._messages = buffer

    async def unsubscribe(self) -> None:
        """Ends this subscription alone: its callback (or buffer) gets no more
        messages, while other subscriptions of the client on the same patterns go on;
        the broker is told to unsubscribe a pattern only when no subscription holds it
        any more. A subscription from a queue stops consuming from it (its messages
        not acknowledged yet go back to the queue). Does nothing once ended."""
        if self._active:
            await self._client._release(self)

    async def next_msg(self, timeout: float | None = None) -> Message:
        """The next message of a subscription made without a callback, waiting up to
        ``timeout`` seconds (``None``: as long as it takes; 0: only one already
        received). Raises ``TimeoutError`` when none came in time, and
        :class:`NotConnectedError` once the subscription has ended (unsubscribed, or
        the client disconnected) and every message it received has been taken."""
        check_timeout(timeout, optional=True)
        message = await self._buffer_of_messages().get(timeout, repr(list(self)))
        if message is None:
            raise NotConnectedError(f"the subscription to {list(self)!r} has ended")
        return message

    def __aiter__(self) -> Subscription:
        self._buffer_of_messages()
        return self

    async def __anext__(self) -> Message:
        message = await self._buffer_of_messages().get(None, repr(list(self)))
        if message is None:
            raise StopAsyncIteration
        return message

    def _buffer_of_messages(self) -> _AsyncBuffer:
        if self._messages is None:
            raise TypeError(
                "this subscription has a callback: its messages go there, not to next_msg()"
            )
        return self._messages


class BrokerClient:
    """A connection to a message broker, for asyncio programs.

    >>> client = BrokerClient("my_app", host="localhost", port=15234)
    >>> await client.connect()
    >>> await client.subscribe(["jobs.*"], handler)
    >>> await client.publish("jobs.activated", {"job_id": "123"})

    While the broker is away the client reconnects with back-off and restores its
    subscriptions; :attr:`is_connected` is ``False`` meanwhile. Messages published
    while disconnected are queued (up to ``max_pending``) and sent on reconnection;
    past that, :meth:`publish` raises :class:`NotConnectedError`. Requests need a live
    connection and raise :class:`NotConnectedError` at once without one.

    Where it connects: ``url`` when given, else ``host`` and ``port`` when either is
    (``localhost`` and 15234 by default), else the ``MESSAGE_BROKER_URL`` environment
    variable when set, else ``localhost:15234`` (see :func:`broker_url`). ``url`` is
    ``"unix:///path/broker-15234.sock"`` (or the plain path) for the broker's local
    socket, which only its own user can open and which needs no token, or
    ``"tcp://host:port"`` (or ``"host:port"``). ``token`` is the broker's token;
    without one the client sends ``MESSAGE_BROKER_TOKEN``, else, for a broker on this
    machine, the token in that broker's runtime file (read at every connection, so a
    restarted broker's new token is picked up).

    ``on_connected()``, ``on_disconnected(reason)``, ``on_reconnected()`` and
    ``on_error(error)`` are called on the client's event loop: when :meth:`connect`
    succeeds; whenever the connection ends (lost, or closed by :meth:`disconnect`);
    when it is back after a loss (subscriptions restored); and with a
    :class:`BrokerError` for what no call of yours raises (the first connection
    failed, the broker refused a ``qos=0`` message, a message could not be
    delivered or a request not answered). Each may be a function or a coroutine
    function; an exception in one is logged on ``message_broker.client`` and never
    affects the client.
    """

    def __init__(
        self,
        client_id: str,
        host: str = HOST_NOT_GIVEN,
        port: int = PORT_NOT_GIVEN,
        *,
        url: str | None = None,
        token: str | None = None,
        client_type: str = "python",
        connect_timeout: float = CLIENT_DEFAULTS["connect_timeout"],
        connect_retries: int = CLIENT_DEFAULTS["connect_retries"],
        reconnect: bool = CLIENT_DEFAULTS["reconnect"],
        reconnect_delay: float = CLIENT_DEFAULTS["reconnect_delay"],
        max_reconnect_delay: float = CLIENT_DEFAULTS["max_reconnect_delay"],
        heartbeat: bool = CLIENT_DEFAULTS["heartbeat"],
        max_pending: int = CLIENT_DEFAULTS["max_pending"],
        on_connected: ConnectionCallback | None = None,
        on_disconnected: DisconnectionCallback | None = None,
        on_reconnected: ConnectionCallback | None = None,
        on_error: ErrorCallback | None = None,
    ) -> None:
        for name, hook in (
            ("on_connected", on_connected),
            ("on_disconnected", on_disconnected),
            ("on_reconnected", on_reconnected),
            ("on_error", on_error),
        ):
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be callable, got {hook!r}")
        url, host, port = connection_target(url, host, port)
        options = _core.ClientOptions(
            client_id,
            host,
            port,
            url=url,
            token=token,
            client_type=client_type,
            connect_timeout=connect_timeout,
            connect_retries=connect_retries,
            reconnect=reconnect,
            reconnect_delay=reconnect_delay,
            max_reconnect_delay=max_reconnect_delay,
            heartbeat=heartbeat,
            max_pending=max_pending,
        )
        self._core = ClientCore(options, self, "connect()")
        self._loop: asyncio.AbstractEventLoop | None = None
        # The thread that runs it: where a publish may skip asking for the running loop.
        self._loop_thread: int | None = None
        self._pump: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[bool] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._room: list[asyncio.Future[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        # Why the broker refused the last connect, raised by ``async with``.
        self._refused: BrokerError | None = None
        # Why the last connect failed, when the broker did not refuse it itself.
        self._connect_failure = "it cannot be reached"
        # The token given, for the connections AHKBridge opens to the same broker.
        self._token = token
        self._when_connected = on_connected
        self._when_disconnected = on_disconnected
        self._when_reconnected = on_reconnected
        self._when_error = on_error
        # Tells a reconnection from the first connection of each connect().
        self._has_connected = False
        self._hook_tasks: set[asyncio.Task[Any]] = set()

    # -- properties -----------------------------------------------------------------------
    @property
    def client_id(self) -> str:
        """The id this client connects with."""
        return self._core.client_id

    @property
    def host(self) -> str:
        """The broker's host, as given (the socket path of a ``unix://`` client)."""
        return self._core.options.host

    @property
    def port(self) -> int:
        """The broker's port, as given (0 for a ``unix://`` client)."""
        return self._core.options.port

    @property
    def url(self) -> str:
        """Where the client connects: ``tcp://host:port`` or ``unix:///path``."""
        return self._core.options.url

    @property
    def is_connected(self) -> bool:
        """True while a connection to the broker is up, this very moment."""
        return self._core.is_connected

    @property
    def undecodable_messages(self) -> int:
        """Messages not delivered because their payload cannot be turned into a Python
        value (an integer past Python's digit limit). Each is logged; one from a queue
        goes to the queue's dead-letter topic."""
        return self._core.undecodable

    def __repr__(self) -> str:
        state = "connected" if self.is_connected else "not connected"
        return f"<BrokerClient {self.client_id!r} {self.url} {state}>"

    # -- lifecycle ------------------------------------------------------------------------
    async def connect(
        self, will: dict[str, Any] | None = None, *, wait: float | None = None
    ) -> bool:
        """Connects, retrying ``connect_retries`` times with back-off. Returns ``False``
        when the broker cannot be reached or refuses the connection (the reason is
        logged on ``message_broker.client``, and what a call made meanwhile raises says
        it too); the client is then stopped, and ``connect()`` may be called again.

        ``wait`` (seconds) keeps trying the first connection for up to that long
        instead, for a program that may start before its broker (each attempt is still
        bounded by ``connect_timeout``). A broker that refuses the connection itself
        (a missing or wrong token) ends the wait at once.

        ``will`` (``{"topic": ..., "payload": ..., "qos": 0, "retain": False}``) is
        this client's last will: the broker publishes it if the connection ends
        without :meth:`disconnect` (a crash, a lost network, a missed heartbeat). One
        the broker would refuse raises :class:`InvalidMessageError` here.
        """
        if self._core.running:
            if self._connecting is not None:
                return await asyncio.shield(self._connecting)
            return self.is_connected
        loop = asyncio.get_running_loop()
        self._refused = None
        self._has_connected = False
        wake = self._core.open(will, wait)
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._connecting = loop.create_future()
        self._closed = loop.create_future()
        self._pump = loop.create_task(self._run(wake), name=f"broker-client-{self.client_id}")
        # A failed connect settles only once the engine has stopped, so that a
        # connect() right after it starts afresh.
        return await asyncio.shield(self._connecting)

    async def disconnect(self) -> None:
        """Sends what is queued, says goodbye to the broker, and stops the client.
        Pending requests fail with :class:`NotConnectedError`."""
        closed, pump = self._closed, self._pump
        if closed is None:
            return
        self._core.close()
        try:
            await asyncio.wait_for(asyncio.shield(closed), 10)
        except asyncio.TimeoutError:
            logger.warning("client %s did not close in time", self.client_id)
        if pump is not None and pump is not asyncio.current_task():
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
        self._pump = self._connecting = self._closed = None

    async def __aenter__(self) -> BrokerClient:
        await self._connect_or_raise()
        return self

    async def _connect_or_raise(self) -> None:
        if not await self.connect():
            if self._refused is not None:
                raise self._refused
            raise NotConnectedError(
                f"cannot connect to the broker at {self.url}: {self._connect_failure}"
            )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()

    # -- publishing -----------------------------------------------------------------------
    async def publish(
        self,
        topic: str,
        payload: Any = None,
        qos: int = 0,
        ttl: float = 0,
        retain: bool = False,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Publishes ``payload`` on ``topic``; returns the message id.

        ``qos=0`` returns as soon as the message is queued, without waiting for the
        broker. ``qos=1`` (at least once) returns once the broker has stored the message
        in every durable queue it matches; it raises :class:`QueueFullError` when a
        queue was full, :class:`StorageError` when the store failed, and
        :class:`ConnectionLostError` when the connection went before the answer (the
        message may or may not be stored: publish it again). A ``qos=1`` message
        published while disconnected is sent, and confirmed, after reconnection.

        ``ttl`` (seconds, 0 for none): once expired, the message is never delivered
        from a queue or the retained store. ``retain=True`` keeps the message as the
        topic's current state for later subscribers; an empty payload (``None`` or
        ``""``) clears it. A bad topic, a payload JSON cannot carry or one over the
        broker's ``max_message_size`` raises :class:`InvalidMessageError` here.
        ``headers`` (a small dict of strings: trace ids, content types) travel beside
        the payload, as ``Message.headers``.
        """
        if qos == 0 and ttl == 0 and retain is False and headers is None:
            # The common case, with as little Python in its way as the language allows.
            engine = self._core.engine
            if engine is None or not self._on_own_loop():
                engine = self._require_loop()
            while True:
                try:
                    if type(payload) not in PLAIN_TYPES:
                        payload = encode(payload)
                    return engine.publish(topic, payload, 0, 0, False, None)[0]
                except BlockingIOError:
                    await self._wait_for_room()
                except ValueError as error:
                    raise InvalidMessageError(str(error)) from None
                except ConnectionError as error:
                    raise self._core.refused(error) from None
        self._require_loop()
        confirmed, done = (self._completion()) if qos == 1 else (None, None)
        while True:
            try:
                message_id = self._core.publish(topic, payload, qos, ttl, retain, headers, done)
                break
            except BlockingIOError:
                await self._wait_for_room()
        if confirmed is not None:
            await confirmed
        return message_id

    def publish_nowait(
        self,
        topic: str,
        payload: Any = None,
        *,
        ttl: float = 0,
        retain: bool = False,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Publishes at most once (``qos=0``) without awaiting anything; returns the
        message id. The message is queued for the connection's writer, as with
        ``await publish()``, but no coroutine is made, so a loop that publishes many
        messages costs less. It raises what ``publish()`` raises, and
        :class:`OutgoingQueueFullError` when the outgoing queue is full (``publish()``
        would wait for room): nothing was queued then.
        """
        engine = self._core.engine
        if engine is None or not self._on_own_loop():
            engine = self._require_loop()
        try:
            if type(payload) not in PLAIN_TYPES:
                payload = encode(payload)
            return engine.publish(topic, payload, 0, ttl, retain, headers)[0]
        except BlockingIOError as full:
            raise OutgoingQueueFullError(str(full)) from None
        except ValueError as error:
            raise InvalidMessageError(str(error)) from None
        except ConnectionError as error:
            raise self._core.refused(error) from None

    async def _wait_for_room(self) -> None:
        room = asyncio.get_running_loop().create_future()
        self._room.append(room)
        await room

    # -- subscriptions --------------------------------------------------------------------
    async def subscribe(
        self,
        patterns: str | Iterable[str],
        callback: Callback | None = None,
        *,
        queue: str | None = None,
        durable: bool = False,
        prefetch: int | None = None,
        max_length: int | None = None,
        max_bytes: int | None = None,
        max_deliveries: int | None = None,
        dead_letter_topic: str | None = None,
        passive: bool = False,
        no_local: bool = False,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        type: Any = None,
    ) -> Subscription:
        """Calls ``callback`` with every message whose topic matches one of ``patterns``
        (``*``/``+``: one segment, ``#``: any number, last only). Returns the
        :class:`Subscription`: the list of the patterns, and the handle that
        unsubscribes this callback alone (``await sub.unsubscribe()``).

        Without ``callback``, the subscription keeps the messages for
        ``await sub.next_msg(timeout=...)`` and ``async for msg in sub``, up to
        ``max_buffered`` of them; past that, new messages are dropped (counted in
        ``sub.dropped``, with a warning logged when dropping starts; one from a queue
        is given back to the queue) so that a slow consumer never costs unbounded
        memory. A message from a queue taken that way is acknowledged when the next
        one is asked for, or by ``msg.ack()`` before; the one in hand when a loop stops
        goes back to the queue with the subscription unless acknowledged.

        ``callback`` may be a function or a coroutine function. It runs on the event
        loop that connected; an exception in it is logged and delivery goes on. A value
        other than ``None`` it returns for a request message is the reply
        (``message.respond(value)`` answers explicitly, ``None`` included, and then the
        return value sends nothing more). When it raises on a request, the requester
        gets :class:`ResponderError` at once with the exception's type and message
        (unless another of this client's callbacks answers the same delivery); the first
        answer wins, a failure included. A retained message of a matching topic is
        delivered first (``message.retained``).

        ``queue="workers"`` joins a queue group: each matching message goes to exactly
        one member, in turn among those with room, while plain subscribers still get
        their own copy. ``durable=True`` makes the queue keep messages while no member
        is connected (up to ``max_length`` messages and ``max_bytes`` bytes, and across
        broker restarts when the broker has a ``data_dir``, where its backlog stays on
        disk); without ``queue`` it is named after this client. Messages
        from a queue are acknowledged when the callback returns without raising and
        given back for redelivery when it raises (see :meth:`Message.ack`), except a
        request whose failure was answered to its requester, which is acknowledged; after
        ``max_deliveries`` deliveries they go to ``dead_letter_topic`` (default
        ``dead_letter.<queue>``). ``prefetch`` bounds the unacknowledged messages this
        client holds (default 100).

        ``passive=True`` receives messages but never counts as a responder: a request
        that only passive subscribers match fails at once with
        :class:`NoRespondersError` (for loggers and monitors). ``no_local=True`` never
        receives this client's own publishes. Both apply to plain subscriptions. A
        passive callback that raises never answers a request with its failure.

        ``type=`` (a dataclass, a pydantic model, or an annotation such as
        ``list[int]``) decodes each payload: the callback (or ``next_msg``) gets a
        :class:`~message_broker.typed.TypedMessage` whose ``payload`` is the instance.
        A payload that does not validate never reaches it: the
        :class:`PayloadValidationError` is logged and given to ``on_error``, a request
        is answered with it, and a message from a queue goes to its dead-letter topic.
        """
        self._require_loop()
        buffer = None
        if callback is None:
            buffer = _AsyncBuffer(max_buffered, repr(pattern_list(patterns)))
        elif not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        options = SubscribeOptions(
            queue,
            durable,
            prefetch,
            max_length,
            max_bytes,
            max_deliveries,
            dead_letter_topic,
            passive,
            no_local,
            type,
        )
        subscription = Subscription(self, buffer)
        deliver = buffer.put if buffer is not None else callback
        await self._subscribe(patterns, deliver, options, subscription)
        return subscription

    async def _subscribe(
        self,
        patterns: str | Iterable[str],
        deliver: Callback | None,
        options: SubscribeOptions,
        handle: SubscriptionHandle,
    ) -> None:
        """Subscribes ``deliver`` as the subscription of ``handle``."""
        self._require_loop()
        subscribed, done = self._completion()
        self._core.subscribe(patterns, deliver, options, done, handle)
        await subscribed

    async def _release(self, handle: SubscriptionHandle) -> None:
        """Ends the subscription of ``handle`` alone."""
        self._require_loop()
        released, done = self._completion()
        self._core.release(handle, done)
        await released

    async def messages(
        self, patterns: str | Iterable[str], **options: Any
    ) -> AsyncIterator[Message]:
        """The messages matching ``patterns``, as they come:

        >>> async for msg in client.messages("jobs.*"):
        ...     print(msg.topic, msg.payload)

        It subscribes (with the keyword ``options`` of :meth:`subscribe`, no callback)
        when the loop asks for its first message, and ends with the client's
        connection. A loop left earlier (``break``, an exception) unsubscribes once
        the iterator is closed: ``async with contextlib.aclosing(client.messages(...))``
        closes it at the end of its block, Python soon after it drops the iterator.
        """
        subscription = await self.subscribe(patterns, None, **options)
        try:
            async for message in subscription:
                yield message
        finally:
            if subscription.active:
                with contextlib.suppress(BrokerError, RuntimeError):
                    await subscription.unsubscribe()

    async def unsubscribe(
        self, patterns: str | Iterable[str] | None = None, *, queue: str | None = None
    ) -> list[str]:
        """Stops the given patterns for every callback; returns those that were subscribed.
        (To stop one callback and keep the others, unsubscribe its :class:`Subscription`.)

        With ``queue``, stops consuming from that queue instead (its unacknowledged
        messages go back to it; a durable queue keeps its bindings and messages) and
        returns ``[queue]`` if this client consumed from it.
        """
        self._require_loop()
        unsubscribed, done = self._completion()
        if queue is not None:
            self._core.unsubscribe_queue(queue, done)
        elif patterns is None:
            raise TypeError("unsubscribe() needs patterns or queue=")
        else:
            self._core.unsubscribe(patterns, done)
        return await unsubscribed

    async def delete_queue(self, name: str) -> int:
        """Deletes a queue and the messages in it; returns how many it held. Raises
        :class:`InvalidMessageError` when there is no such queue."""
        self._require_loop()
        deleted, done = self._completion()
        self._core.delete_queue(name, done)
        return await deleted

    async def purge_queue(self, name: str) -> int:
        """Drops the messages waiting in a queue; returns how many. The queue stays, with
        its bindings and consumers; deliveries not yet acknowledged are kept (and come
        back if they are given back). Raises :class:`InvalidMessageError` when there is
        no such queue."""
        self._require_loop()
        purged, done = self._completion()
        self._core.purge_queue(name, done)
        return await purged

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Calls a method of the protocol by its name, with ``params``, and returns
        the broker's decoded result: for methods this client has no call of its own for
        (the channel and group methods behind :mod:`message_broker.channels_layer`).
        Raises the :class:`BrokerError` the broker answered with (``ChannelFullError``,
        ``InvalidMessageError``, ...), :class:`InvalidMessageError` at once for an
        unknown method or a call over the broker's ``max_message_size`` (its ``code``
        is then ``None``), and :class:`ConnectionLostError` when the connection went
        before the answer. Cancelling the caller leaves the call carried out, its answer
        unread."""
        self._require_loop()
        answer, done = self._completion()
        while True:
            try:
                self._core.call(method, {} if params is None else params, done)
                break
            except BlockingIOError:
                await self._wait_for_room()
        return await answer

    # -- flush and drain -------------------------------------------------------------------
    async def flush(self, timeout: float = 10.0) -> None:
        """Returns once everything published so far has reached the broker: the broker
        has answered a ping written after it. Raises :class:`NotConnectedError` when
        there is no connection now (messages published meanwhile wait for the next
        one), ``TimeoutError`` when the answer takes longer than ``timeout`` seconds."""
        self._require_loop()
        check_timeout(timeout, optional=False)
        try:
            await asyncio.wait_for(self._flush(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"the broker did not answer the flush within {timeout} s") from None

    async def _flush(self) -> None:
        flushed, done = self._completion()
        while True:
            try:
                self._core.flush(done)
                break
            except BlockingIOError:
                await self._wait_for_room()
        await flushed

    async def drain(self, timeout: float = 30.0) -> None:
        """Finishes the work in hand, then disconnects: unsubscribes every subscription
        (their callbacks still get the messages the broker sent before it heard),
        waits for the callbacks still running (coroutines), flushes what was
        published, and disconnects. Messages already received by a subscription without
        a callback can still be taken from it afterwards. When that takes longer than
        ``timeout`` seconds the client disconnects anyway and ``TimeoutError`` is
        raised. Does nothing on a client that is not connected."""
        await self._drain_within(timeout, None)

    async def _drain_within(
        self, timeout: float, callbacks_done: Callable[[], Awaitable[None]] | None
    ) -> None:
        """:meth:`drain`; ``callbacks_done`` waits for callbacks this client does not
        run itself (the synchronous client's thread)."""
        if self._closed is None:
            return
        self._require_loop()
        check_timeout(timeout, optional=False)
        try:
            await asyncio.wait_for(self._drain(callbacks_done), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"the client did not drain within {timeout} s") from None
        finally:
            await self.disconnect()

    async def _drain(self, callbacks_done: Callable[[], Awaitable[None]] | None) -> None:
        released, done = self._completion()
        self._core.release_all(done)
        await released
        if callbacks_done is not None:
            await callbacks_done()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.is_connected:
            await self._flush()

    # -- request / response ---------------------------------------------------------------
    async def request(
        self,
        topic: str,
        payload: Any = None,
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
        *,
        response_type: Any = None,
    ) -> Any:
        """Sends a request (with ``headers``, if given) and returns the first reply's
        payload, decoded into ``response_type`` when given (a dataclass, a pydantic
        model; :class:`PayloadValidationError` when the reply does not validate).

        Raises :class:`NoRespondersError` at once when nobody is subscribed to
        ``topic``, :class:`ResponderError` at once when the responder's callback
        raised, :class:`RequestTimeoutError` (with the broker's message) when no reply
        comes within ``timeout`` seconds, and :class:`InvalidMessageError` at once for
        a payload (with its headers) over the broker's ``max_message_size``.
        ``request("status", {})`` returns the broker's status.
        """
        self._require_loop()
        answer, done = self._completion()
        self._core.request(topic, payload, timeout, done, headers, response_type)
        try:
            # Not wait_for: the broker's own timeout is a TimeoutError too, and must
            # reach the caller as it is, not be mistaken for the broker's silence.
            await asyncio.wait((answer,), timeout=timeout + _REQUEST_GRACE)
        finally:
            if not answer.done():
                answer.cancel()
        if answer.cancelled():
            raise RequestTimeoutError(
                f"no answer from the broker to the request on {topic!r}: its timeout of "
                f"{timeout} s passed {_REQUEST_GRACE} s ago (is the connection stalled?)",
                ERROR_CODES["TIMEOUT"],
            )
        return answer.result()

    def _completion(self) -> tuple[asyncio.Future[Any], Callable[[Any, BrokerError | None], None]]:
        """A future, and the completion of the core that settles it."""
        future = asyncio.get_running_loop().create_future()

        def done(result: Any, error: BrokerError | None) -> None:
            if not future.done():
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)

        return future, done

    def _on_own_loop(self) -> bool:
        """True when called from the loop it connected on, known without asking asyncio
        for the running loop (which costs a system call): that loop runs, on this
        thread, and a thread runs one loop at a time."""
        loop = self._loop
        return threading.get_ident() == self._loop_thread and loop is not None and loop.is_running()

    def _require_loop(self) -> _core.Client:
        """The engine, when connected and called from the event loop it connected on."""
        engine = self._core.require()
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("a BrokerClient is used from the event loop it connected on")
        return engine

    # -- the driver of the client core ----------------------------------------------------
    async def _run(self, wake: socket.socket) -> None:
        core = self._core
        loop = asyncio.get_running_loop()
        try:
            while core.running:
                if not await loop.sock_recv(wake, 4096):
                    break
                core.pump()
        except Exception:
            logger.exception("client %s stopped: its event loop failed", self.client_id)
            raise
        finally:
            wake.close()
            # The loop is going away (or the client closed): stop the connection too.
            core.stop()
            self._fail_waiters(core.not_connected())
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)
            self._settle_connect(False)

    def _settle_connect(self, connected: bool) -> None:
        if self._connecting is not None:
            if not self._connecting.done():
                self._connecting.set_result(connected)
            self._connecting = None

    def _fail_waiters(self, error: BrokerError) -> None:
        room, self._room = self._room, []
        for waiter in room:
            if not waiter.done():
                waiter.set_exception(error)

    # Front of the client core (see message_broker._client_core.Front).
    def _on_connected(self) -> None:
        reconnected, self._has_connected = self._has_connected, True
        self._settle_connect(True)
        if reconnected:
            self._call_hook("on_reconnected", self._when_reconnected)
        else:
            self._call_hook("on_connected", self._when_connected)

    def _on_disconnected(self, reason: str, reconnecting: bool) -> None:
        # Logged by the core; the engine reconnects by itself.
        self._call_hook("on_disconnected", self._when_disconnected, reason)

    def _on_connect_failed(self, reason: str, code: int | None) -> None:
        # connect() returns False once the engine has stopped, which follows.
        self._connect_failure = reason
        if code == ERROR_CODES["UNAUTHORIZED"]:
            self._refused = error_from_code(code, reason)
        elif code is not None:
            self._refused = NotConnectedError(reason, code)
        error = self._refused or NotConnectedError(
            f"cannot connect to the broker at {self.url}: {reason}"
        )
        self._call_hook("on_error", self._when_error, error)

    def _on_closed(self) -> None:
        self._settle_connect(False)
        self._fail_waiters(self._core.not_connected())

    def _on_writable(self) -> None:
        room, self._room = self._room, []
        for waiter in room:
            if not waiter.done():
                waiter.set_result(None)

    def _on_publish_failed(self, message_id: str, error: BrokerError) -> None:
        # Logged by the core: a qos=0 publish has nobody waiting for it.
        self._call_hook("on_error", self._when_error, error)

    def _on_problem(self, report: str) -> None:
        # Logged by the core.
        self._call_hook("on_error", self._when_error, BrokerError(report))

    def _on_invalid_payload(self, error: PayloadValidationError) -> None:
        # Logged by the core.
        self._call_hook("on_error", self._when_error, error)

    def _call_hook(self, name: str, hook: Callable[..., Any] | None, *args: Any) -> None:
        """Calls a connection event callback; what it raises is logged, never more."""
        if hook is None:
            return
        try:
            result = hook(*args)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(self._await_hook(name, result))
                self._hook_tasks.add(task)
                task.add_done_callback(self._hook_tasks.discard)
        except Exception:
            logger.exception("the %s callback of client %s failed", name, self.client_id)

    async def _await_hook(self, name: str, pending: Awaitable[Any]) -> None:
        try:
            await pending
        except Exception:
            logger.exception("the %s callback of client %s failed", name, self.client_id)

    def _defer(self, result: Any, finish: Finish) -> bool:
        if not (asyncio.iscoroutine(result) or isinstance(result, asyncio.Future)):
            return False
        task = asyncio.ensure_future(self._finish(result, finish))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    @staticmethod
    async def _finish(pending: Awaitable[Any], finish: Finish) -> None:
        try:
            result = await pending
        except Exception as error:
            finish(None, error)
            return
        finish(result, None)
