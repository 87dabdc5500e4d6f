"""Exceptions raised by the client. All derive from :class:`BrokerError`."""

from __future__ import annotations

from typing import Any

from message_broker import _core

ERROR_CODES: dict[str, int] = dict(_core.error_codes())
"""The wire error codes by name, e.g. ``ERROR_CODES["NOT_CONNECTED"] == -32001``."""


class BrokerError(Exception):
    """An error from the broker or the client. ``code`` is the wire error code when the
    broker answered with one (see ``message_broker.ERROR_CODES``), else ``None``."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class NotConnectedError(BrokerError, ConnectionError):
    """The client is not connected (never connected, disconnected, or the broker is gone
    and the message could not be queued)."""


class ConnectionLostError(NotConnectedError):
    """The connection was lost before the broker answered this call."""


class RequestTimeoutError(BrokerError, TimeoutError):
    """A request got no reply in time (``TIMEOUT``, -32002)."""


class NoRespondersError(BrokerError):
    """A request matched no subscriber, so nobody could answer it (``NO_RESPONDERS``,
    -32003). Raised at once, without waiting for the timeout."""


class InvalidMessageError(BrokerError, ValueError):
    """A topic, pattern or payload the broker would refuse: an invalid or reserved
    topic, a payload JSON cannot carry, or a message over ``max_message_size``."""


class QueueFullError(BrokerError):
    """A ``qos=1`` message was not kept by a full queue (``QUEUE_FULL``, -32011); the
    queue's ``max_length`` bounds it. Other subscribers and queues did receive it."""


class StorageError(BrokerError):
    """The broker could not store a ``qos=1`` message, so it is not confirmed
    (``STORAGE_FAILED``, -32012); or, for a queue that confirms on acknowledgement (a
    bridge's JetStream rule), its consumer did not acknowledge the message in time
    (it stays queued) or gave it up."""


class OutgoingQueueFullError(BrokerError, BlockingIOError):
    """``publish_nowait()`` found the client's outgoing queue full (``max_pending``
    messages not yet written to the broker), so the message was not queued.
    ``await publish()`` waits for room instead."""


class AuthenticationError(NotConnectedError):
    """The broker refused the connection: it requires its token and got none, or a
    wrong one (``UNAUTHORIZED``, -32013). Programs of the broker's own user find the
    token in its runtime file without configuration; others pass ``token=`` or set
    ``MESSAGE_BROKER_TOKEN``."""


class PermissionDeniedError(BrokerError, PermissionError):
    """The broker's permission rules do not let this client publish to that topic or
    subscribe to that pattern (``PERMISSION_DENIED``, -32014); nothing was delivered
    or subscribed."""


class ResponderError(BrokerError):
    """The responder failed to answer a request: its callback raised (``RESPONDER_ERROR``,
    -32015). Raised at once, as soon as the responder's error reply arrives.

    ``error_type`` is the name of the exception the responder raised (``"ValueError"``),
    ``error_message`` its message, and ``responder`` the client id of the responder
    (``None`` when the broker did not say)."""

    def __init__(
        self,
        message: str,
        code: int | None = None,
        *,
        error_type: str = "",
        error_message: str = "",
        responder: str | None = None,
    ) -> None:
        super().__init__(message, code)
        self.error_type = error_type
        self.error_message = error_message
        self.responder = responder


class ChannelFullError(BrokerError):
    """A channel (of the Channels layer methods) holds its capacity, or its bytes, so
    the message sent to it was not kept (``CHANNEL_FULL``, -32016). The Channels layer
    raises it as ``message_broker.channels_layer.ChannelFull``."""


# The exception raised for each error code the client tells apart; any other code
# raises BrokerError itself.
_BY_CODE: dict[int, type[BrokerError]] = {
    ERROR_CODES["TIMEOUT"]: RequestTimeoutError,
    ERROR_CODES["NO_RESPONDERS"]: NoRespondersError,
    ERROR_CODES["INVALID_PARAMS"]: InvalidMessageError,
    ERROR_CODES["QUEUE_FULL"]: QueueFullError,
    ERROR_CODES["STORAGE_FAILED"]: StorageError,
    ERROR_CODES["UNAUTHORIZED"]: AuthenticationError,
    ERROR_CODES["PERMISSION_DENIED"]: PermissionDeniedError,
    ERROR_CODES["CHANNEL_FULL"]: ChannelFullError,
    _core.CONNECTION_LOST: ConnectionLostError,
}


def error_from_code(code: int, message: str, data: Any = None) -> BrokerError:
    """The exception for an error the broker answered with (or a lost connection);
    ``data`` is the error's ``data``, which says how a responder failed."""
    if code == ERROR_CODES["RESPONDER_ERROR"]:
        details = data if isinstance(data, dict) else {}
        responder = details.get("responder")
        return ResponderError(
            message,
            code,
            error_type=str(details.get("type", "")),
            error_message=str(details.get("message", "")),
            responder=responder if isinstance(responder, str) else None,
        )
    return _BY_CODE.get(code, BrokerError)(message, code)


# -- typed messages and actions (message_broker.typed, message_broker.actions) ----------
class PayloadValidationError(BrokerError, ValueError):
    """A payload that does not fit the type it was to be decoded into (``subscribe(...,
    type=)``, ``request(..., response_type=)``, the actions' types). Raised by
    ``request``; for a subscription it is logged on ``message_broker.client`` and given
    to ``on_error`` (the Qt client emits ``error_occurred``), and the callback is not
    called. ``topic`` is where the payload came, ``sender`` who sent it (when known),
    ``expected`` the type and ``payload`` the value as it came."""

    def __init__(
        self, message: str, *, topic: str = "", expected: Any = None, payload: Any = None
    ) -> None:
        super().__init__(message)
        self.topic = topic
        self.sender: str | None = None
        self.expected = expected
        self.payload = payload


class ActionError(BrokerError):
    """An action's goal could not be carried out as asked (see
    ``message_broker.actions``). ``goal_id`` is the goal's id."""

    def __init__(self, message: str, goal_id: str = "") -> None:
        super().__init__(message)
        self.goal_id = goal_id


class GoalRefusedError(ActionError):
    """The action service did not accept the goal: it runs as many goals as it takes
    (``concurrent_goals``), the goal did not validate, or its id is in use. ``reason``
    says which, as the service put it."""

    def __init__(self, message: str, goal_id: str = "", reason: str = "") -> None:
        super().__init__(message, goal_id)
        self.reason = reason


class UnknownGoalError(ActionError, LookupError):
    """The action service does not know this goal id (never sent to it, forgotten since
    among its ``keep_results``, or the service restarted)."""
