"""A Django Channels layer on the broker: :class:`BrokerChannelLayer`.

In a project's settings::

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "message_broker.channels_layer.BrokerChannelLayer",
            "CONFIG": {"host": "127.0.0.1", "port": 15234},
        },
    }

The broker keeps the channels and groups (the ``channel_*`` and ``group_*`` methods of
the protocol): a message sent to a channel waits there, up to the channel's capacity
and for ``expiry`` seconds, until one receiver takes it, whichever process it is in;
a group is a set of channels kept by the broker, each membership for
``group_expiry`` seconds. Process-specific channels (``new_channel()``'s
``specific.<process>!<id>``) are all received through one call per process, and
handed out to their receivers here.

Messages are dicts of what JSON carries, plus ``bytes`` (and tuples, received as
lists, as with msgpack). On the wire ``bytes`` travel as ``{"$bytes": "<base64>"}``,
and a dict whose only key starts with ``$`` as ``{"$dict": {...}}``, so that every
message reads back as it was sent.

How Channels calls a layer is taken into account. ``receive()`` is cancelled whenever a
consumer's connection ends: what the broker handed over is never lost. The broker keeps
every message it hands to a connection until the layer acknowledges it, which it does
when ``receive()`` returns it; until then it waits here (per channel, up to its
capacity, until it expires) for the next ``receive()`` of that channel, in order, and
when the connection ends first (its event loop closed, the process died, the broker
restarted) the broker puts it back at the front of its channel for the next receiver.
So a message is received at least once: exactly once unless a connection ends between
handing it to a consumer and the acknowledgement reaching the broker. A plain channel
(shared by processes) keeps nothing here that nobody here waits for: it goes back to
the broker for other workers. A channel whose messages here fill its capacity leaves
the next ones on the broker, where ``send()`` raises :class:`ChannelFull` once the
channel is full there too.

``async_to_sync`` runs each call in a new event loop: each event loop has a connection
of its own, closed with its loop, and forgotten once the loop is closed. A layer made
before ``fork()`` (a server that forks its workers) starts afresh in the child, with its
own connections and its own process-specific channels.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import os
import threading
import time
import uuid
import weakref
from typing import Any, ClassVar, NamedTuple

from channels.exceptions import ChannelFull as ChannelsChannelFull
from channels.layers import BaseChannelLayer

from message_broker._client_core import HOST_NOT_GIVEN, PORT_NOT_GIVEN
from message_broker.client import BrokerClient
from message_broker.errors import (
    ChannelFullError,
    InvalidMessageError,
    NotConnectedError,
)

__all__ = ["BrokerChannelLayer", "ChannelFull", "MessageTooLarge"]

logger = logging.getLogger("message_broker.channels_layer")

# How long one receive call waits at the broker before it is asked again, in seconds:
# short enough that a process no longer receiving on its channels soon stops taking
# their messages, long enough to cost nothing while idle.
_RECEIVE_WAIT = 5.0
# Messages one call takes from the channels of this process (each goes to its own
# channel's receivers); one from a plain channel, which other processes share.
_PROCESS_BATCH = 100
# After a lost connection, how long a receive waits before it asks again.
_RETRY_DELAY = 0.5
# How often kept messages are looked over for expiry, in seconds.
_SWEEP_INTERVAL = 10.0
# The most full channels one receive call asks the broker to leave (the broker's own
# limit).
_MAX_EXCLUDE = 1000


class ChannelFull(ChannelsChannelFull, ChannelFullError):
    """The channel holds its capacity (``capacity``, or its ``channel_capacity``): the
    message was not sent. Channels' own ``channels.exceptions.ChannelFull``, and the
    broker's ``CHANNEL_FULL`` (-32016)."""


class MessageTooLarge(InvalidMessageError):
    """The message, encoded, is over the broker's ``max_message_size``: it was not
    sent."""


def _encode(value: Any) -> Any:
    """``value`` as JSON can carry it, ``bytes`` tagged (see the module's docstring)."""
    if isinstance(value, dict):
        encoded = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"message keys must be strings, got {key!r}")
            encoded[key] = _encode(item)
        if len(encoded) == 1 and next(iter(encoded)).startswith("$"):
            return {"$dict": encoded}
        return encoded
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [_encode(item) for item in value]
    return value


