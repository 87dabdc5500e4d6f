"""Events: named happenings published on a topic of their own (commlib's
``EventEmitter``).

>>> emitter = EventEmitter(client)
>>> await emitter.send_event(Event("TurnOnBedroomLights", "bedroom.lights.on"))

A subscriber of the event's ``uri`` receives the event as a JSON object (``name``,
``uri``, ``description``, ``payload``); subscribed with ``type=Event`` it gets the
:class:`Event` back:

>>> await client.subscribe("bedroom.lights.*", on_event, type=Event)
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from message_broker.client import BrokerClient

__all__ = ["Event", "EventEmitter"]


@dataclasses.dataclass
class Event:
    """An event: its ``name``, the topic it is published on (``uri``), an optional
    ``description`` and ``payload`` (a JSON value; a dataclass or pydantic model is
    encoded as a typed payload is)."""

    name: str
    uri: str
    description: str = ""
    payload: Any = dataclasses.field(default_factory=dict)


class EventEmitter:
    """Sends events through ``client``, each on its own ``uri``, over the client's one
    connection. (A Qt or synchronous client publishes an event with
    ``client.publish(event.uri, event)``, which is all this does.)"""

    def __init__(self, client: BrokerClient) -> None:
        self.client = client
        """The client it sends through."""

    async def send_event(
        self, event: Event, *, qos: int = 0, headers: dict[str, str] | None = None
    ) -> str:
        """Publishes ``event`` on ``event.uri``; returns the message id (``qos`` and
        ``headers`` are those of :meth:`BrokerClient.publish`). Raises ``TypeError``
        for anything but an :class:`Event`."""
        if not isinstance(event, Event):
            raise TypeError(f"send_event takes an Event, got {event!r}")
        return await self.client.publish(event.uri, event, qos=qos, headers=headers)
