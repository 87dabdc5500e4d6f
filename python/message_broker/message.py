"""``Message``: what a subscriber's callback receives.

The class lives in the extension, which builds each message as it hands the batch of
deliveries over (no Python code runs per message for that). It has the attributes
and methods documented in ``_core.pyi``: ``topic``, ``payload``, ``sender``, ``id``,
``timestamp``, ``reply_to``, ``ttl``, ``qos``, ``retained``, ``queue``,
``delivery_count``, ``headers``, ``is_request``, ``redelivered``, ``settled``, ``ack()``,
``nack(requeue=True)``, ``respond(value)`` and ``responded`` (for requests), and
compares equal to a message with the same attributes.
"""

from __future__ import annotations

from message_broker._core import Message

__all__ = ["Message"]
