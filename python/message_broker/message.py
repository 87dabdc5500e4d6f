"""``Message``: what a subscriber's callback receives."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Settles a delivery from a queue: (ack, requeue).
Settle = Callable[[bool, bool], None]


@dataclass(slots=True)
class Message:
    """A delivered message.

    ``payload`` is the plain value that was published (dict, list, str, number, bool
    or None). ``id`` is the id ``publish`` returned to the publisher.

    A message from a queue (``queue`` is set) is acknowledged automatically when the
    callback returns without raising, and rejected with requeue when it raises. Call
    :meth:`ack` or :meth:`nack` to settle it yourself, earlier or differently.
    """

    topic: str
    payload: Any
    sender: str
    id: str
    timestamp: float = 0.0
    """Seconds since the Unix epoch when the broker accepted the message."""
    reply_to: str | None = None
    """Where the answer to a request goes; ``None`` for plain messages. A callback
    answers simply by returning a value."""
    ttl: float | None = None
    """Seconds the publisher gave the message to live, when it gave any."""
    qos: int = 0
    """1 when it was published at least once (``qos=1``)."""
    retained: bool = False
    """True when it comes from the retained store: the topic's last known state,
    delivered when the subscription was made."""
    queue: str | None = None
    """The queue it was delivered from, for queue and durable subscriptions."""
    delivery_count: int = 0
    """How many times the queue has delivered it, this time included (0 when not from
    a queue)."""
    _settle: Settle | None = dataclasses.field(default=None, repr=False, compare=False)
    _settled: bool = dataclasses.field(default=False, repr=False, compare=False)

    @property
    def is_request(self) -> bool:
        return self.reply_to is not None

    @property
    def redelivered(self) -> bool:
        """True when a queue delivered it before (to a consumer that did not acknowledge it)."""
        return self.delivery_count > 1

    @property
    def settled(self) -> bool:
        """True once acknowledged or rejected (always for messages not from a queue)."""
        return self._settle is None or self._settled

    def ack(self) -> None:
        """Acknowledges a message from a queue: the queue forgets it. Does nothing for
        other messages, or when already settled."""
        self._finish(True, False)

    def nack(self, requeue: bool = True) -> None:
        """Rejects a message from a queue: ``requeue=True`` gives it back to the queue
        for another delivery (until ``max_deliveries``), ``False`` sends it to the
        queue's dead-letter topic."""
        self._finish(False, requeue)

    def _finish(self, ack: bool, requeue: bool) -> None:
        if self._settle is None or self._settled:
            return
        self._settled = True
        self._settle(ack, requeue)
