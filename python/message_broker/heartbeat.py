"""Node heartbeats: a program announces itself on a topic every few seconds (as a
commlib ``Node`` does), and a monitor tells which nodes are alive.

A :class:`NodeHeartbeat` publishes a :class:`Heartbeat` on ``nodes.<node>.heartbeat``
at once and then every ``interval`` seconds. A :class:`NodeMonitor` listens to those
and to the broker's own ``system.client.disconnected``: a node whose client leaves
(or whose connection the broker drops) is down at once, not only after its missed
heartbeats.

>>> async with NodeHeartbeat(client, "planner", interval=5):
...     await run_the_planner()
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from message_broker.errors import BrokerError, PayloadValidationError
from message_broker.typed import decode

if TYPE_CHECKING:
    from message_broker.client import BrokerClient, Subscription
    from message_broker.message import Message

__all__ = ["HEARTBEAT_PATTERN", "Heartbeat", "NodeHeartbeat", "NodeMonitor", "NodeState"]

logger = logging.getLogger("message_broker.heartbeat")

HEARTBEAT_PATTERN = "nodes.*.heartbeat"
"""The topics of every node's heartbeats: ``nodes.<node>.heartbeat``."""

# The broker's topic for a client that has left (see the README's System topics).
_CLIENT_LEFT = "system.client.disconnected"


def heartbeat_topic(node: str) -> str:
    """The topic of ``node``'s heartbeats."""
    return f"nodes.{node}.heartbeat"


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    """What a heartbeat says: the ``node``, the ``client_id`` it runs on, ``ts`` (when it
    was sent, in nanoseconds since the epoch, as commlib's ``HeartbeatMessage``), the
    ``interval`` until the next one, and its ``sequence`` number (from 0)."""

    node: str
    client_id: str
    ts: int
    interval: float
    sequence: int


