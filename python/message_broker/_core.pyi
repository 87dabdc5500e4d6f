"""The compiled core of message_broker. Use the wrappers in the package instead:
``message_broker.MessageBroker``, ``message_broker.BrokerConfig``,
``message_broker.BrokerClient`` and ``message_broker.qt_client.QtBrokerClient``.

Facts live here and the package reads them: the wire error codes, the defaults of
the broker and of a client, and the rules for client ids and publish options."""

from collections.abc import Callable
from typing import Any, Final, Literal, Protocol, TypedDict, final

__version__: str

# -- facts ------------------------------------------------------------------------------

DEFAULT_HOST: Final[str]
DEFAULT_PORT: Final[int]
CONNECTION_LOST: Final[int]
"""Error code of a call whose connection was lost before the broker answered (not a
wire code: the client makes it)."""

class BrokerDefaults(TypedDict):
    """The default of each setting of ``BrokerConfig`` (``queues`` and ``permissions``
    aside: none)."""

    host: str
    port: int
    max_connections: int
    heartbeat_interval: float
    heartbeat_timeout: float
    max_message_size: int
    max_queue_size: int
    max_queue_bytes: int
    log_messages: bool
    handshake_timeout: float
    frame_timeout: float
    data_dir: str | None
    fsync: bool
    max_memory: int
    require_token: bool
    runtime_dir: str | None
    local_socket: bool
    http_port: int | None
    bridges: list[dict[str, Any]]
    """Always empty: a broker bridges nothing unless told to."""

class ClientDefaults(TypedDict):
    """The defaults of a client's options."""

    connect_timeout: float
    connect_retries: int
    reconnect: bool
    reconnect_delay: float
    max_reconnect_delay: float
    heartbeat: bool
    max_pending: int

BROKER_DEFAULTS: Final[BrokerDefaults]
CLIENT_DEFAULTS: Final[ClientDefaults]

TOKEN_ENV: Final[str]
"""``MESSAGE_BROKER_TOKEN``: the token clients send when given none in code."""
RUNTIME_DIR_ENV: Final[str]
"""``MESSAGE_BROKER_RUNTIME_DIR``: overrides the runtime folder of brokers and clients."""

def error_codes() -> list[tuple[str, int]]:
    """The wire error codes as ``(name, code)`` pairs."""

def find_local_broker(host: str, port: int) -> tuple[str, str] | None:
    """For a loopback ``host``: ``(address, token)`` of the broker of this user on
    ``port``, from its runtime file. Connect to ``address`` (for ``localhost``, the
    loopback address the broker is bound to) and nowhere else with that token. ``None``
    when there is no such broker, or it is bound to another address than ``host``."""

def runtime_dir() -> str | None:
    """The folder brokers write their runtime files to unless configured otherwise:
    ``MESSAGE_BROKER_RUNTIME_DIR``, else the user's runtime folder."""

def validate_client_id(client_id: object) -> None:
    """Raises ``ValueError`` when the broker would refuse ``client_id`` (1 to 256
    characters, no control characters; a broker with permission rules also refuses
    ``* + # .`` there: a client id is one topic segment)."""

def validate_publish_options(qos: object, ttl: object, retain: object) -> None:
    """Raises ``ValueError`` when the broker would refuse these options of a publish:
    ``qos`` 0 or 1, ``ttl`` 0 (none) or a positive number of seconds, ``retain`` a
    bool."""

# -- runtime, logging, JSON -------------------------------------------------------------

def shutdown() -> None:
    """Stops the extension's runtime and logging thread; registered with ``atexit``."""

def set_log_level(level: int) -> None:
    """The lowest ``logging`` level forwarded from the core to Python."""

def dumps(value: Any) -> str:
    """Like ``json.dumps(value, ensure_ascii=False, separators=(",", ":"),
    allow_nan=False)``, with nesting limited to 128 levels."""

def loads(text: str) -> Any:
    """Like ``json.loads(text)``."""

# -- the status document (the `status` method, `Broker.status_json`) ----------------

class ClientStatus(TypedDict):
    client_id: str
    client_type: str | None
    version: str | None
    connected_at: float
    """Seconds since the Unix epoch."""
    subscriptions: list[str]
    queued: int
    """Messages waiting to be written to it."""
    queued_bytes: int
    delivered: int
    dropped: int
    """Messages dropped for it because its queue was full (a slow consumer)."""

