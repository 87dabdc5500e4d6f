"""``QtBrokerClient``: the broker for PySide6 apps, with Qt signals.

No call blocks the GUI thread and no asyncio loop is needed. The connection runs on
the extension's own threads (connecting, pinging, reconnecting, writing); when it has
something to report it writes one byte to a socket that a ``QSocketNotifier`` watches
in the thread that owns the client, and that thread takes the whole batch of events
and emits the signals. Every signal is therefore emitted in the owner's thread.

PySide6 is an optional dependency: ``pip install message-broker[qt]``.
"""

from __future__ import annotations

import itertools
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

try:
    from PySide6.QtCore import QObject, QSocketNotifier, QTimer, Signal
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "message_broker.qt_client needs PySide6: pip install 'message-broker[qt]'"
    ) from error

from message_broker import _core, _engine
from message_broker.broker import MessageBroker
from message_broker.config import DEFAULT_HOST, DEFAULT_PORT, BrokerConfig
from message_broker.errors import BrokerError, InvalidMessageError
from message_broker.message import Message

__all__ = ["QtBrokerClient", "QtBrokerHost"]

logger = logging.getLogger("message_broker.qt_client")

ReplyCallback = Callable[[Any, "BrokerError | None"], None]

# Events are handled in slices of at most this long, so a burst of messages never
# holds up the rest of the GUI (timers, painting, input) for longer.
SLICE_SECONDS = 0.008