class NodeHeartbeat:
    """Publishes ``node``'s :class:`Heartbeat` through ``client`` at once and every
    ``interval`` seconds, on ``nodes.<node>.heartbeat`` (``node`` is one topic segment,
    the client's id by default), from :meth:`start` until :meth:`stop`."""

    def __init__(
        self, client: BrokerClient, node: str | None = None, interval: float = 10.0
    ) -> None:
        node = client.client_id if node is None else node
        if not isinstance(node, str) or not node or "." in node:
            raise ValueError(f"a node's name is one topic segment (no dots), got {node!r}")
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        self.client = client
        """The client it publishes through."""
        self.node = node
        """The node's name."""
        self.interval = float(interval)
        """Seconds between two heartbeats."""
        self.topic = heartbeat_topic(node)
        """Where the heartbeats go."""
        self._beating: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Publishes the first heartbeat, then one every ``interval`` seconds in the
        background. Does nothing when started already."""
        if self._beating is not None:
            return
        await self._beat(0)
        self._beating = asyncio.get_running_loop().create_task(self._beat_on())

    async def stop(self) -> None:
        """Stops the heartbeats (a monitor marks the node down once they are missed,
        or at once when its client disconnects)."""
        beating, self._beating = self._beating, None
        if beating is not None:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)

    async def __aenter__(self) -> NodeHeartbeat:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _beat_on(self) -> None:
        sequence = 1
        while True:
            await asyncio.sleep(self.interval)
            await self._beat(sequence)
            sequence += 1

    async def _beat(self, sequence: int) -> None:
        heartbeat = Heartbeat(
            self.node, self.client.client_id, time.time_ns(), self.interval, sequence
        )
        try:
            await self.client.publish(self.topic, heartbeat)
        except BrokerError as error:  # not connected past max_pending: the next one may go
            logger.warning("node %s could not send its heartbeat: %s", self.node, error)


@dataclasses.dataclass
class NodeState:
    """What a :class:`NodeMonitor` knows of a node: its last :class:`Heartbeat`, when it
    came (``time.monotonic()``), whether the node is ``alive``, and why not
    (``reason``: the broker's reason for its client's disconnection, or the
    heartbeats it missed)."""

    heartbeat: Heartbeat
    last_seen: float
    alive: bool = True
    reason: str | None = None


class NodeMonitor:
    """Tells which nodes are alive, through ``client``: a node is up from its first
    heartbeat, and down when its client disconnects (``system.client.disconnected``,
    at once) or when ``missed`` of its heartbeats in a row have not come.
    ``on_up(node)`` and ``on_down(node, reason)`` are called on the event loop.

    Its subscription is passive: it never counts as a responder.
    """

    def __init__(
        self,
        client: BrokerClient,
        *,
        missed: int = 3,
        on_up: Callable[[str], Any] | None = None,
        on_down: Callable[[str, str], Any] | None = None,
    ) -> None:
        if isinstance(missed, bool) or not isinstance(missed, int) or missed < 1:
            raise ValueError(f"missed must be a whole number of 1 or more, got {missed!r}")
        self.client = client
        """The client it listens through."""
        self.missed = missed
        """Heartbeats in a row a node may miss before it is down."""
        self._on_up = on_up
        self._on_down = on_down
        self._nodes: dict[str, NodeState] = {}
        self._subscription: Subscription | None = None
        self._watching: asyncio.Task[None] | None = None

    @property
    def nodes(self) -> dict[str, NodeState]:
        """Every node heard of since :meth:`start`, alive or not, by name."""
        return dict(self._nodes)

    @property
    def alive(self) -> list[str]:
        """The names of the nodes alive now."""
        return [node for node, state in self._nodes.items() if state.alive]

    async def start(self) -> None:
        """Starts listening; returns once the broker holds the subscription."""
        if self._subscription is not None:
            return
        self._subscription = await self.client.subscribe(
            [HEARTBEAT_PATTERN, _CLIENT_LEFT], self._on_message, passive=True
        )
        self._watching = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        """Stops listening."""
        subscription, self._subscription = self._subscription, None
        watching, self._watching = self._watching, None
        if watching is not None:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
        if subscription is not None:
            with contextlib.suppress(BrokerError):
                await subscription.unsubscribe()

    async def __aenter__(self) -> NodeMonitor:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _on_message(self, message: Message) -> None:
        if message.topic == _CLIENT_LEFT:
            if message.sender != "broker" or not isinstance(message.payload, dict):
                return
            client_id = message.payload.get("client_id")
            reason = str(message.payload.get("reason", "disconnected"))
            for node, known in self._nodes.items():
                if known.alive and known.heartbeat.client_id == client_id:
                    self._down(node, known, f"its client {client_id} left: {reason}")
            return
        try:
            heartbeat: Heartbeat = decode(message.payload, Heartbeat, message.topic)
        except PayloadValidationError as error:
            error.sender = message.sender
            self.client._core.report_invalid(error)
            return
        state = self._nodes.get(heartbeat.node)
        if state is None:
            self._nodes[heartbeat.node] = NodeState(heartbeat, time.monotonic())
            self._call("on_up", self._on_up, heartbeat.node)
            return
        state.heartbeat, state.last_seen = heartbeat, time.monotonic()
        if not state.alive:
            state.alive, state.reason = True, None
            self._call("on_up", self._on_up, heartbeat.node)

    async def _watch(self) -> None:
        while True:
            now = time.monotonic()
            for node, state in self._nodes.items():
                allowed = self.missed * state.heartbeat.interval
                if state.alive and now - state.last_seen > allowed:
                    self._down(node, state, f"no heartbeat for {allowed:g} s")
            intervals = [state.heartbeat.interval for state in self._nodes.values()]
            await asyncio.sleep(min(intervals, default=1.0) / 2)

    def _down(self, node: str, state: NodeState, reason: str) -> None:
        state.alive, state.reason = False, reason
        self._call("on_down", self._on_down, node, reason)

    def _call(self, name: str, callback: Callable[..., Any] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            logger.exception("the %s callback of the node monitor failed", name)
