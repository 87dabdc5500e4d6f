"""``SyncBrokerClient``: the broker for plain scripts and threads, without asyncio.

>>> from message_broker.sync import SyncBrokerClient
>>> with SyncBrokerClient("my_script") as client:
...     client.publish("jobs.activated", {"job_id": "123"})
...     print(client.request("math.double", 21))

It offers the methods of :class:`~message_broker.BrokerClient` without ``await``, and
any number of threads may call them at once. It runs a ``BrokerClient`` on an event
loop of its own, on a thread of its own (``message-broker-<client_id>``); each call is
carried out there and waited for. Subscription callbacks and the connection event
callbacks run one at a time, in the order their messages and events came, on a
second thread of the client (``message-broker-<client_id>-callbacks``): a callback
may call any method of the client, ``request`` included, without blocking the
connection (but a request that only another callback of the same client answers
waits for its timeout: both need that thread). A publish with ``qos=0`` is queued
from the calling thread directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from message_broker._client_core import (
    CLIENT_DEFAULTS,
    DEFAULT_MAX_BUFFERED,
    HOST_NOT_GIVEN,
    PORT_NOT_GIVEN,
    MessageBuffer,
    SubscribeOptions,
    SubscriptionHandle,
    pattern_list,
)
from message_broker.client import BrokerClient, check_timeout
from message_broker.errors import BrokerError, NotConnectedError
from message_broker.message import Message

__all__ = ["SyncBrokerClient", "SyncSubscription"]

logger = logging.getLogger("message_broker.client")

T = TypeVar("T")

SyncCallback = Callable[[Message], Any]
"""A subscriber of the synchronous client: a plain function, called with each matching
message on the client's callback thread. A value other than ``None`` it returns
answers a request."""

# What the callback thread is given: a function, its arguments, and where its outcome
# goes (None: nobody waits for it; an exception is logged).
_Job = tuple[
    Callable[..., Any], tuple[Any, ...], Callable[[Any, BaseException | None], None] | None
]


class _CallbackThread:
    """Runs the user's callbacks, one at a time, in the order they were handed over."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def is_current(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        outcome: Callable[[Any, BaseException | None], None] | None = None,
    ) -> None:
        self._jobs.put((function, args, outcome))

    def stop(self) -> None:
        """Runs what was handed over already, then ends (joined unless it is the caller)."""
        self._jobs.put(None)
        if not self.is_current:
            self._thread.join()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            function, args, outcome = job
            try:
                result = function(*args)
            except Exception as error:
                if outcome is None:
                    logger.exception("callback %r of a synchronous client failed", function)
                else:
                    outcome(None, error)
                continue
            if outcome is not None:
                outcome(result, None)


