"""The compiled core of message_broker. Use the wrappers in the package instead:
``message_broker.MessageBroker``, ``message_broker.BrokerConfig`` and
``message_broker.BrokerClient``."""

from typing import Any

__version__: str
DEFAULT_PORT: int

class Broker:
    """The broker server. It runs on the extension's own threads; no asyncio loop is
    needed."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        max_connections: int,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        max_message_size: int,
        max_queue_size: int,
        max_queue_bytes: int,
        log_messages: bool,
        handshake_timeout: float,
        frame_timeout: float,
        data_dir: str | None = None,
        fsync: bool = False,
        queues: list[dict[str, Any]] | None = None,
        max_memory: int = ...,
    ) -> None:
        """Raises ``ValueError`` naming the first invalid setting. The store in
        ``data_dir`` is opened by ``start``, which raises ``OSError`` when it is
        unwritable, damaged or in use by another broker."""

    def start(self) -> int:
        """Binds and starts serving; returns the bound port. Raises ``OSError`` when the
        address cannot be bound and ``RuntimeError`` when already running."""

    def stop(self, reason: str = "broker stopped") -> None:
        """Announces ``reason`` on ``system.broker.shutdown``, flushes and closes every
        connection, and returns when all are closed. Releases the GIL while waiting."""

    @property
    def is_running(self) -> bool: ...
    @property
    def port(self) -> int | None:
        """The bound port while running."""

    @property
    def bound_host(self) -> str | None:
        """The bound address while running."""

    def status_json(self) -> str:
        """The ``status`` document as JSON text. Raises ``RuntimeError`` when stopped."""

def shutdown() -> None:
    """Stops the extension's runtime and logging thread; registered with ``atexit``."""

def set_log_level(level: int) -> None:
    """The lowest ``logging`` level forwarded from the core to Python."""

def dumps(value: Any) -> str:
    """Like ``json.dumps(value, ensure_ascii=False, separators=(",", ":"),
    allow_nan=False)``, with nesting limited to 128 levels."""

def loads(text: str) -> Any:
    """Like ``json.loads(text)``."""

def error_codes() -> list[tuple[str, int]]:
    """The wire error codes as ``(name, code)`` pairs."""

CONNECTION_LOST: int
"""Error code of a call whose connection was lost before the broker answered."""

class Client:
    """The connection engine behind ``message_broker.BrokerClient``. Its threads never
    call into Python: events are queued and announced by writing one byte to the
    socket whose handle was passed in (the loop awaits the other end)."""

    def __init__(
        self,
        client_id: str,
        host: str,
        port: int,
        wake_socket_handle: int,
        *,
        client_type: str,
        version: str,
        connect_timeout: float,
        connect_retries: int,
        reconnect: bool,
        reconnect_delay: float,
        max_reconnect_delay: float,
        heartbeat: bool,
        max_pending: int,
        will: str | None = None,
    ) -> None:
        """Starts connecting in the background. Takes ownership of the socket handle
        (from ``socket.detach()``). ``will`` is the last will as JSON text."""

    @property
    def is_connected(self) -> bool: ...
    @property
    def max_message_size(self) -> int:
        """The broker's limit, learned when connecting."""

    def publish(self, topic: str, payload: Any, ttl: float | None = None) -> str:
        """Queues a message; returns its id. Raises ``ValueError`` for a payload JSON
        cannot carry, a bad topic or an oversized message, ``BlockingIOError`` when
        the outgoing queue is full (wait for the writable event), ``ConnectionError``
        when the message cannot be queued at all."""

    def publish_with(
        self, topic: str, payload: Any, ttl: float | None = None, qos: int = 0, retain: bool = False
    ) -> tuple[str, int | None]:
        """``publish`` with ``qos`` and ``retain``: (message id, call id). With ``qos=1``
        the call's response event is the broker's confirmation."""

    def settle(self, generation: int, tags: list[int], ack: bool, requeue: bool = True) -> int:
        """Acknowledges (``ack``) or rejects deliveries from queues received on
        connection ``generation``; returns how many were sent (0 for an older
        connection, whose deliveries the broker already gave back)."""

    def subscribe_queue(
        self, subscription: int, name: str, patterns: list[str], params: str
    ) -> int | None:
        """Consumes from queue ``name`` with the subscribe ``params`` (JSON text);
        restored on reconnection. Returns the call id, or None when not sent now."""

    def unsubscribe_queue(self, name: str) -> tuple[int | None, int | None]:
        """Stops consuming from a queue: (its subscription or None, call id or None)."""

    def call(self, method: str, params: str) -> int:
        """Sends a call (params as JSON text); returns the call id its response event
        carries. Raises ``ConnectionError`` when not connected."""

    def subscribe(self, subscription: int, patterns: list[str]) -> int | None:
        """Adds patterns to a subscription; returns the call id of the subscribe sent
        to the broker, or None when nothing had to be sent now."""

    def unsubscribe(self, patterns: list[str]) -> tuple[list[str], list[int], int | None]:
        """Removes patterns everywhere: (patterns removed, subscriptions left empty,
        call id or None)."""

    def close(self) -> None:
        """Flushes, says goodbye to the broker, and stops; the last event is ``closed``."""

    def drain(self, limit: int = 1000) -> list[tuple[Any, ...]]:
        """Up to ``limit`` events, oldest first; each tuple starts with its kind. When
        more remain, the wake socket becomes readable again. A message whose payload
        Python cannot hold comes as an ``undecodable`` event (kind 8: topic, payload
        text, sender, id, reason, queue delivery or None) instead of raising, so the
        other events of the batch are never lost."""