class QtBrokerClient(QObject):
    """A broker client for Qt applications.

    >>> broker = QtBrokerClient("main_app", parent=window)
    >>> broker.connected.connect(on_connected)
    >>> broker.message_received.connect(on_message)   # (topic, payload, sender, id)
    >>> broker.connect_to_broker()

    Reconnections are reported as ``disconnected`` then ``connected``; subscriptions
    survive them.
    """

    connected = Signal()
    disconnected = Signal()
    connection_failed = Signal(str)
    # The payload is declared `object`, not `dict`: a `dict` signal argument goes
    # through QVariantMap, which silently turns large integers into -1 and lists into
    # {}. The value emitted is always a dict (see `message_received` below).
    message_received = Signal(str, object, str, str)
    """(topic, payload, sender, message id). The payload is a dict: a JSON object as
    published, any other payload as ``{"value": payload}``. ``message`` carries the
    payload unchanged."""
    subscribed = Signal(list)
    published = Signal(str)
    error_occurred = Signal(str)

    message = Signal(object)
    """Every delivered :class:`~message_broker.Message`, whatever its payload."""
    reply_received = Signal(int, object)
    """(request number, reply payload) for :meth:`request`."""
    request_failed = Signal(int, str)
    """(request number, reason) for :meth:`request`."""

    def __init__(
        self,
        client_id: str,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        parent: QObject | None = None,
        *,
        client_type: str = "qt",
        connect_timeout: float = 5.0,
        connect_retries: int = 3,
        reconnect: bool = True,
        reconnect_delay: float = 0.1,
        max_reconnect_delay: float = 5.0,
        heartbeat: bool = True,
        max_pending: int = 100_000,
    ) -> None:
        super().__init__(parent)
        _engine.check_client_id(client_id)
        self._client_id = client_id
        self._host = host
        self._port = port
        self._options = _engine.engine_options(
            client_type=client_type,
            connect_timeout=connect_timeout,
            connect_retries=connect_retries,
            reconnect=reconnect,
            reconnect_delay=reconnect_delay,
            max_reconnect_delay=max_reconnect_delay,
            heartbeat=heartbeat,
            max_pending=max_pending,
        )
        self._engine: _core.Client | None = None
        self._wake: socket.socket | None = None
        self._notifier: QSocketNotifier | None = None
        self._subscription_ids = itertools.count(1)
        self._callbacks: dict[int, Callable[[Message], Any] | None] = {}
        self._pending_subscribes: dict[int, list[str]] = {}
        self._pending_unsubscribes: set[int] = set()
        self._requests: dict[int, tuple[int, ReplyCallback | None]] = {}
        self._request_numbers = itertools.count(1)
        # Events taken from the engine and not handled yet. The engine is drained again
        # only once this is empty: a GUI that falls behind slows the reading from the
        # broker instead of growing this.
        self._backlog: deque[tuple[Any, ...]] = deque()
        self._slice_scheduled = False
        self._undecodable = 0

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def is_connected(self) -> bool:
        return self._engine is not None and self._engine.is_connected

    @property
    def undecodable_messages(self) -> int:
        """Messages not delivered because their payload cannot be turned into a Python
        value; each is logged and reported with ``error_occurred``."""
        return self._undecodable

    # -- connection -----------------------------------------------------------------------
    def connect_to_broker(self) -> None:
        """Starts connecting; ``connected`` or ``connection_failed`` follows."""
        if self._engine is not None:
            return
        self._engine, self._wake = _engine.open_engine(
            self._client_id, self._host, self._port, self._options
        )
        self._notifier = QSocketNotifier(self._wake.fileno(), QSocketNotifier.Type.Read, self)
        self._notifier.activated.connect(self._on_events)

    def disconnect_from_broker(self) -> None:
        """Sends what is queued, says goodbye and stops; ``disconnected`` follows."""
        if self._engine is not None:
            self._engine.close()

    # -- messaging ------------------------------------------------------------------------
    def subscribe(
        self, patterns: str | Iterable[str], callback: Callable[[Message], Any] | None = None
    ) -> None:
        """Subscribes; matching messages arrive as ``message_received`` (and go to
        ``callback``, if given: a value it returns answers a request). ``subscribed``
        follows once the broker holds the patterns."""
        engine = self._require_engine()
        if engine is None:
            return
        try:
            patterns = _engine.pattern_list(patterns)
            subscription = next(self._subscription_ids)
            call = engine.subscribe(subscription, patterns)
        except (TypeError, ValueError) as error:
            self.error_occurred.emit(f"cannot subscribe: {error}")
            return
        self._callbacks[subscription] = callback
        if call is None:
            self.subscribed.emit(patterns)
        else:
            self._pending_subscribes[call] = patterns

    def unsubscribe(self, patterns: str | Iterable[str]) -> None:
        engine = self._require_engine()
        if engine is None:
            return
        try:
            _, emptied, call = engine.unsubscribe(_engine.pattern_list(patterns))
        except (TypeError, ValueError) as error:
            self.error_occurred.emit(f"cannot unsubscribe: {error}")
            return
        for subscription in emptied:
            self._callbacks.pop(subscription, None)
        if call is not None:
            self._pending_unsubscribes.add(call)

    def publish(self, topic: str, payload: Any = None, qos: int = 0, ttl: float = 0) -> str:
        """Queues a message and returns its id (also sent with ``published``). Returns
        "" and emits ``error_occurred`` when the message cannot be sent."""
        engine = self._require_engine()
        if engine is None:
            return ""
        try:
            if qos != 0:
                raise InvalidMessageError(f"qos={qos} is not available (qos=0 only)")
            message_id = _engine.publish(engine, topic, payload, ttl or None)
        except (BrokerError, ConnectionError) as error:
            self.error_occurred.emit(f"cannot publish on {topic!r}: {error}")
            return ""
        except BlockingIOError:
            self.error_occurred.emit(f"cannot publish on {topic!r}: the outgoing queue is full")
            return ""
        self.published.emit(message_id)
        return message_id

    def request(
        self,
        topic: str,
        payload: Any = None,
        timeout: float = 5.0,
        callback: ReplyCallback | None = None,
    ) -> int:
        """Sends a request without blocking. Returns its number; the reply arrives as
        ``reply_received(number, reply)`` or ``request_failed(number, reason)``, and
        ``callback(reply, error)`` is called too, if given (in this thread)."""
        number = next(self._request_numbers)
        engine = self._require_engine()
        try:
            if engine is None:
                raise BrokerError("not connected: call connect_to_broker() first")
            params = (
                f'{{"topic":{_engine.encode_payload(topic)},'
                f'"payload":{_engine.encode_payload(payload)},"timeout":{float(timeout)!r}}}'
            )
            call = engine.call("request", params)
        except (BrokerError, ValueError, ConnectionError) as error:
            self._fail_request(number, callback, BrokerError(str(error)))
            return number
        self._requests[call] = (number, callback)
        return number

    def _require_engine(self) -> _core.Client | None:
        if self._engine is None:
            self.error_occurred.emit("not connected: call connect_to_broker() first")
        return self._engine

    # -- events ---------------------------------------------------------------------------
    def _on_events(self) -> None:
        wake = self._wake
        if wake is None:
            return
        try:
            wake.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            pass
        if not self._backlog:
            self._handle_slice()

    def _handle_slice(self) -> None:
        self._slice_scheduled = False
        deadline = time.perf_counter() + SLICE_SECONDS
        while True:
            if not self._backlog:
                if self._engine is None:
                    return
                self._backlog.extend(self._engine.drain(_engine.DRAIN_LIMIT))
                if not self._backlog:
                    return
            event = self._backlog.popleft()
            try:
                self._handle(event)
            except Exception:
                # One event that cannot be handled must not stop the others.
                logger.exception("client %s: an event could not be handled", self._client_id)
            if time.perf_counter() > deadline:
                break
        if not self._slice_scheduled:
            self._slice_scheduled = True
            QTimer.singleShot(0, self._handle_slice)

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == _engine.MESSAGE:
            self._deliver(event)
        elif kind == _engine.UNDECODABLE:
            assert self._engine is not None
            self._undecodable += 1
            self.error_occurred.emit(_engine.reject_undecodable(event, self._engine))
        elif kind == _engine.RESPONSE:
            self._answered(event[1], event[2], event[3])
        elif kind == _engine.PUBLISH_FAILED:
            self.error_occurred.emit(f"the broker refused message {event[1]}: {event[3]}")
        elif kind == _engine.CONNECTED:
            self.connected.emit()
        elif kind == _engine.DISCONNECTED:
            self.disconnected.emit()
        elif kind == _engine.CONNECT_FAILED:
            self.connection_failed.emit(event[1])
        elif kind == _engine.CLOSED:
            self._stop()

    def _deliver(self, event: tuple[Any, ...]) -> None:
        assert self._engine is not None
        subscriptions, message = _engine.message_from_event(event, self._engine)
        payload = message.payload
        as_dict = payload if isinstance(payload, dict) else {"value": payload}
        self.message.emit(message)
        self.message_received.emit(message.topic, as_dict, message.sender, message.id)
        answered = False
        for subscription in subscriptions:
            callback = self._callbacks.get(subscription)
            if callback is None:
                continue
            try:
                result = callback(message)
            except Exception:
                logger.exception("callback %r failed on a message on %r", callback, message.topic)
                continue
            if result is not None and message.reply_to is not None and not answered:
                answered = True
                self._reply(message, result)

    def _reply(self, message: Message, result: Any) -> None:
        assert message.reply_to is not None and self._engine is not None
        try:
            _engine.publish(self._engine, message.reply_to, result)
        except (BrokerError, ConnectionError, BlockingIOError) as error:
            self.error_occurred.emit(f"could not answer the request on {message.topic!r}: {error}")

    def _answered(self, call: int, ok: bool, result: Any) -> None:
        if call in self._pending_subscribes:
            patterns = self._pending_subscribes.pop(call)
            if ok or result[0] == _core.CONNECTION_LOST:
                self.subscribed.emit(patterns)  # restored on reconnection if the link broke
            else:
                self.error_occurred.emit(f"cannot subscribe to {patterns}: {result[1]}")
        elif call in self._pending_unsubscribes:
            self._pending_unsubscribes.discard(call)
            if not ok and result[0] != _core.CONNECTION_LOST:
                self.error_occurred.emit(f"cannot unsubscribe: {result[1]}")
        elif call in self._requests:
            number, callback = self._requests.pop(call)
            if ok:
                reply = _core.loads(result)
                self.reply_received.emit(number, reply)
                if callback is not None:
                    callback(reply, None)
            else:
                self._fail_request(number, callback, _engine.remote_error(*result))

    def _fail_request(
        self, number: int, callback: ReplyCallback | None, error: BrokerError
    ) -> None:
        self.request_failed.emit(number, str(error))
        if callback is not None:
            callback(None, error)

    def _stop(self) -> None:
        pending = list(self._requests.values())
        self._requests.clear()
        self._pending_subscribes.clear()
        self._pending_unsubscribes.clear()
        if self._notifier is not None:
            self._notifier.setEnabled(False)
            self._notifier.deleteLater()
        if self._wake is not None:
            self._wake.close()
        self._engine = self._wake = self._notifier = None
        for number, callback in pending:
            self._fail_request(number, callback, BrokerError("the client is closed"))


