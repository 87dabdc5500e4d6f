"""message_broker: a local-first message broker with a Rust core.

>>> from message_broker import MessageBroker, BrokerConfig
"""

from __future__ import annotations

import atexit
import importlib
import os
from typing import TYPE_CHECKING, Any

# The extension allocates with mimalloc, which by default commits its arenas up front:
# ~6 MB of resident memory more for an idle broker. Committed as used, it costs no
# measurable time. Read when the extension loads; a value set by the user stands.
os.environ.setdefault("MIMALLOC_ARENA_EAGER_COMMIT", "0")

from message_broker import _core
from message_broker.broker import MessageBroker, stop_running_brokers
from message_broker.config import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_PORT,
    BrokerConfig,
    ConfigError,
)
from message_broker.errors import (
    ERROR_CODES,
    ActionError,
    AuthenticationError,
    BrokerError,
    ChannelFullError,
    ConnectionLostError,
    GoalRefusedError,
    InvalidMessageError,
    NoRespondersError,
    NotConnectedError,
    OutgoingQueueFullError,
    PayloadValidationError,
    PermissionDeniedError,
    QueueFullError,
    RequestTimeoutError,
    ResponderError,
    StorageError,
    UnknownGoalError,
)
from message_broker.message import Message

if TYPE_CHECKING:
    from message_broker.actions import (
        ActionClient,
        ActionService,
        Goal,
        GoalHandle,
        GoalResult,
        GoalStatus,
    )
    from message_broker.client import URL_ENV, BrokerClient, Callback, Subscription, broker_url
    from message_broker.events import Event, EventEmitter
    from message_broker.heartbeat import Heartbeat, NodeHeartbeat, NodeMonitor, NodeState
    from message_broker.typed import TypedMessage

__version__: str = _core.__version__

# The client side (asyncio, and ssl through it) is imported when first named, so that
# the broker command, which needs none of it, starts without it: about 10 MB less for
# an idle broker. `from message_broker import BrokerClient` reads the same either way,
# and so do the submodules (`message_broker.client`) once the package is imported.
_LAZY = {
    **dict.fromkeys(
        ("ActionClient", "ActionService", "Goal", "GoalHandle", "GoalResult", "GoalStatus"),
        "actions",
    ),
    **dict.fromkeys(
        ("URL_ENV", "BrokerClient", "Callback", "Subscription", "broker_url"), "client"
    ),
    **dict.fromkeys(("Event", "EventEmitter"), "events"),
    **dict.fromkeys(("Heartbeat", "NodeHeartbeat", "NodeMonitor", "NodeState"), "heartbeat"),
    "TypedMessage": "typed",
}
_LAZY_MODULES = frozenset(_LAZY.values())

# Type checkers read the names from the imports above; a module `__getattr__` would
# make every misspelt name pass for `Any`.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        if name in _LAZY_MODULES:
            return importlib.import_module(f"message_broker.{name}")
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'message_broker' has no attribute {name!r}")
        value = getattr(importlib.import_module(f"message_broker.{module}"), name)
        globals()[name] = value  # found directly from now on
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_LAZY_MODULES})


# At exit (hooks run last-registered first): stop running brokers gracefully, then the
# extension's threads, all before the interpreter finalizes (see _core.shutdown).
atexit.register(_core.shutdown)
atexit.register(stop_running_brokers)

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_HEARTBEAT_TIMEOUT",
    "DEFAULT_HOST",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_PORT",
    "ERROR_CODES",
    "URL_ENV",
    "ActionClient",
    "ActionError",
    "ActionService",
    "AuthenticationError",
    "BrokerClient",
    "BrokerConfig",
    "BrokerError",
    "Callback",
    "ChannelFullError",
    "ConfigError",
    "ConnectionLostError",
    "Event",
    "EventEmitter",
    "Goal",
    "GoalHandle",
    "GoalRefusedError",
    "GoalResult",
    "GoalStatus",
    "Heartbeat",
    "InvalidMessageError",
    "Message",
    "MessageBroker",
    "NoRespondersError",
    "NodeHeartbeat",
    "NodeMonitor",
    "NodeState",
    "NotConnectedError",
    "OutgoingQueueFullError",
    "PayloadValidationError",
    "PermissionDeniedError",
    "QueueFullError",
    "RequestTimeoutError",
    "ResponderError",
    "StorageError",
    "Subscription",
    "TypedMessage",
    "UnknownGoalError",
    "__version__",
    "broker_url",
]
