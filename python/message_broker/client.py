"""``BrokerClient``: the asyncio client.

The connection lives in the extension (on its own threads): it connects, pings,
reconnects and restores subscriptions, and writes in large batches. This module
only turns its events into callbacks, futures and exceptions on the event loop that
called :meth:`BrokerClient.connect`. The extension wakes that loop once per burst
of events, by writing to a socket the loop awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any

from message_broker import _core, _engine
from message_broker._engine import encode_payload, pattern_list, remote_error
from message_broker.config import DEFAULT_HOST, DEFAULT_PORT
from message_broker.errors import (
    BrokerError,
    ConnectionLostError,
    InvalidMessageError,
    NotConnectedError,
    RequestTimeoutError,
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
    """

    def __init__(
        self,
        client_id: str,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        client_type: str = "python",
        connect_timeout: float = 5.0,
        connect_retries: int = 3,
        reconnect: bool = True,
        reconnect_delay: float = 0.1,
        max_reconnect_delay: float = 5.0,
        heartbeat: bool = True,
        max_pending: int = 100_000,
    ) -> None:
        _engine.check_client_id(client_id)
        if not 0 < port < 65536:
            raise ValueError(f"port must be between 1 and 65535, got {port}")
        self._client_id = client_id
        self._host = host
        self._port = port
        self._options = _engine.engine_options(
            client_type=client_type,
            connect_timeout=connect_timeout,
            connect_retries=connect_retries,
            reconnect=reconnect,
            reconnect_delay=reconnect_delay,
            max_reconnect_delay=max_reconnect_delay,
            heartbeat=heartbeat,
            max_pending=max_pending,
        )
        self._core: _core.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pump: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[bool] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._callbacks: dict[int, Callback] = {}
        self._subscription_ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[str]] = {}
        self._room: list[asyncio.Future[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._undecodable = 0

    # -- properties -----------------------------------------------------------------------
    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def host(self) -> str:
        """The broker's host, as given."""
        return self._host

    @property
    def port(self) -> int:
        """The broker's port, as given."""
        return self._port

    @property
    def is_connected(self) -> bool:
        """True while a connection to the broker is up, this very moment."""
        return self._core is not None and self._core.is_connected

    @property
    def undecodable_messages(self) -> int:
        """Messages not delivered because their payload cannot be turned into a Python
        value (an integer past Python's digit limit). Each is logged; one from a queue
        goes to the queue's dead-letter topic."""
        return self._undecodable

    def __repr__(self) -> str:
        state = "connected" if self.is_connected else "not connected"
        return f"<BrokerClient {self._client_id!r} {self._host}:{self._port} {state}>"

    # -- lifecycle ------------------------------------------------------------------------
    async def connect(self, will: dict[str, Any] | None = None) -> bool:
        """Connects, retrying ``connect_retries`` times with back-off. Returns ``False``
        when the broker cannot be reached or refuses the connection (the reason is
        logged on ``message_broker.client``).

        ``will`` (``{"topic": ..., "payload": ..., "qos": 0, "retain": False}``) is
        this client's last will: the broker publishes it if the connection ends
        without :meth:`disconnect` (a crash, a lost network, a missed heartbeat).
        """
        if self._core is not None:
            if self._connecting is not None:
                return await asyncio.shield(self._connecting)
            return self.is_connected
        loop = asyncio.get_running_loop()
        options = self._options
        if will is not None:
            options = {**options, "will": _engine.encode_will(will)}
        core, reader = _engine.open_engine(self._client_id, self._host, self._port, options)
        self._core, self._loop = core, loop
        self._connecting = loop.create_future()
        self._closed = loop.create_future()
        self._pump = loop.create_task(
            self._run(core, reader), name=f"broker-client-{self._client_id}"
        )
        return await asyncio.shield(self._connecting)

    async def disconnect(self) -> None:
        """Sends what is queued, says goodbye to the broker, and stops the client.
        Pending requests fail with :class:`NotConnectedError`."""
        core, closed, pump = self._core, self._closed, self._pump
        if core is None or closed is None:
            return
        core.close()
        try:
            await asyncio.wait_for(asyncio.shield(closed), 10)
        except asyncio.TimeoutError:
            logger.warning("client %s did not close in time", self._client_id)
        if pump is not None and pump is not asyncio.current_task():
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
        self._reset()

    def _reset(self) -> None:
        self._core = None
        self._pump = self._connecting = self._closed = None
        self._callbacks.clear()

    async def __aenter__(self) -> BrokerClient:
        if not await self.connect():
            raise NotConnectedError(f"cannot connect to the broker at {self._host}:{self._port}")
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
        self, topic: str, payload: Any = None, qos: int = 0, ttl: float = 0, retain: bool = False
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
        """
        core = self._require_core()
        _engine.check_publish_options(qos, ttl, retain)
        while True:
            try:
                if qos == 0 and not retain:
                    return _engine.publish(core, topic, payload, ttl or None)
                message_id, call = _engine.publish_with(
                    core, topic, payload, ttl or None, qos, retain
                )
                break
            except BlockingIOError:
                await self._wait_for_room()
            except ConnectionError as error:
                raise NotConnectedError(str(error)) from None
        if call is not None:
            await self._answer(call)
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
        """
        core = self._require_core()
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        patterns = pattern_list(patterns)
        queue_options = {
            "prefetch": prefetch,
            "max_length": max_length,
            "max_bytes": max_bytes,
            "max_deliveries": max_deliveries,
            "dead_letter_topic": dead_letter_topic,
        }
        if queue is None and not durable:
            if any(value is not None for value in queue_options.values()):
                raise ValueError(
                    "prefetch, max_length, max_bytes, max_deliveries and dead_letter_topic "
                    "apply to queues: give queue= or durable=True"
                )
            return await self._subscribe_patterns(core, patterns, callback)
        name = self._client_id if queue is None else queue
        if not isinstance(name, str):
            raise TypeError(f"queue must be a string, got {name!r}")
        params: dict[str, Any] = {"patterns": patterns, "queue": name, "durable": bool(durable)}
        params.update({key: value for key, value in queue_options.items() if value is not None})
        subscription = next(self._subscription_ids)
        self._callbacks[subscription] = callback
        try:
            params_json = _engine.encode_payload(params)
            call = core.subscribe_queue(subscription, name, patterns, params_json)
        except ValueError as error:
            del self._callbacks[subscription]
            raise InvalidMessageError(str(error)) from None
        if call is not None:
            try:
                await self._answer(call)
            except ConnectionLostError:
                pass  # Restored with the rest on reconnection.
            except BrokerError:
                core.unsubscribe_queue(name)
                self._callbacks.pop(subscription, None)
                raise
        return patterns

    async def _subscribe_patterns(
        self, core: _core.Client, patterns: list[str], callback: Callback
    ) -> list[str]:
        subscription = next(self._subscription_ids)
        self._callbacks[subscription] = callback
        try:
            call = core.subscribe(subscription, patterns)
        except ValueError as error:
            del self._callbacks[subscription]
            raise InvalidMessageError(str(error)) from None
        if call is not None:
            # On a lost connection the pattern is restored with the rest on reconnection.
            with contextlib.suppress(ConnectionLostError):
                await self._answer(call)
        return patterns

    async def unsubscribe(
        self, patterns: str | Iterable[str] | None = None, *, queue: str | None = None
    ) -> list[str]:
        """Stops the given patterns for every callback; returns those that were subscribed.

        With ``queue``, stops consuming from that queue instead (its unacknowledged
        messages go back to it; a durable queue keeps its bindings and messages) and
        returns ``[queue]`` if this client consumed from it.
        """
        core = self._require_core()
        if queue is not None:
            subscription, call = core.unsubscribe_queue(queue)
            if subscription is not None:
                self._callbacks.pop(subscription, None)
            if call is not None:
                with contextlib.suppress(ConnectionLostError):
                    await self._answer(call)
            return [] if subscription is None else [queue]
        if patterns is None:
            raise TypeError("unsubscribe() needs patterns or queue=")
        try:
            removed, emptied, call = core.unsubscribe(pattern_list(patterns))
        except ValueError as error:
            raise InvalidMessageError(str(error)) from None
        for subscription in emptied:
            self._callbacks.pop(subscription, None)
        if call is not None:
            # On a lost connection the broker dropped every subscription anyway.
            with contextlib.suppress(ConnectionLostError):
                await self._answer(call)
        return removed

    async def delete_queue(self, name: str) -> int:
        """Deletes a queue and the messages in it; returns how many it held. Raises
        :class:`InvalidMessageError` when there is no such queue."""
        core = self._require_core()
        try:
            call = core.call("delete_queue", _engine.encode_payload({"name": name}))
        except ConnectionError as error:
            raise NotConnectedError(str(error)) from None
        answer = _core.loads(await self._answer(call))
        return int(answer["messages"])

    # -- request / response ---------------------------------------------------------------
    async def request(self, topic: str, payload: Any = None, timeout: float = 5.0) -> Any:
        """Sends a request and returns the first reply's payload.

        Raises :class:`NoRespondersError` at once when nobody is subscribed to
        ``topic``, :class:`RequestTimeoutError` when no reply comes within ``timeout``
        seconds. ``request("status", {})`` returns the broker's status.
        """
        core = self._require_core()
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        # The payload is encoded once, by the same rules as publish.
        topic_json, payload_json = json.dumps(topic), encode_payload(payload)
        params = f'{{"topic":{topic_json},"payload":{payload_json},"timeout":{float(timeout)!r}}}'
        try:
            call = core.call("request", params)
        except ValueError as error:
            raise InvalidMessageError(str(error)) from None
        except ConnectionError as error:
            raise NotConnectedError(str(error)) from None
        try:
            answer = await asyncio.wait_for(self._answer(call), timeout + _REQUEST_GRACE)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(
                f"no answer from the broker to the request on {topic!r}", _engine.TIMEOUT
            ) from None
        return _core.loads(answer)

    def _answer(self, call: int) -> asyncio.Future[str]:
        assert self._loop is not None
        future = self._loop.create_future()
        self._calls[call] = future
        return future

    def _require_core(self) -> _core.Client:
        if self._core is None:
            raise NotConnectedError("not connected: call connect() first")
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("a BrokerClient is used from the event loop it connected on")
        return self._core

    # -- events from the extension --------------------------------------------------------
    async def _run(self, core: _core.Client, wake: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not await loop.sock_recv(wake, 4096):
                    break
                try:
                    events = core.drain(_engine.DRAIN_LIMIT)
                except Exception:
                    logger.exception("client %s: events could not be taken", self._client_id)
                    continue
                if self._dispatch(events):
                    break
        except Exception:
            logger.exception("client %s stopped: its event loop failed", self._client_id)
            raise
        finally:
            wake.close()
            # The loop is going away (or the client closed): stop the connection too.
            core.close()
            self._fail_pending(NotConnectedError("the client is closed"))
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)

    def _dispatch(self, events: list[tuple[Any, ...]]) -> bool:
        """Handles a batch of events; True once the engine has closed. A failure in
        one event is logged and never costs the others (nor ends the client)."""
        closed = False
        for event in events:
            try:
                closed = self._handle(event) or closed
            except Exception:
                logger.exception("client %s: an event could not be handled", self._client_id)
        return closed

    def _handle(self, event: tuple[Any, ...]) -> bool:
        kind = event[0]
        if kind == _engine.MESSAGE:
            self._deliver(event)
        elif kind == _engine.UNDECODABLE:
            assert self._core is not None
            self._undecodable += 1
            _engine.reject_undecodable(event, self._core)
        elif kind == _engine.RESPONSE:
            future = self._calls.pop(event[1], None)
            if future is not None and not future.done():
                if event[2]:
                    future.set_result(event[3])
                else:
                    future.set_exception(remote_error(*event[3]))
        elif kind == _engine.PUBLISH_FAILED:
            logger.warning(
                "the broker refused message %s: %s (code %s)", event[1], event[3], event[2]
            )
        elif kind == _engine.WRITABLE:
            self._wake_publishers()
        elif kind == _engine.CONNECTED:
            self._settle_connect(True)
            logger.info("client %s connected to %s:%s", self._client_id, self._host, self._port)
        elif kind == _engine.DISCONNECTED:
            logger.info("client %s disconnected: %s", self._client_id, event[1])
        elif kind == _engine.CONNECT_FAILED:
            logger.warning("client %s could not connect: %s", self._client_id, event[1])
            self._settle_connect(False)
        elif kind == _engine.CLOSED:
            self._settle_connect(False)
            return True
        return False

    def _settle_connect(self, connected: bool) -> None:
        if self._connecting is not None:
            if not self._connecting.done():
                self._connecting.set_result(connected)
            self._connecting = None

    def _fail_pending(self, error: BrokerError) -> None:
        calls, self._calls = self._calls, {}
        for future in calls.values():
            if not future.done():
                future.set_exception(error)
        room, self._room = self._room, []
        for waiter in room:
            if not waiter.done():
                waiter.set_exception(error)

    def _wake_publishers(self) -> None:
        room, self._room = self._room, []
        for waiter in room:
            if not waiter.done():
                waiter.set_result(None)

    def _deliver(self, event: tuple[Any, ...]) -> None:
        assert self._core is not None
        subscriptions, message = _engine.message_from_event(event, self._core)
        topic, reply_to = message.topic, message.reply_to
        answered = False
        # A message from a queue has one subscription: it is acknowledged when its
        # callback succeeds and given back when it fails (or has gone meanwhile).
        succeeded = False
        for subscription in subscriptions:
            callback = self._callbacks.get(subscription)
            if callback is None:
                continue
            try:
                result = callback(message)
            except Exception:
                logger.exception("callback %r failed on a message on %r", callback, topic)
                continue
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                task = asyncio.ensure_future(self._finish(callback, result, message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                if message.queue is not None:
                    return  # settled when the coroutine ends
                continue
            succeeded = True
            if result is not None and reply_to is not None and not answered:
                answered = True
                self._reply(message, result)
        if message.queue is not None:
            message._finish(succeeded, True)

    async def _finish(self, callback: Callback, pending: Awaitable[Any], message: Message) -> None:
        try:
            result = await pending
        except Exception:
            logger.exception("callback %r failed on a message on %r", callback, message.topic)
            message.nack(requeue=True)
            return
        if result is not None and message.reply_to is not None and self._core is not None:
            self._reply(message, result)
        message.ack()

    def _reply(self, message: Message, result: Any) -> None:
        assert message.reply_to is not None and self._core is not None
        try:
            _engine.publish(self._core, message.reply_to, result)
        except (BrokerError, ConnectionError, BlockingIOError) as error:
            logger.warning("could not answer the request on %r: %s", message.topic, error)