class QueueStatus(TypedDict):
    name: str
    durable: bool
    patterns: list[str]
    depth: int
    """Messages waiting for a consumer (on disk included)."""
    in_flight: int
    """Delivered and not acknowledged yet."""
    bytes: int
    in_memory: int
    memory_bytes: int
    consumers: int
    enqueued: int
    delivered: int
    redelivered: int
    acked: int
    dead_lettered: int
    expired: int
    dropped: int
    max_length: int
    max_bytes: int
    max_deliveries: int
    dead_letter_topic: str

class MessageCounters(TypedDict):
    published: int
    delivered: int
    dropped: int
    requests: int
    replies: int
    late_replies: int
    no_responders: int
    timeouts: int
    retained: int
    queued: int
    acked: int
    redelivered: int
    dead_lettered: int
    expired: int
    refused_by_full_queues: int

class PersistenceStatus(TypedDict):
    store: str | None
    """The store's path, or None when everything is kept in memory."""
    fsync: bool

class MemoryStatus(TypedDict):
    queued_bytes: int
    max_memory: int

class ConnectionCounters(TypedDict):
    open: int
    accepted: int
    rejected: int
    protocol_errors: int

class Limits(TypedDict):
    max_connections: int
    max_message_size: int
    max_queue_size: int
    max_queue_bytes: int
    heartbeat_interval: float
    heartbeat_timeout: float

class TransportStatus(TypedDict):
    kind: Literal["tcp", "unix", "pipe"]
    address: str
    """``host:port``, the socket path or the pipe name."""
    token_required: bool

class SecurityStatus(TypedDict):
    require_token: bool
    """Whether TCP clients must send the token."""
    runtime_file: str
    transports: list[TransportStatus]
    permission_rules: int

class BridgeMessageCounters(TypedDict):
    sent: int
    """Carried from this broker to the far side."""
    received: int
    """Carried from the far side to this broker."""
    requests_out: int
    requests_in: int
    no_responders: int
    confirmed: int
    """Acknowledged by JetStream (or the MQTT server at QoS 1)."""
    errors: int

class BridgeSkipped(TypedDict):
    """Messages not carried, by reason."""

    unmappable: int
    reserved: int
    oversize: int
    not_json: int
    looped: int

class BridgeStatus(TypedDict):
    name: str
    kind: Literal["nats", "mqtt"]
    url: str
    """Without the password."""
    state: Literal["connecting", "connected", "disconnected", "stopped"]
    error: str | None
    messages: BridgeMessageCounters
    skipped: BridgeSkipped
    reconnects: int

class Status(TypedDict):
    """The broker's status: what ``MessageBroker.status()`` and
    ``request("status", {})`` return."""

    broker_version: str
    host: str | None
    port: int | None
    uptime: float
    """Seconds since the broker started."""
    client_count: int
    clients: list[ClientStatus]
    """In the order they connected."""
    subscription_count: int
    messages: MessageCounters
    queues: list[QueueStatus]
    bridges: list[BridgeStatus]
    security: SecurityStatus
    persistence: PersistenceStatus
    memory: MemoryStatus
    connections: ConnectionCounters
    limits: Limits

# -- the broker -------------------------------------------------------------------------

@final
class Broker:
    """The broker server. It runs on the extension's own threads; no asyncio loop is
    needed."""

    def __init__(self, config: Any) -> None:
        """Reads ``config`` (a ``message_broker.BrokerConfig``, or any object with its
        attributes) and checks it: raises ``ValueError`` (or ``TypeError``) naming the
        first invalid setting. The store in ``data_dir`` is opened by ``start``, which
        raises ``OSError`` when it is unwritable, damaged or in use by another broker."""

    def start(self) -> int:
        """Binds and starts serving, without the GIL; returns the bound port. Raises
        ``OSError`` when the address cannot be bound and ``RuntimeError`` when already
        running."""

    def stop(self, reason: str = "broker stopped") -> None:
        """Announces ``reason`` on ``system.broker.shutdown``, flushes and closes every
        connection, and returns when all are closed. Releases the GIL while waiting."""

    @property
    def is_running(self) -> bool: ...
    @property
    def port(self) -> int | None:
        """The bound port while running."""

    @property
    def token(self) -> str | None:
        """The token of this start while running."""
    @property
    def runtime_file(self) -> str | None:
        """The runtime file while running."""
    @property
    def local_socket(self) -> str | None:
        """The Unix socket or named pipe while running, when one is open."""
    @property
    def bound_host(self) -> str | None:
        """The bound address while running."""
    @property
    def http_port(self) -> int | None:
        """The HTTP listener's port (on 127.0.0.1) while running, when ``http_port``
        is set."""

    def status_json(self) -> str:
        """The ``status`` document (see ``Status``) as JSON text. Raises
        ``RuntimeError`` when stopped."""

