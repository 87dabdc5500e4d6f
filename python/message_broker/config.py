"""Broker configuration: ``BrokerConfig``, its defaults and config files."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from message_broker import _core

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - depends on the interpreter
    import tomli as tomllib

# Every default is the broker's own, read from the extension.
_DEFAULTS = _core.BROKER_DEFAULTS
DEFAULT_HOST: str = _DEFAULTS["host"]
DEFAULT_PORT: int = _DEFAULTS["port"]
DEFAULT_HEARTBEAT_INTERVAL: float = _DEFAULTS["heartbeat_interval"]
DEFAULT_HEARTBEAT_TIMEOUT: float = _DEFAULTS["heartbeat_timeout"]
DEFAULT_MAX_MESSAGE_SIZE: int = _DEFAULTS["max_message_size"]


# The accepted Python types for each annotation used below.
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "float": (int, float),
    "bool": bool,
    "str | None": (str, type(None)),
    "list[dict[str, Any]]": list,
}


@dataclass
class BrokerConfig:
    """How a :class:`~message_broker.MessageBroker` listens and what it allows.

    Types are checked here (``TypeError``); values when the broker is created, by the
    broker's own rules: a bad one raises ``ValueError`` naming the field. The defaults
    are the broker's.
    """

    host: str = DEFAULT_HOST
    """Interface to listen on; ``localhost`` accepts local clients only."""
    port: int = DEFAULT_PORT
    """TCP port; ``0`` picks a free one (read it back from ``MessageBroker.port``)."""
    max_connections: int = _DEFAULTS["max_connections"]
    """TCP clients served at once; one more is refused with ``TOO_MANY_CONNECTIONS``. The
    local socket (and clients in this process) have as many again of their own, so no
    one on the machine can lock the broker's user out."""
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    """Seconds between the pings clients are asked to send."""
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    """A client that pings is dropped after this many seconds of silence."""
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    """Largest frame accepted, in bytes."""
    max_queue_size: int = _DEFAULTS["max_queue_size"]
    """Messages queued for one client before new ones are dropped for it (and counted)."""
    max_queue_bytes: int = _DEFAULTS["max_queue_bytes"]
    """Bytes queued for one client before new messages are dropped for it (and counted)."""
    log_messages: bool = _DEFAULTS["log_messages"]
    """Log every published message on the ``message_broker.messages`` logger."""
    handshake_timeout: float = _DEFAULTS["handshake_timeout"]
    """Seconds a new connection has to send ``connect``."""
    frame_timeout: float = _DEFAULTS["frame_timeout"]
    """Seconds a frame may take to arrive once it has started."""
    data_dir: str | None = _DEFAULTS["data_dir"]
    """Directory of the store that keeps durable queues and retained messages across
    restarts (created if missing). ``None`` keeps them in memory only."""
    fsync: bool = _DEFAULTS["fsync"]
    """Sync every group commit to disk. Without it a confirmed message survives the
    broker being killed; with it, also a power failure (at a cost in throughput)."""
    queues: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Durable queues that exist from the start: tables with ``name`` and ``patterns``,
    and optionally ``max_length``, ``max_bytes``, ``max_deliveries`` and
    ``dead_letter_topic``."""
    max_memory: int = _DEFAULTS["max_memory"]
    """Bytes that queues kept in memory (queue groups, and durable queues without a
    ``data_dir``) may hold together; past it they refuse new messages (``QueueFullError``
    for ``qos=1``) instead of the broker running out of memory. Durable queues of a
    ``data_dir`` keep their backlog on disk and are bounded by their ``max_bytes``."""

    require_token: bool = _DEFAULTS["require_token"]
    """TCP clients must send the broker's token in ``connect``. Always the case when
    ``host`` is not a loopback address, whatever this says. Programs of the broker's
    user find the token in the runtime file; clients of the local socket need none."""
    runtime_dir: str | None = _DEFAULTS["runtime_dir"]
    """Where the runtime file ``broker-<port>.json`` (token, socket path) and the Unix
    socket go. ``None``: ``MESSAGE_BROKER_RUNTIME_DIR``, else the user's runtime folder
    (``$XDG_RUNTIME_DIR/message-broker`` or ``~/.local/share/message-broker/runtime``)."""
    local_socket: bool = _DEFAULTS["local_socket"]
    """Also listen on a socket only this user can open (a Unix socket beside the
    runtime file; a named pipe on Windows). Its clients need no token."""

    permissions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Which topics each client may publish to and subscribe to: rules like
    ``{"client": "sensor-*", "publish": {"allow": ["sensors.{client}.#"]},
    "subscribe": {"deny": ["secrets.#"]}}``. ``client`` is a glob on client ids; allow
    and deny entries are patterns where ``{client}`` is the client's id. Deny wins; a
    client no rule names may do anything; replies to requests are always allowed."""

    def __post_init__(self) -> None:
        for name in ("data_dir", "runtime_dir"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, os.fspath(value))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            expected = _FIELD_TYPES[str(field.type)]
            # bool is an int in Python; a flag is never a number and vice versa.
            if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
                raise TypeError(
                    f"BrokerConfig.{field.name} must be {field.type}, "
                    f"got {type(value).__name__} {value!r}"
                )
        for name in ("queues", "permissions"):
            for table in getattr(self, name):
                if not isinstance(table, dict):
                    raise TypeError(f"BrokerConfig.{name} must hold tables (dicts), got {table!r}")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> BrokerConfig:
        """Reads a TOML (``.toml``) or JSON (``.json``) file.

        The keys are this class's fields, at the top level or in a ``[broker]`` table
        (tables such as ``[[queues]]`` and ``[[permissions]]`` may follow it). Unknown
        keys raise ``ValueError``.
        """
        path = os.fspath(path)
        with open(path, "rb") as f:
            if path.endswith(".json"):
                data: Any = json.load(f)
            elif path.endswith(".toml"):
                data = tomllib.load(f)
            else:
                raise ValueError(f"{path}: config files end in .toml or .json")
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a table of settings")
        if isinstance(data.get("broker"), dict):
            # Tables written after [broker] (such as [[permissions]]) sit at the top
            # level in TOML: they count as settings too, never silently dropped.
            outside = {key: value for key, value in data.items() if key != "broker"}
            both = sorted(outside.keys() & data["broker"].keys())
            if both:
                raise ValueError(f"{path}: {', '.join(both)} given both in [broker] and outside it")
            data = {**data["broker"], **outside}
        return cls.from_dict(data, source=path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> BrokerConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown setting(s) {', '.join(unknown)}; "
                f"known settings are {', '.join(sorted(known))}"
            )
        return cls(**data)

    def replace(self, **changes: Any) -> BrokerConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
