"""Broker configuration: ``BrokerConfig``, its defaults and config files."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
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


class ConfigError(ValueError):
    """A configuration that cannot be used. The message names where it comes from
    (``path``: the file, or the ``source`` given to :meth:`BrokerConfig.from_dict`)
    and, for a syntax error, the line (``line``)."""

    def __init__(self, message: str, path: str, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


# The accepted Python types for each annotation used below.
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "float": (int, float),
    "bool": bool,
    "str | None": (str, type(None)),
    "int | None": (int, type(None)),
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
    and optionally ``max_length``, ``max_bytes``, ``max_deliveries``,
    ``dead_letter_topic`` and ``confirm_on_ack`` (seconds: a ``qos=1`` publish is
    confirmed only once a consumer acknowledged the message)."""
    max_memory: int = _DEFAULTS["max_memory"]
    """Bytes that queues kept in memory (queue groups, and durable queues without a
    ``data_dir``) may hold together; past it they refuse new messages (``QueueFullError``
    for ``qos=1``) instead of the broker running out of memory. Durable queues of a
    ``data_dir`` keep their backlog on disk and are bounded by their ``max_bytes``. The
    channels of the Django Channels layer have a budget of this size of their own."""

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

    http_port: int | None = _DEFAULTS["http_port"]
    """Serve the monitoring page, the HTTP API (``/varz``, ``/connz``, ``/metrics``,
    long-poll and publish) and WebSocket access on 127.0.0.1 at this port (0 picks a
    free one; read it back as ``MessageBroker.http_port``). ``None`` serves no HTTP.
    Everything but the page itself and ``/healthz`` needs the broker's token."""

    permissions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Which topics each client may publish to and subscribe to: rules like
    ``{"client": "sensor-*", "publish": {"allow": ["sensors.{client}.#"]},
    "subscribe": {"deny": ["secrets.#"]}}``. ``client`` is a glob on client ids; allow
    and deny entries are patterns where ``{client}`` is the client's id. Deny wins; a
    client no rule names may do anything; replies to requests are always allowed."""

    bridges: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Links to NATS or MQTT servers that carry chosen topics and requests between
    machines: tables like ``{"name": "hub", "kind": "nats", "url":
    "nats://hub.lan:4222", "rules": [{"pattern": "orders.#", "direction": "both"}]}``,
    with credentials and TLS files as the server needs them. They start and stop with
    the broker; see docs/scale-out.md."""

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
        for name in ("queues", "permissions", "bridges"):
            for table in getattr(self, name):
                if not isinstance(table, dict):
                    raise TypeError(f"BrokerConfig.{name} must hold tables (dicts), got {table!r}")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> BrokerConfig:
        """Reads a TOML (``.toml``) or JSON (``.json``) file, and checks it.

        The keys are this class's fields, at the top level or in a ``[broker]`` table
        (tables such as ``[[queues]]`` and ``[[permissions]]`` may follow it; a key
        given both in ``[broker]`` and outside it is refused). A file that cannot be
        used raises :class:`ConfigError` naming it, and the line for a syntax error;
        an unknown key is named with the closest known one.
        """
        path = os.fspath(path)
        with open(path, "rb") as f:
            raw = f.read()
        data = _parse(path, raw)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a table of settings", path)
        if isinstance(data.get("broker"), dict):
            # Tables written after [broker] (such as [[permissions]]) sit at the top
            # level in TOML: they count as settings too, never silently dropped.
            outside = {key: value for key, value in data.items() if key != "broker"}
            both = sorted(outside.keys() & data["broker"].keys())
            if both:
                raise ConfigError(
                    f"{path}: {', '.join(both)} given both in [broker] and outside it", path
                )
            data = {**data["broker"], **outside}
        return cls.from_dict(data, source=path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> BrokerConfig:
        """Settings from a table (such as a parsed file), checked as the broker checks
        them: a bad one raises :class:`ConfigError` whose message starts with
        ``source``."""
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            guesses = "".join(_did_you_mean(name, known) for name in unknown)
            raise ConfigError(
                f"{source}: unknown setting(s) {', '.join(unknown)}{guesses}; "
                f"known settings are {', '.join(sorted(known))}",
                source,
            )
        try:
            config = cls(**data)
            # The broker's own checks, made now so that the error can name the file.
            _core.Broker(config)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{source}: {_explained(str(error))}", source) from None
        return config

    def replace(self, **changes: Any) -> BrokerConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


# tomllib (and tomli) end their messages with the place: "(at line 3, column 7)".
_TOML_PLACE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
# serde's words for a misspelt key of a table: "unknown field `x`, expected one of `a`, `b`".
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`, expected ([^(]*)")


def _parse(path: str, raw: bytes) -> Any:
    """The table a file holds, or a :class:`ConfigError` naming the file and line."""
    if not path.endswith((".json", ".toml")):
        raise ConfigError(f"{path}: config files end in .toml or .json", path)
    try:
        text = raw.decode("utf-8-sig" if path.endswith(".json") else "utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 text", path, line) from None
    if path.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            place = f"line {error.lineno}, column {error.colno}"
            raise ConfigError(f"{path}, {place}: {error.msg}", path, error.lineno) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        found = _TOML_PLACE.search(message)
        if found is None:  # "(at end of document)" and the like
            raise ConfigError(f"{path}: {message}", path) from None
        line, column = int(found.group(1)), int(found.group(2))
        what = message[: found.start()]
        raise ConfigError(f"{path}, line {line}, column {column}: {what}", path, line) from None


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _explained(message: str) -> str:
    """The broker's message about a setting, with the closest known key for a misspelt
    one in a table (``[[queues]]``, ``[[permissions]]``)."""
    message = message.removeprefix("invalid configuration: ")
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown is not None:
        close = difflib.get_close_matches(
            unknown.group(1), re.findall(r"`([^`]*)`", unknown.group(2)), n=1
        )
        if close:
            message = message.replace(
                unknown.group(0).rstrip(), f"{unknown.group(0).rstrip()} (did you mean {close[0]}?)"
            )
    return message