# -- a client ---------------------------------------------------------------------------

def client_url(url: str | None, host: str, port: int) -> str:
    """The URL a client given ``url``, else ``host`` and ``port``, connects to:
    ``tcp://host:port`` or ``unix:///path``. ``url`` is ``tcp://host:port``,
    ``host:port``, ``unix:///path`` or the absolute path of a local socket; raises
    ``ValueError`` saying what was expected."""

@final
class ClientOptions:
    """How a client connects, checked once: raises ``TypeError`` (a value of the wrong
    type: ``port="41234"``, ``host=None``) or ``ValueError`` (one out of range: a port
    past 65535, an empty host, a timeout that is not positive) naming the first option
    that is not valid (``client_id`` by ``validate_client_id``)."""

    def __init__(
        self,
        client_id: str,
        host: str,
        port: int,
        *,
        url: str | None = None,
        token: str | None = None,
        client_type: str,
        connect_timeout: float,
        connect_retries: int,
        reconnect: bool,
        reconnect_delay: float,
        max_reconnect_delay: float,
        heartbeat: bool,
        max_pending: int,
    ) -> None: ...
    @property
    def client_id(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int:
        """The port of a TCP client; 0 for a local one."""
    @property
    def url(self) -> str:
        """``tcp://host:port`` or ``unix:///path``."""

@final
class Client:
    """The connection engine behind both Python clients. Its threads never call into
    Python: events are queued and announced by writing one byte to the socket whose
    handle was passed in (the front awaits the other end)."""

    def __init__(
        self,
        options: ClientOptions,
        wake_socket_handle: int,
        will: dict[str, Any] | None = None,
        wait: float | None = None,
    ) -> None:
        """Starts connecting in the background. Takes ownership of the socket handle
        (from ``socket.detach()``). ``will`` is the last will (``topic``, and optionally
        ``payload``, ``qos``, ``retain``, ``ttl``): ``TypeError`` when not a dict,
        ``ValueError`` when the broker would refuse it. With ``wait`` (seconds) the
        first connection is tried until then instead of ``connect_retries`` times."""

    @property
    def is_connected(self) -> bool: ...
    @property
    def max_message_size(self) -> int:
        """The broker's limit, learned when connecting."""
    @property
    def stop_reason(self) -> str | None:
        """Why the client stopped by itself: its first connection failed, its session
        was taken over, or its connection was lost with ``reconnect`` off. ``None``
        while it runs and after ``close()``."""

    def publish(
        self,
        topic: str,
        payload: Any,
        qos: object,
        ttl: object,
        retain: object,
        headers: dict[str, str] | None,
    ) -> tuple[str, int | None]:
        """Queues a message: (message id, call id). With ``qos=1`` the call's answer is
        the broker's confirmation (else the call id is None). Raises ``ValueError`` for
        options the broker would refuse, a payload JSON cannot carry, a bad topic,
        headers that are not a small dict of strings or an oversized message,
        ``BlockingIOError`` when the outgoing queue is full (wait for ``Writable``),
        ``ConnectionError`` when the message cannot be queued at all."""

    def subscribe_queue(
        self, subscription: int, name: str, patterns: list[str], params: dict[str, Any]
    ) -> int | None:
        """Consumes from queue ``name`` with the ``subscribe`` params; restored on
        reconnection. Returns the call id, or None when not sent now."""

    def unsubscribe_queue(self, name: str) -> tuple[int | None, int | None]:
        """Stops consuming from a queue: (its subscription or None, call id or None)."""

    def call(self, method: str, params: Any) -> int:
        """Sends a call; returns the call id its answer carries. Raises ``ValueError``
        for params JSON cannot carry or a call over the broker's ``max_message_size``
        (which the broker would discard unanswered), ``ConnectionError`` when not
        connected."""

    def subscribe(
        self, subscription: int, patterns: list[str], passive: bool, no_local: bool
    ) -> int | None:
        """Adds patterns to a subscription with its flags (those of its first call);
        returns the call id of the last subscribe sent to the broker, or None when
        nothing had to be sent now. A pattern several subscriptions share is held as
        the most demanding needs: a responder if any is, own messages if any wants
        them; ``no_local`` subscriptions never get this client's own messages."""

    def unsubscribe(self, patterns: list[str]) -> tuple[list[str], list[int], int | None]:
        """Removes patterns everywhere: (patterns removed, subscriptions left empty,
        call id or None)."""

    def release(self, subscription: int) -> tuple[list[str], int | None]:
        """Ends one subscription, plain or from a queue, and no other: (what the broker
        was told to drop, the patterns no other subscription holds or the queue's name;
        call id or None). A pattern still shared is held with the flags the remaining
        subscriptions need."""

    def close(self) -> None:
        """Flushes, says goodbye to the broker, and stops; the last event is ``Closed``."""

    def dispatch(self, core: Dispatcher, limit: int = ...) -> int:
        """Handles up to ``limit`` waiting events (by default a batch of 1,000), oldest
        first, for ``core``; returns how many. Each delivery becomes a :class:`Message`
        handed to the callbacks of the subscriptions it matches, from this one loop;
        every other event goes to ``core.handle``. When more remain, the wake socket
        becomes readable again."""

# -- what dispatch hands over -----------------------------------------------------------

class Dispatcher(Protocol):
    """What :meth:`Client.dispatch` works for: the package's client core.

    For each delivery, ``observer`` (when set) sees the message first; then each
    matching subscription's callback is called with it, in order, unless the
    subscription has left ``callbacks`` (its callback None: it counts as handled
    without one). A callback that returns None has handled the message. A message from
    a queue is then acknowledged when a callback handled it and none failed, and given
    back to the queue (requeued) otherwise.
    """

    callbacks: dict[int, Callable[[Message], Any] | None]
    observer: Callable[[Message], Any] | None

    def returned(
        self, callback: Callable[[Message], Any], message: Message, subscription: int, result: Any
    ) -> bool:
        """A callback returned ``result``, not None. True when the message is settled
        later by whoever holds it: dispatch then leaves it; otherwise the callback has
        handled it."""
    def raised(
        self,
        callback: Callable[[Message], Any],
        message: Message,
        subscription: int,
        error: Exception,
    ) -> bool:
        """A callback raised ``error``. True when the requester of a request should
        hear of it: the first such error goes to :meth:`answer_failure`."""
    def answer_failure(self, message: Message, error: Exception) -> bool:
        """Answers the request ``message`` with ``error``; True when sent (a message
        from a queue is then acknowledged: its requester has its answer)."""
    def handle(self, event: Event) -> None:
        """Handles any event but a delivery."""
    def handling_failed(self, error: Exception) -> None:
        """Handling a delivery failed outside its callbacks (``observer`` raised)."""

@final
class Undecodable:
    """A message whose payload Python cannot hold (an integer past Python's digit
    limit), handed over as text instead, so that the rest of the batch is not lost."""

    @property
    def topic(self) -> str: ...
    @property
    def payload_text(self) -> str:
        """The payload as JSON text, as the broker sent it."""

    @property
    def sender(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def reason(self) -> str:
        """Why Python cannot hold it."""

    @property
    def queue(self) -> str | None: ...
    def reject(self) -> bool:
        """From a queue, rejects it without requeue (to the queue's dead-letter topic)
        and returns True; else returns False."""

@final
class Answer:
    """The broker's answer to a call."""

    @property
    def call(self) -> int: ...
    @property
    def result(self) -> str:
        """The result as JSON text."""

@final
class CallFailed:
    """The broker refused a call, or the connection was lost before it answered
    (``code`` is then ``CONNECTION_LOST``)."""

    @property
    def call(self) -> int: ...
    @property
    def code(self) -> int: ...
    @property
    def message(self) -> str: ...
    @property
    def data(self) -> dict[str, Any] | None:
        """The error's ``data``: its ``name``, and for ``RESPONDER_ERROR`` the
        responder's ``type``, ``message`` and ``responder`` (its client id)."""

@final
class PublishFailed:
    """The broker refused a message published without confirmation."""

    @property
    def message_id(self) -> str: ...
    @property
    def code(self) -> int: ...
    @property
    def message(self) -> str: ...

@final
class Connected:
    """Connected (or reconnected), with every subscription restored."""

@final
class Disconnected:
    """The connection was lost."""

    @property
    def reason(self) -> str: ...
    @property
    def reconnecting(self) -> bool: ...

@final
class ConnectFailed:
    """The first connection could not be made; the client has stopped."""

    @property
    def reason(self) -> str: ...
    @property
    def code(self) -> int | None:
        """The broker's error code when it refused the connect itself."""

@final
class Writable:
    """Room in the outgoing queue again, after a publish found it full."""

@final
class Closed:
    """The client has stopped for good: nothing follows."""

Event = (
    Undecodable
    | Answer
    | CallFailed
    | PublishFailed
    | Connected
    | Disconnected
    | ConnectFailed
    | Writable
    | Closed
)

# -- Message (re-exported as message_broker.Message) ----------------------------------

class Message:
    """A delivered message.

    ``payload`` is the plain value that was published (dict, list, str, number, bool
    or None). ``id`` is the id ``publish`` returned to the publisher. Two messages are
    equal when their attributes are; messages are not hashable.

    A message from a queue (``queue`` is set) is acknowledged automatically when the
    callback returns without raising, and rejected with requeue when it raises. Call
    :meth:`ack` or :meth:`nack` to settle it yourself, earlier or differently.
    """

    topic: str
    payload: Any
    sender: str
    id: str
    timestamp: float
    """Seconds since the Unix epoch when the broker accepted the message."""
    reply_to: str | None
    """Where the answer to a request goes; ``None`` for plain messages. A callback
    answers by returning a value other than ``None``, or with :meth:`respond`."""
    ttl: float | None
    """Seconds the publisher gave the message to live, when it gave any."""
    qos: int
    """1 when it was published at least once (``qos=1``)."""
    retained: bool
    """True when it comes from the retained store: the topic's last known state,
    delivered when the subscription was made."""
    queue: str | None
    """The queue it was delivered from, for queue and durable subscriptions."""
    delivery_count: int
    """How many times the queue has delivered it, this time included (0 when not from
    a queue)."""
    headers: dict[str, str] | None
    """The publisher's headers, as sent; ``None`` when it gave none."""

    def __init__(
        self,
        topic: str,
        payload: Any,
        sender: str,
        id: str,
        timestamp: float = 0.0,
        reply_to: str | None = None,
        ttl: float | None = None,
        qos: int = 0,
        retained: bool = False,
        queue: str | None = None,
        delivery_count: int = 0,
        headers: dict[str, str] | None = None,
    ) -> None: ...
    @property
    def is_request(self) -> bool: ...
    @property
    def redelivered(self) -> bool:
        """True when a queue delivered it before (to a consumer that did not acknowledge
        it)."""

    @property
    def settled(self) -> bool:
        """True once acknowledged or rejected (always for messages not from a queue)."""

    def ack(self) -> None:
        """Acknowledges a message from a queue: the queue forgets it. Does nothing for
        other messages, or when already settled."""

    def nack(self, requeue: bool = True) -> None:
        """Rejects a message from a queue: ``requeue=True`` gives it back to the queue
        for another delivery (until ``max_deliveries``), ``False`` sends it to the
        queue's dead-letter topic."""

    def _finish(self, ack: bool, requeue: bool) -> None:
        """Settles it unless already settled: what the client does once the callback
        is done with it."""

    @property
    def responded(self) -> bool:
        """True once the request has been answered, by :meth:`respond` or by a
        callback."""

    def respond(self, value: Any) -> None:
        """Answers this request with ``value`` (any value JSON can carry, ``None``
        included). A request gets one reply: what a callback returns afterwards sends
        nothing more. Raises ``RuntimeError`` for a message that is not a request
        (``reply_to`` is ``None``) or was answered already, ``InvalidMessageError``
        for a value JSON cannot carry or one over ``max_message_size``,
        ``NotConnectedError`` when the client has stopped."""

    def _respond_error(self, kind: str, message: str) -> None:
        """Answers this request with a failure (what the client does when a callback
        raises): the requester's ``request`` raises ``ResponderError``."""