class QtBrokerHost(QObject):
    """Runs a broker inside a Qt application (one app hosts it, others connect), on
    the extension's threads: the GUI thread never serves clients.

    >>> host = QtBrokerHost(parent=app)        # localhost, a free port
    >>> host.start()
    >>> client = host.create_client("main_app")
    """

    started = Signal(int)
    stopped = Signal()

    def __init__(self, config: BrokerConfig | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.broker = MessageBroker(config if config is not None else BrokerConfig(port=0))

    @property
    def port(self) -> int | None:
        return self.broker.port

    def start(self) -> int:
        """Starts listening; returns the port (also sent with ``started``). Raises
        ``OSError`` when the address is in use."""
        port = self.broker.start_sync()
        self.started.emit(port)
        return port

    def stop(self, reason: str = "host application closing") -> None:
        """Stops the broker (clients hear ``system.broker.shutdown`` first)."""
        if self.broker.is_running:
            self.broker.stop_sync(reason)
            self.stopped.emit()

    def create_client(
        self, client_id: str, parent: QObject | None = None, **options: Any
    ) -> QtBrokerClient:
        """A client of this broker (not yet connected)."""
        if self.broker.port is None:
            raise RuntimeError("start the host before creating clients")
        host = "127.0.0.1" if self.broker.host in ("0.0.0.0", "::") else self.broker.host
        return QtBrokerClient(client_id, host, self.broker.port, parent, **options)
