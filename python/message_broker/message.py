"""``Message``: what a subscriber's callback receives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Message:
    """A delivered message.

    ``payload`` is the plain value that was published (dict, list, str, number, bool
    or None). ``id`` is the id ``publish`` returned to the publisher.
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

    @property
    def is_request(self) -> bool:
        return self.reply_to is not None
