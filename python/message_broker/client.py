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
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any

from message_broker import _core
from message_broker._client_core import CLIENT_DEFAULTS, ClientCore, SubscribeOptions
from message_broker.config import DEFAULT_HOST, DEFAULT_PORT
from message_broker.errors import (
    ERROR_CODES,
    BrokerError,
    NotConnectedError,
    RequestTimeoutError,
    error_from_code,
)
from message_broker.message import Message

__all__ = ["BrokerClient", "Callback"]

logger = logging.getLogger("message_broker.client")

Callback = Callable[[Message], Any | Awaitable[Any]]
"""A subscriber: called with each matching :class:`Message`, sync or async. A value
other than ``None`` that it returns (or that its coroutine returns) answers a request."""

# Extra time a request waits beyond its own timeout before giving up on the broker.
_REQUEST_GRACE = 5.0


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

    ``url`` connects elsewhere than ``host:port``: ``"unix:///path/broker-15234.sock"``
    (or the plain path) for the broker's local socket, which only its own user can
    open and which needs no token, or ``"tcp://host:port"``. ``token`` is the broker's
    token; without one the client sends ``MESSAGE_BROKER_TOKEN``, else, for a broker on
    this machine, the token in that broker's runtime file (read at every connection,
    so a restarted broker's new token is picked up).
    """

    def __init__(
        self,
        client_id: str,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
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
    ) -> None:
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
        self._pump: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[bool] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._room: list[asyncio.Future[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        # Why the broker refused the last connect, raised by ``async with``.
        self._refused: BrokerError | None = None
        # The token given, for the connections AHKBridge opens to the same broker.
        self._token = token

    # -- properties -----------------------------------------------------------------------
    @property
    def client_id(self) -> str:
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
    async def connect(self, will: dict[str, Any] | None = None) -> bool:
        """Connects, retrying ``connect_retries`` times with back-off. Returns ``False``
        when the broker cannot be reached or refuses the connection (the reason is
        logged on ``message_broker.client``).

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
        wake = self._core.open(will)
        self._loop = loop
        self._connecting = loop.create_future()
        self._closed = loop.create_future()
        self._pump = loop.create_task(self._run(wake), name=f"broker-client-{self.client_id}")
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
        if not await self.connect():
            if self._refused is not None:
                raise self._refused
            raise NotConnectedError(f"cannot connect to the broker at {self.url}")
        return self

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

    async def _wait_for_room(self) -> None:
        room = asyncio.get_running_loop().create_future()
        self._room.append(room)
        await room

    # -- subscriptions --------------------------------------------------------------------
    async def subscribe(
        self,
        patterns: str | Iterable[str],
        callback: Callback,
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
    ) -> list[str]:
        """Calls ``callback`` with every message whose topic matches one of ``patterns``
        (``*``/``+``: one segment, ``#``: any number, last only). Returns the patterns.

        ``callback`` may be a function or a coroutine function. It runs on the event
        loop that connected; an exception in it is logged and delivery goes on. A value
        it returns for a request message is the reply. A retained message of a matching
        topic is delivered first (``message.retained``).

        ``queue="workers"`` joins a queue group: each matching message goes to exactly
        one member, in turn among those with room, while plain subscribers still get
        their own copy. ``durable=True`` makes the queue keep messages while no member
        is connected (up to ``max_length`` messages and ``max_bytes`` bytes, and across
        broker restarts when the broker has a ``data_dir``, where its backlog stays on
        disk); without ``queue`` it is named after this client. Messages
        from a queue are acknowledged when the callback returns without raising and
        given back for redelivery when it raises (see :meth:`Message.ack`); after
        ``max_deliveries`` deliveries they go to ``dead_letter_topic`` (default
        ``dead_letter.<queue>``). ``prefetch`` bounds the unacknowledged messages this
        client holds (default 100).

        ``passive=True`` receives messages but never counts as a responder: a request
        that only passive subscribers match fails at once with
        :class:`NoRespondersError` (for loggers and monitors). ``no_local=True`` never
        receives this client's own publishes. Both apply to plain subscriptions.
        """
        self._require_loop()
        if not callable(callback):
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
        )
        subscribed, done = self._completion()
        self._core.subscribe(patterns, callback, options, done)
        return await subscribed

    async def unsubscribe(
        self, patterns: str | Iterable[str] | None = None, *, queue: str | None = None
    ) -> list[str]:
        """Stops the given patterns for every callback; returns those that were subscribed.

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

    # -- request / response ---------------------------------------------------------------
    async def request(
        self,
        topic: str,
        payload: Any = None,
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Sends a request (with ``headers``, if given) and returns the first reply's
        payload.

        Raises :class:`NoRespondersError` at once when nobody is subscribed to
        ``topic``, :class:`RequestTimeoutError` when no reply comes within ``timeout``
        seconds. ``request("status", {})`` returns the broker's status.
        """
        self._require_loop()
        answer, done = self._completion()
        self._core.request(topic, payload, timeout, done, headers)
        try:
            return await asyncio.wait_for(answer, timeout + _REQUEST_GRACE)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(
                f"no answer from the broker to the request on {topic!r}", ERROR_CODES["TIMEOUT"]
            ) from None

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

    def _require_loop(self) -> None:
        self._core.require()
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("a BrokerClient is used from the event loop it connected on")

    # -- the driver of the client core ----------------------------------------------------
    async def _run(self, wake: socket.socket) -> None:
        core = self._core
        loop = asyncio.get_running_loop()
        try:
            while core.running:
                if not await loop.sock_recv(wake, 4096):
                    break
                core.handle(core.take_events())
        except Exception:
            logger.exception("client %s stopped: its event loop failed", self.client_id)
            raise
        finally:
            wake.close()
            # The loop is going away (or the client closed): stop the connection too.
            core.stop()
            self._fail_waiters(NotConnectedError("the client is closed"))
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)

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
        self._settle_connect(True)

    def _on_disconnected(self, reason: str, reconnecting: bool) -> None:
        pass  # logged by the core; the engine reconnects by itself

    def _on_connect_failed(self, reason: str, code: int | None) -> None:
        if code == ERROR_CODES["UNAUTHORIZED"]:
            self._refused = error_from_code(code, reason)
        elif code is not None:
            self._refused = NotConnectedError(reason, code)
        self._settle_connect(False)

    def _on_closed(self) -> None:
        self._settle_connect(False)
        self._fail_waiters(NotConnectedError("the client is closed"))

    def _on_writable(self) -> None:
        room, self._room = self._room, []
        for waiter in room:
            if not waiter.done():
                waiter.set_result(None)

    def _on_message(self, message: Message) -> None:
        pass  # messages go to the callbacks only

    def _on_publish_failed(self, message_id: str, error: BrokerError) -> None:
        pass  # logged by the core: a qos=0 publish has nobody waiting for it

    def _on_problem(self, report: str) -> None:
        pass  # logged by the core

    def _defer(self, callback: Callback, result: Any, message: Message) -> bool:
        if not (asyncio.iscoroutine(result) or isinstance(result, asyncio.Future)):
            return False
        task = asyncio.ensure_future(self._finish(callback, result, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _finish(self, callback: Callback, pending: Awaitable[Any], message: Message) -> None:
        try:
            result = await pending
        except Exception:
            self._core.callback_failed(callback, message)
            return
        self._core.callback_done(message, result)