class _LoopThread:
    """An event loop running on a thread of its own, for the client's ``BrokerClient``."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs ``coroutine`` on the loop and waits for its outcome."""
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("the synchronous client cannot be waited for on its own loop")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class _ThreadBuffer(MessageBuffer):
    """A subscription's buffer, filled on the loop thread and taken from any thread."""

    def __init__(self, limit: int, name: str) -> None:
        super().__init__(limit, name)
        self._condition = threading.Condition()

    def put(self, message: Message) -> object:
        with self._condition:
            return super().put(message)

    def end(self) -> None:
        with self._condition:
            super().end()

    def _wake(self) -> None:
        self._condition.notify_all()

    def get(self, timeout: float | None, name: str) -> Message | None:
        """The next message; ``None`` once the subscription has ended and every message
        is taken. Raises ``TimeoutError`` when none comes within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while True:
                message = self.take()
                if message is not None or self.ended:
                    return message
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no message on {name} within {timeout} s")
                self._condition.wait(remaining)


class SyncSubscription(SubscriptionHandle):
    """One subscription of a :class:`SyncBrokerClient`: the list of its patterns (equal
    to the plain list) and its handle, as :class:`message_broker.Subscription` is for
    the asyncio client.

    >>> sub = client.subscribe("jobs.*")                 # no callback: take the messages
    >>> msg = sub.next_msg(timeout=5)
    >>> for msg in sub.messages():                       # until it is unsubscribed
    ...     print(msg.payload)
    >>> sub.unsubscribe()                                # this subscription only

    (``for pattern in sub`` goes through the patterns: it is a list.) Not made
    directly.
    """

    def __init__(self, client: SyncBrokerClient, buffer: _ThreadBuffer | None) -> None:
        super().__init__(buffer)
        self._client = client
        self._messages = buffer

    def unsubscribe(self) -> None:
        """Ends this subscription alone; see ``Subscription.unsubscribe``."""
        if self._active:
            self._client._run(lambda client: client._release(self))

    def next_msg(self, timeout: float | None = None) -> Message:
        """The next message of a subscription made without a callback, waiting up to
        ``timeout`` seconds (``None``: as long as it takes). Raises ``TimeoutError``
        when none came in time, and :class:`NotConnectedError` once the subscription
        has ended and every message it received has been taken. Several threads may
        wait at once: each message goes to one of them."""
        check_timeout(timeout, optional=True)
        message = self._buffer_of_messages().get(timeout, repr(list(self)))
        if message is None:
            raise NotConnectedError(f"the subscription to {list(self)!r} has ended")
        return message

    def messages(self) -> Iterator[Message]:
        """Its messages as they come, until it has ended (unsubscribed, or the client
        disconnected) and every message it received has been taken."""
        buffer = self._buffer_of_messages()
        name = repr(list(self))
        while (message := buffer.get(None, name)) is not None:
            yield message

    def _buffer_of_messages(self) -> _ThreadBuffer:
        if self._messages is None:
            raise TypeError(
                "this subscription has a callback: its messages go there, not to next_msg()"
            )
        return self._messages


class SyncBrokerClient:
    """A connection to a message broker for code without asyncio: plain scripts,
    threads, other frameworks' callbacks.

    >>> client = SyncBrokerClient("my_script", port=15234)
    >>> client.connect()
    >>> client.subscribe("jobs.*", lambda msg: print(msg.payload))
    >>> client.publish("jobs.activated", {"job_id": "123"})
    >>> client.disconnect()

    It takes the arguments of :class:`~message_broker.BrokerClient` (where it
    connects, the token, reconnection, the connection event callbacks) and offers its
    methods without ``await``, from any number of threads at once. Callbacks (plain
    functions; coroutine functions are refused) run on the client's callback thread,
    one at a time (see :mod:`message_broker.sync`). Disconnect it, or use it as a
    context manager: its two threads end with the connection.
    """

    def __init__(
        self,
        client_id: str,
        host: str = HOST_NOT_GIVEN,
        port: int = PORT_NOT_GIVEN,
        *,
        url: str | None = None,
        token: str | None = None,
        client_type: str = "python-sync",
        connect_timeout: float = CLIENT_DEFAULTS["connect_timeout"],
        connect_retries: int = CLIENT_DEFAULTS["connect_retries"],
        reconnect: bool = CLIENT_DEFAULTS["reconnect"],
        reconnect_delay: float = CLIENT_DEFAULTS["reconnect_delay"],
        max_reconnect_delay: float = CLIENT_DEFAULTS["max_reconnect_delay"],
        heartbeat: bool = CLIENT_DEFAULTS["heartbeat"],
        max_pending: int = CLIENT_DEFAULTS["max_pending"],
        on_connected: Callable[[], Any] | None = None,
        on_disconnected: Callable[[str], Any] | None = None,
        on_reconnected: Callable[[], Any] | None = None,
        on_error: Callable[[BrokerError], Any] | None = None,
    ) -> None:
        hooks = {
            "on_connected": on_connected,
            "on_disconnected": on_disconnected,
            "on_reconnected": on_reconnected,
            "on_error": on_error,
        }
        for name, hook in hooks.items():
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be callable, got {hook!r}")
        self._client = BrokerClient(
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
            **{name: self._on_callback_thread(hook) for name, hook in hooks.items()},
        )
        # Held while connecting or disconnecting: one thread at a time starts or ends
        # the client's threads.
        self._lifecycle = threading.Lock()
        self._loop: _LoopThread | None = None
        self._callbacks: _CallbackThread | None = None
        # Where connection events go: the callback thread of the last connect(), kept
        # while disconnecting (which detaches the threads first) for its last events.
        self._event_thread: _CallbackThread | None = None

    # -- properties -----------------------------------------------------------------------
    @property
    def client_id(self) -> str:
        """The id this client connects with."""
        return self._client.client_id

    @property
    def host(self) -> str:
        """The broker's host (the socket path of a ``unix://`` client)."""
        return self._client.host

    @property
    def port(self) -> int:
        """The broker's port (0 for a ``unix://`` client)."""
        return self._client.port

    @property
    def url(self) -> str:
        """Where the client connects: ``tcp://host:port`` or ``unix:///path``."""
        return self._client.url

    @property
    def is_connected(self) -> bool:
        """True while a connection to the broker is up, this very moment."""
        return self._client.is_connected

    @property
    def undecodable_messages(self) -> int:
        """See ``BrokerClient.undecodable_messages``."""
        return self._client.undecodable_messages

    def __repr__(self) -> str:
        state = "connected" if self.is_connected else "not connected"
        return f"<SyncBrokerClient {self.client_id!r} {self.url} {state}>"

    # -- lifecycle ------------------------------------------------------------------------
    def connect(self, will: dict[str, Any] | None = None, *, wait: float | None = None) -> bool:
        """Connects (see ``BrokerClient.connect``; ``wait`` keeps retrying the first
        connection for that many seconds): ``False`` when the broker cannot be reached
        or refuses the connection, and then the client's threads have ended."""
        return self._start(lambda client: client.connect(will, wait=wait))

    def _start(self, connecting: Callable[[BrokerClient], Coroutine[Any, Any, Any]]) -> bool:
        with self._lifecycle:
            if self._loop is None:
                name = f"message-broker-{self.client_id}"
                self._callbacks = self._event_thread = _CallbackThread(f"{name}-callbacks")
                self._loop = _LoopThread(name)
            try:
                if self._loop.run(connecting(self._client)) is not False:
                    return True
                failure = None
            except BaseException as error:
                failure = error
            threads = self._detach()
        # Outside the lock: a callback that connects again must not wait for this.
        self._end(*threads)
        if failure is not None:
            raise failure
        return False

    def disconnect(self) -> None:
        """Sends what is queued, says goodbye to the broker, and stops the client and
        its threads (callbacks already handed to the callback thread still run; what
        they ask of the client then raises :class:`NotConnectedError`). Waiting calls
        fail with :class:`NotConnectedError`."""
        with self._lifecycle:
            loop, callbacks = self._detach()
        if loop is None:
            return
        try:
            loop.run(self._client.disconnect())
        finally:
            self._end(loop, callbacks)

    def _detach(self) -> tuple[_LoopThread | None, _CallbackThread | None]:
        """Takes the client's threads away, for :meth:`_end` (called under the lock)."""
        threads = self._loop, self._callbacks
        self._loop = self._callbacks = None
        return threads

    @staticmethod
    def _end(loop: _LoopThread | None, callbacks: _CallbackThread | None) -> None:
        if loop is not None:
            loop.stop()
        if callbacks is not None:
            callbacks.stop()

    def __enter__(self) -> SyncBrokerClient:
        """Connects, raising :class:`NotConnectedError` (or ``AuthenticationError``)
        when it cannot."""
        self._start(lambda client: client._connect_or_raise())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()

    # -- publishing -----------------------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: Any = None,
        qos: int = 0,
        ttl: float = 0,
        retain: bool = False,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Publishes; returns the message id (see ``BrokerClient.publish``). With
        ``qos=0`` it returns once the message is queued (waiting only while the
        outgoing queue is full); with ``qos=1`` once the broker has stored it."""
        if qos == 0 and self._loop is not None:
            try:
                # The engine is thread-safe, and a qos=0 publish touches nothing else.
                return self._client._core.publish(topic, payload, qos, ttl, retain, headers)
            except BlockingIOError:
                pass  # the loop waits for room
        return self._run(lambda client: client.publish(topic, payload, qos, ttl, retain, headers))

    # -- subscriptions --------------------------------------------------------------------
    def subscribe(
        self,
        patterns: str | Iterable[str],
        callback: SyncCallback | None = None,
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
    ) -> SyncSubscription:
        """Subscribes, as ``BrokerClient.subscribe`` does; returns the
        :class:`SyncSubscription`. ``callback`` runs on the client's callback thread; a
        message from a queue is acknowledged when it returns without raising. Without
        ``callback`` the messages wait in the subscription (up to ``max_buffered``) for
        ``sub.next_msg()`` and ``sub.messages()``. ``type=`` decodes the payloads, as
        ``BrokerClient.subscribe`` does."""
        buffer = None
        deliver: Callable[[Message], Any]
        if callback is None:
            buffer = _ThreadBuffer(max_buffered, repr(pattern_list(patterns)))
            deliver = buffer.put
        elif not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        elif inspect.iscoroutinefunction(callback):
            raise TypeError(
                f"the synchronous client calls plain functions, not coroutine functions such"
                f" as {callback!r}: use message_broker.BrokerClient for those"
            )
        else:
            deliver = self._on_callback_thread_with(callback)
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
        subscription = SyncSubscription(self, buffer)
        self._run(lambda client: client._subscribe(patterns, deliver, options, subscription))
        return subscription

    def messages(self, patterns: str | Iterable[str], **options: Any) -> Iterator[Message]:
        """The messages matching ``patterns``, as they come (a plain iterator):

        >>> for msg in client.messages("jobs.*"):
        ...     print(msg.topic, msg.payload)

        It subscribes (with the keyword ``options`` of :meth:`subscribe`) when the loop
        starts and unsubscribes when the iterator is closed or dropped, as a ``for``
        loop left by ``break`` or an exception does; it ends by itself when the client
        disconnects."""
        subscription = self.subscribe(patterns, None, **options)
        try:
            yield from subscription.messages()
        finally:
            if subscription.active:
                with contextlib.suppress(BrokerError, RuntimeError):
                    subscription.unsubscribe()

    def unsubscribe(
        self, patterns: str | Iterable[str] | None = None, *, queue: str | None = None
    ) -> list[str]:
        """Stops ``patterns`` for every callback, or stops consuming from ``queue``; see
        ``BrokerClient.unsubscribe``."""
        return self._run(lambda client: client.unsubscribe(patterns, queue=queue))

    def delete_queue(self, name: str) -> int:
        """Deletes a queue and its messages; returns how many it held."""
        return self._run(lambda client: client.delete_queue(name))

    # -- request / response, flush and drain ----------------------------------------------
    def request(
        self,
        topic: str,
        payload: Any = None,
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
        *,
        response_type: Any = None,
    ) -> Any:
        """Sends a request and returns the first reply's payload (decoded into
        ``response_type`` when given); see ``BrokerClient.request``. From a callback
        too: the answer comes in while the callback thread waits."""
        return self._run(
            lambda client: client.request(
                topic, payload, timeout, headers, response_type=response_type
            )
        )

    def flush(self, timeout: float = 10.0) -> None:
        """Returns once everything published so far has reached the broker; see
        ``BrokerClient.flush``."""
        self._run(lambda client: client.flush(timeout))

    def drain(self, timeout: float = 30.0) -> None:
        """Unsubscribes everything, lets the callbacks finish the messages already
        received, flushes, and disconnects; see ``BrokerClient.drain``. (Called from a
        callback, it does not wait for the callbacks queued behind that one.)"""
        loop, callbacks = self._loop, self._callbacks
        if loop is None or callbacks is None:
            return
        waits_for_callbacks = not callbacks.is_current

        async def callbacks_done() -> None:
            idle = asyncio.get_running_loop().create_future()
            callbacks.submit(lambda: None, (), _settle_on(loop.loop, idle))
            await idle

        try:
            loop.run(
                self._client._drain_within(timeout, callbacks_done if waits_for_callbacks else None)
            )
        finally:
            with self._lifecycle:
                threads = self._detach() if self._loop is loop else (None, None)
            self._end(*threads)

    # -- helpers --------------------------------------------------------------------------
    def _run(self, call: Callable[[BrokerClient], Coroutine[Any, Any, T]]) -> T:
        loop = self._loop
        if loop is None:
            raise NotConnectedError("not connected: call connect() first")
        return loop.run(call(self._client))

    def _on_callback_thread(self, hook: Callable[..., Any] | None) -> Callable[..., Any] | None:
        """A connection event callback, moved to the callback thread."""
        if hook is None:
            return None

        def hand_over(*args: Any) -> None:
            if self._event_thread is not None:
                self._event_thread.submit(hook, args)

        return hand_over

    def _on_callback_thread_with(self, callback: SyncCallback) -> Callable[[Message], Any]:
        """A subscription callback, moved to the callback thread. A message from a queue
        or a request waits for its outcome (to be acknowledged, or answered); the
        others go without a trace on the loop."""
        callbacks = self._callbacks
        loop = self._loop
        if callbacks is None or loop is None:
            raise NotConnectedError("not connected: call connect() first")

        def deliver(message: Message) -> asyncio.Future[Any] | None:
            if message.queue is None and message.reply_to is None:
                callbacks.submit(callback, (message,))
                return None
            outcome = loop.loop.create_future()
            callbacks.submit(callback, (message,), _settle_on(loop.loop, outcome))
            return outcome

        return deliver


def _settle_on(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]
) -> Callable[[Any, BaseException | None], None]:
    """Settles ``future`` on ``loop`` from another thread (not at all once the loop is
    closed: nobody waits any more)."""

    def settle(result: Any, error: BaseException | None) -> None:
        def set_outcome() -> None:
            if future.done():
                return
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(set_outcome)

    return settle