def _decode(value: Any) -> Any:
    """What :func:`_encode` was given."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, item),) = value.items()
            if key == "$bytes" and isinstance(item, str):
                return base64.b64decode(item)
            if key == "$dict" and isinstance(item, dict):
                return {k: _decode(v) for k, v in item.items()}
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


class _LoopState:
    """What one event loop has: its connection, the receive calls running on it, by
    the part of the channel name they receive (see ``non_local_name``), and the tags
    of messages received that it could not acknowledge at once (they go with its next
    receive call)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.client: BrokerClient | None = None
        self.connecting: asyncio.Future[BrokerClient] | None = None
        self.pumps: dict[str, asyncio.Task[None]] = {}
        self.waiting: collections.Counter[str] = collections.Counter()
        self.unsent_acks: list[int] = []


class _Handed(NamedTuple):
    """A message for ``channel`` the broker handed to ``client`` (whose connection
    holds it until acknowledged by ``tag``), with when it expires
    (``time.monotonic()``)."""

    channel: str
    expires: float
    message: dict[str, Any]
    owner: _LoopState
    client: BrokerClient
    tag: int

    def held(self) -> bool:
        """Whether the connection that took it still holds it: once that connection
        has ended, the broker has put it back in its channel."""
        return self.owner.client is self.client and self.client._core.running


class _ChannelBuffer:
    """Messages handed over by the broker for one channel, not yet received, oldest
    first; and the receivers waiting."""

    __slots__ = ("messages", "waiters")

    def __init__(self) -> None:
        self.messages: collections.deque[_Handed] = collections.deque()
        self.waiters: list[asyncio.Future[None]] = []

    def take(self, now: float) -> tuple[_Handed | None, list[_Handed]]:
        """The next message to receive, and those that expired before it (to
        acknowledge: they are received by nobody)."""
        expired: list[_Handed] = []
        while self.messages:
            handed = self.messages.popleft()
            if not handed.held():
                continue
            if handed.expires > now:
                return handed, expired
            expired.append(handed)
        return None, expired

    def drop_expired(self, now: float) -> list[_Handed]:
        """Drops expired messages and those the broker has back; returns the expired."""
        expired = [handed for handed in self.messages if handed.expires <= now and handed.held()]
        self.messages = collections.deque(
            handed for handed in self.messages if handed.expires > now and handed.held()
        )
        return expired


def _ignore_answer(_result: Any, _error: Any) -> None:
    """Acknowledgements and give-backs are not waited for: a connection that ends
    before one arrives gives the messages back all the same."""


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _fail(waiter: asyncio.Future[None], error: BaseException) -> None:
    if not waiter.done():
        waiter.set_exception(error)


