"""The compiled core of message_broker. Use the wrappers in the package instead:
``message_broker.MessageBroker`` and ``message_broker.BrokerConfig``."""

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
    ) -> None:
        """Raises ``ValueError`` naming the first invalid setting."""

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

def error_codes() -> list[tuple[str, int]]:
    """The wire error codes as ``(name, code)`` pairs."""