class BrokerChannelLayer(BaseChannelLayer):
    """A Channels layer whose channels and groups the broker at ``host``:``port``
    keeps (by default ``MESSAGE_BROKER_URL``, else ``localhost:15234``); ``token`` for
    a broker that requires it.

    ``prefix`` is the layer's namespace on the broker (``flush()`` clears it alone).
    ``expiry`` (seconds) is how long a message waits for a receiver, ``group_expiry``
    how long a channel stays in a group once added. ``capacity`` is how many messages a
    channel holds before ``send()`` raises :class:`ChannelFull`, and
    ``channel_capacity`` gives other capacities to some channels:
    ``{"http.request": 200, "websocket.send*": 20}`` (globs, or compiled regexes). A
    channel added to a group keeps the capacity it had when added, for the group's
    messages; ``group_send()`` skips full channels, logs how many at INFO, and never
    raises for them.
    """

    extensions: ClassVar[list[str]] = ["groups", "flush"]

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        prefix: str = "asgi",
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: dict[Any, int] | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__(expiry=expiry, capacity=capacity, channel_capacity=channel_capacity)
        self.channel_capacity = self.compile_capacities(channel_capacity or {})
        self.host = HOST_NOT_GIVEN if host is None else host
        self.port = PORT_NOT_GIVEN if port is None else port
        self.prefix = prefix
        self.group_expiry = group_expiry
        self._token = token
        self._start_process()

    def _start_process(self) -> None:
        """The state of one process: set up anew in a forked child."""
        self._pid = os.getpid()
        self.client_prefix = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._buffers: dict[str, _ChannelBuffer] = {}
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._swept = time.monotonic()

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:
            # Forked: the parent's connections, buffers and channels are not this process's.
            self._start_process()

    def _here(self) -> _LoopState:
        """This event loop's state, in this process; the state of loops closed since
        (``async_to_sync`` closes one per call) goes."""
        self._check_fork()
        loop = asyncio.get_running_loop()
        with self._lock:
            state = self._loops.get(loop)
            if state is None:
                for closed in [other for other in self._loops if other.is_closed()]:
                    # Its client (stopped with its loop) refers to the loop: let both go.
                    self._loops.pop(closed).client = None
                state = self._loops[loop] = _LoopState(loop)
            return state

    def __repr__(self) -> str:
        return f"<BrokerChannelLayer prefix={self.prefix!r} {self.host}:{self.port}>"

    # -- connections ----------------------------------------------------------------------
    async def _client(self, state: _LoopState) -> BrokerClient:
        client = state.client
        if client is not None:
            return client
        if state.connecting is None:
            state.connecting = asyncio.ensure_future(self._connect(state))
        # Shielded: a caller cancelled meanwhile leaves the connection to the others.
        return await asyncio.shield(state.connecting)

    async def _connect(self, state: _LoopState) -> BrokerClient:
        client = BrokerClient(
            f"channels-{os.getpid()}-{uuid.uuid4().hex[:12]}",
            self.host,
            self.port,
            token=self._token,
            client_type="channels",
        )
        try:
            if not await client.connect():
                raise NotConnectedError(
                    f"the Channels layer cannot reach the broker at {client.url}"
                )
        finally:
            state.connecting = None
        state.client = client
        return client

    async def _call(self, method: str, params: dict[str, Any]) -> Any:
        state = self._here()
        _, answer = await self._call_on(state, method, params)
        return answer

    async def _call_on(
        self, state: _LoopState, method: str, params: dict[str, Any]
    ) -> tuple[BrokerClient, Any]:
        """The answer to a call on ``state``'s connection, and the client it came on."""
        client = await self._client(state)
        try:
            return client, await client.call(method, {"prefix": self.prefix, **params})
        except NotConnectedError:
            if state.client is client and not client._core.running:
                # Stopped for good (not reconnecting): the next call connects anew.
                state.client = None
            raise
        except ChannelFullError as error:
            raise ChannelFull(str(error), error.code) from None
        except InvalidMessageError as error:
            if error.code is None:  # refused before sending: too large
                raise MessageTooLarge(str(error)) from None
            raise

    async def close_pools(self) -> None:
        """Closes this event loop's connection to the broker (the next call opens
        another). The name is channels_redis's, whose tests call it."""
        state = self._here()
        client, state.client = state.client, None
        if client is not None:
            await client.disconnect()

    # -- channels -------------------------------------------------------------------------
    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Sends ``message`` to ``channel``; raises :class:`ChannelFull` when the
        channel holds its capacity."""
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        await self._call(
            "channel_send",
            {
                "channel": channel,
                "message": _encode(message),
                "ttl": self.expiry,
                "capacity": self.get_capacity(channel),
            },
        )

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-specific channel name, received only in this process."""
        self._check_fork()
        return f"{prefix}.{self.client_prefix}!{uuid.uuid4().hex}"

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message of ``channel``, waiting for one as long as it takes.
        Cancelled, it loses nothing: what the broker had already handed over is
        received next (here, or by another receiver once this connection ends)."""
        self.require_valid_channel_name(channel)
        self._check_fork()
        key = self.non_local_name(channel)
        if key != channel:
            assert key.endswith(self.client_prefix + "!"), "Wrong client prefix"
        state = self._here()
        try:
            return await self._receive_here(state, channel, key)
        finally:
            if not state.waiting[key] and not key.endswith("!"):
                self._release_plain_channel(state, channel)

    async def _receive_here(self, state: _LoopState, channel: str, key: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        while True:
            now = time.monotonic()
            with self._lock:
                expired = self._sweep(now)
                buffer = self._buffers.setdefault(channel, _ChannelBuffer())
                handed, expired_here = buffer.take(now)
                expired += expired_here
                if handed is None:
                    waiter: asyncio.Future[None] = loop.create_future()
                    buffer.waiters.append(waiter)
                elif not buffer.messages and not buffer.waiters:
                    del self._buffers[channel]
            self._settle(expired, "channel_ack")
            if handed is not None:
                # The consumer has it: the broker may forget it.
                self._settle([handed], "channel_ack")
                return handed.message
            state.waiting[key] += 1
            if key not in state.pumps:
                state.pumps[key] = loop.create_task(self._pump(state, key))
            try:
                await waiter
            finally:
                state.waiting[key] -= 1
                with self._lock:
                    if waiter in buffer.waiters:
                        buffer.waiters.remove(waiter)

    def _release_plain_channel(self, state: _LoopState, channel: str) -> None:
        """Nobody in this event loop waits on the plain ``channel`` any more: its
        receive waiting at the broker ends, and what this loop's connection took of it
        and nobody here waits for goes back to the broker, for other workers."""
        client = state.client
        if channel in state.pumps and client is not None:
            self._send_now(client, "channel_cancel", {"channel": channel})
        with self._lock:
            buffer = self._buffers.get(channel)
            if buffer is None or buffer.waiters:
                return
            mine = [handed for handed in buffer.messages if handed.owner is state]
            buffer.messages = collections.deque(
                handed for handed in buffer.messages if handed.owner is not state
            )
            if not buffer.messages:
                del self._buffers[channel]
        self._settle(mine, "channel_nack")

    async def _pump(self, state: _LoopState, key: str) -> None:
        """Takes messages of the channels received through ``key`` from the broker, as
        long as someone in this event loop waits for one. A task of its own, so that a
        cancelled ``receive()`` never cancels a call the broker may have answered."""
        process = key.endswith("!")
        batch = _PROCESS_BATCH if process else 1
        reported = False
        try:
            while state.waiting[key] > 0:
                params: dict[str, Any] = {"channel": key, "max": batch, "timeout": _RECEIVE_WAIT}
                acks, state.unsent_acks = state.unsent_acks, []
                if acks:
                    params["ack"] = acks
                if process:
                    full = self._full_channels(key)
                    if full:
                        params["exclude"] = full
                try:
                    client, answer = await self._call_on(state, "channel_receive", params)
                except NotConnectedError as error:
                    if not reported:
                        logger.warning(
                            "receiving on %s: %s; trying again until it is back", key, error
                        )
                        reported = True
                    await asyncio.sleep(_RETRY_DELAY)
                    continue
                reported = False
                now = time.monotonic()
                handed = [
                    _Handed(
                        item["channel"],
                        now + item["expires_in"],
                        _decode(item["message"]),
                        state,
                        client,
                        item["tag"],
                    )
                    for item in answer["messages"]
                ]
                if not process and not state.waiting[key]:
                    # Everyone here stopped waiting meanwhile: it is another worker's.
                    self._settle(handed, "channel_nack")
                else:
                    self._keep(handed)
                # The receivers woken take theirs before this asks the broker again.
                await asyncio.sleep(0)
        except Exception as error:
            # The receivers hear of it rather than waiting for ever.
            logger.exception("receiving on %s failed", key)
            self._fail_waiters(key, error)
        finally:
            if state.pumps.get(key) is asyncio.current_task():
                del state.pumps[key]

    def _full_channels(self, key: str) -> list[str]:
        """The channels received through ``key`` whose messages here fill their
        capacity: the broker keeps their next ones."""
        with self._lock:
            return [
                channel
                for channel, buffer in self._buffers.items()
                if channel.startswith(key) and len(buffer.messages) >= self.get_capacity(channel)
            ][:_MAX_EXCLUDE]

    def _keep(self, handed: list[_Handed]) -> None:
        """Keeps messages the broker handed over for the receivers of their channels,
        and wakes them; a channel that holds its capacity here gives the rest back (to
        the front of its channel on the broker)."""
        waiters: list[asyncio.Future[None]] = []
        over: list[_Handed] = []
        with self._lock:
            for each in handed:
                buffer = self._buffers.setdefault(each.channel, _ChannelBuffer())
                if len(buffer.messages) >= self.get_capacity(each.channel):
                    over.append(each)
                    continue
                buffer.messages.append(each)
                waiters.extend(buffer.waiters)
        self._settle(over, "channel_nack")
        self._wake_all(waiters)

    def _settle(self, handed: list[_Handed], method: str) -> None:
        """Acknowledges (``channel_ack``) or gives back (``channel_nack``) messages
        on the connections that took them, at once: from the loop of each (a
        message's connection is its event loop's)."""
        by_owner: dict[int, tuple[_LoopState, BrokerClient, list[int]]] = {}
        for each in handed:
            if each.held():
                by_owner.setdefault(id(each.client), (each.owner, each.client, []))[2].append(
                    each.tag
                )
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for owner, client, tags in by_owner.values():
            if owner.loop is running:
                self._settle_here(owner, client, method, tags)
            elif not owner.loop.is_closed():
                # Closed meanwhile (RuntimeError): its connection went, and the broker
                # has them back.
                with contextlib.suppress(RuntimeError):
                    owner.loop.call_soon_threadsafe(self._settle_here, owner, client, method, tags)

    def _settle_here(
        self, owner: _LoopState, client: BrokerClient, method: str, tags: list[int]
    ) -> None:
        if not self._send_now(client, method, {"tags": tags}) and method == "channel_ack":
            # Not sent now (the connection's outgoing queue is full): with the next
            # receive call.
            owner.unsent_acks.extend(tags)

    def _send_now(self, client: BrokerClient, method: str, params: dict[str, Any]) -> bool:
        """Queues a call on ``client``'s connection before returning (its answer is not
        waited for): the call is on the wire before a connection closed after it."""
        if not client._core.running:
            return False
        try:
            client._core.call(method, {"prefix": self.prefix, **params}, _ignore_answer)
        except (BlockingIOError, NotConnectedError):
            return False
        return True

    def _fail_waiters(self, key: str, error: BaseException) -> None:
        with self._lock:
            waiters = [
                waiter
                for channel, buffer in self._buffers.items()
                if self.non_local_name(channel) == key
                for waiter in buffer.waiters
            ]
        for waiter in waiters:
            loop = waiter.get_loop()
            if not loop.is_closed():
                loop.call_soon_threadsafe(_fail, waiter, error)

    @staticmethod
    def _wake_all(waiters: list[asyncio.Future[None]]) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for waiter in waiters:
            loop = waiter.get_loop()
            if loop is running:
                _wake(waiter)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_wake, waiter)

    def _sweep(self, now: float) -> list[_Handed]:
        """Drops expired messages and unused buffers, now and then (under the lock);
        returns the expired, to acknowledge."""
        if now - self._swept < _SWEEP_INTERVAL:
            return []
        self._swept = now
        expired = []
        for channel in list(self._buffers):
            buffer = self._buffers[channel]
            expired += buffer.drop_expired(now)
            if not buffer.messages and not buffer.waiters:
                del self._buffers[channel]
        return expired

    # -- groups and flush -----------------------------------------------------------------
    async def group_add(self, group: str, channel: str) -> None:
        """Adds ``channel`` to ``group`` for ``group_expiry`` seconds (again, when it is
        a member already)."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._call(
            "group_add",
            {
                "group": group,
                "channel": channel,
                "ttl": self.group_expiry,
                "capacity": self.get_capacity(channel),
            },
        )

    async def group_discard(self, group: str, channel: str) -> None:
        """Removes ``channel`` from ``group``, if it is there."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._call("group_discard", {"group": group, "channel": channel})

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Sends ``message`` to every channel of ``group``; full channels are skipped
        (and counted in the log), never an error."""
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_group_name(group)
        sent = await self._call(
            "group_send", {"group": group, "message": _encode(message), "ttl": self.expiry}
        )
        if sent["full"]:
            logger.info(
                "%s of %s channels over capacity in group %s", sent["full"], sent["members"], group
            )

    async def flush(self) -> None:
        """Drops every channel, message and group of this layer's ``prefix`` on the
        broker, and what this process holds for its receivers."""
        await self._call("channel_flush", {})
        # The broker dropped what it had handed over too: their tags are gone with it.
        with self._lock:
            for buffer in self._buffers.values():
                buffer.messages.clear()
