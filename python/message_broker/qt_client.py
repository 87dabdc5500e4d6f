"""``QtBrokerClient``: the broker for PySide6 apps, with Qt signals.

No call blocks the GUI thread and no asyncio loop is needed. The connection runs on
the extension's own threads (connecting, pinging, reconnecting, writing); when it has
something to report it writes one byte to a socket that a ``QSocketNotifier`` watches
in the thread that owns the client, and that thread takes the whole batch of events
and hands them to the client core it shares with the asyncio client
(:mod:`message_broker._client_core`), which this module turns into signals. Every
signal is therefore emitted in the owner's thread.

PySide6 is an optional dependency: ``pip install message-broker[qt]``.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

try:
    import PySide6
    from PySide6.QtCore import QObject, QSocketNotifier, QTimer, Signal
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "message_broker.qt_client needs PySide6: pip install 'message-broker[qt]'"
    ) from error

from message_broker import _core
from message_broker._client_core import (
    CLIENT_DEFAULTS,
    HOST_NOT_GIVEN,
    PORT_NOT_GIVEN,
    ClientCore,
    Finish,
    SubscribeOptions,
    SubscriptionHandle,
    connection_target,
)
from message_broker.broker import MessageBroker
from message_broker.config import BrokerConfig
from message_broker.errors import BrokerError, InvalidMessageError, PayloadValidationError
from message_broker.message import Message

__all__ = ["QtBrokerClient", "QtBrokerHost", "QtSubscription"]

BROKEN_PYSIDE6 = {
    "6.12.0": "it releases one reference too many on every emit of a signal with an "
    "object argument, and the interpreter aborts after some thousands of messages",
}
"""PySide6 releases this client cannot run on, and why."""


def _refuse_broken_pyside6(version: str) -> None:
    """Refuses at import a PySide6 that would crash the program later, mid-run."""
    if version in BROKEN_PYSIDE6:
        raise ImportError(
            f"message_broker.qt_client cannot run on PySide6 {version}: "
            f"{BROKEN_PYSIDE6[version]}. Install another release: "
            f"pip install 'PySide6-Essentials>=6.6,!={version}' "
            "(the 'message-broker[qt]' extra excludes it)"
        )


_refuse_broken_pyside6(PySide6.__version__)

ReplyCallback = Callable[[Any, "BrokerError | None"], None]

# Events are handled in slices of at most this long, so a burst of messages never
# holds up the rest of the GUI (timers, painting, input) for longer.
SLICE_SECONDS = 0.008
# Events handled in one go: one, so that the slice's deadline is looked at after each
# callback, and a callback that runs a nested event loop (a modal dialog) leaves no
# taken event behind for later ones to overtake.
EVENTS_PER_PUMP = 1


class QtSubscription(SubscriptionHandle):
    """One subscription of a :class:`QtBrokerClient`, as its ``subscribe`` returns it:
    the list of its patterns (equal to the plain list), and the handle that ends this
    subscription alone with :meth:`unsubscribe`. Its messages go to its callback and
    the client's signals: a Qt client never waits for a message, so it has no
    ``next_msg``. Not made directly."""

    def __init__(self, client: QtBrokerClient) -> None:
        super().__init__()
        self._client = client

    def unsubscribe(self) -> None:
        """Ends this subscription alone, without blocking: other subscriptions on its
        patterns go on, and the broker is told to unsubscribe a pattern only once no
        subscription holds it. A refusal emits the client's ``error_occurred``."""
        if self._active:
            try:
                self._client._core.release(self, self._client._unsubscribe_done)
            except BrokerError as error:
                self._client.error_occurred.emit(f"cannot unsubscribe: {error}")


class QtBrokerClient(QObject):
    """A broker client for Qt applications.

    >>> broker = QtBrokerClient("main_app", parent=window)
    >>> broker.connected.connect(on_connected)
    >>> broker.message_received.connect(on_message)   # (topic, payload, sender, id)
    >>> broker.connect_to_broker()

    Reconnections are reported as ``disconnected`` then ``connected``; subscriptions
    survive them. A ``disconnected`` after which it does not reconnect by itself
    (:meth:`disconnect_from_broker`, taken over, the connection lost with
    ``reconnect`` off) comes once the client has stopped: a slot on it may call
    :meth:`connect_to_broker` again.

    It does what :class:`~message_broker.BrokerClient` does (``qos=1``, retained
    messages, queue and durable subscriptions with acknowledgements, the last will,
    ``delete_queue``, ``purge_queue``), reporting outcomes with signals instead of
    raising: a call that cannot be carried out emits ``error_occurred``. It connects
    where a ``BrokerClient`` given the same ``url``, ``host`` and ``port`` does (with
    none of them, ``MESSAGE_BROKER_URL`` when set).
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
    """The message id: at once for ``qos=0``, once the broker has stored the message for
    ``qos=1``."""
    publish_failed = Signal(str, str)
    """(message id, reason): the broker refused the message, or could not confirm a
    ``qos=1`` one (a full queue, a failed store, a lost connection: publish it again)."""
    # `object`, not `int`: a Qt int is 32 bits.
    queue_deleted = Signal(str, object)
    """(queue name, messages it held) for :meth:`delete_queue`."""
    queue_purged = Signal(str, object)
    """(queue name, messages dropped) for :meth:`purge_queue`."""
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
        host: str = HOST_NOT_GIVEN,
        port: int = PORT_NOT_GIVEN,
        parent: QObject | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        client_type: str = "qt",
        connect_timeout: float = CLIENT_DEFAULTS["connect_timeout"],
        connect_retries: int = CLIENT_DEFAULTS["connect_retries"],
        reconnect: bool = CLIENT_DEFAULTS["reconnect"],
        reconnect_delay: float = CLIENT_DEFAULTS["reconnect_delay"],
        max_reconnect_delay: float = CLIENT_DEFAULTS["max_reconnect_delay"],
        heartbeat: bool = CLIENT_DEFAULTS["heartbeat"],
        max_pending: int = CLIENT_DEFAULTS["max_pending"],
    ) -> None:
        super().__init__(parent)
        url, host, port = connection_target(url, host, port)
        options = _core.ClientOptions(
            client_id,
            host,
            port,
            url=url,
            token=token,
            client_type=client_type,
            connect_timeout=connect_timeout,
            connect_retries=connect_retries,
            reconnect=reconnect,
            reconnect_delay=reconnect_delay,
            max_reconnect_delay=max_reconnect_delay,
            heartbeat=heartbeat,
            max_pending=max_pending,
        )
        self._core = ClientCore(options, self, "connect_to_broker()")
        self._wake: socket.socket | None = None
        self._notifier: QSocketNotifier | None = None
        self._request_numbers = itertools.count(1)
        # Why the first connection failed, told with `connection_failed` once the engine
        # has stopped: a slot, or the code after it, may then connect again.
        self._connect_failure: str | None = None
        # From `connected` until `disconnected` is emitted: a connection the user was
        # told of, whose end they must hear of exactly once.
        self._up = False
        # Why a connection ended for good, told with `disconnected` (and, when it
        # stopped by itself, `error_occurred`) once the engine has stopped: a slot, or
        # the code after it, may then connect again.
        self._ended_for_good: str | None = None
        # Events taken from the engine and not handled yet. The engine is drained again
        # only once this is empty: a GUI that falls behind slows the reading from the
        # broker instead of growing this.
        self._slice_scheduled = False

    @property
    def client_id(self) -> str:
        """The id this client connects with."""
        return self._core.client_id

    @property
    def url(self) -> str:
        """Where the client connects: ``tcp://host:port`` or ``unix:///path``."""
        return self._core.options.url

    @property
    def is_connected(self) -> bool:
        """True while a connection to the broker is up, this very moment."""
        return self._core.is_connected

    @property
    def undecodable_messages(self) -> int:
        """Messages not delivered because their payload cannot be turned into a Python
        value; each is logged and reported with ``error_occurred``."""
        return self._core.undecodable

    # -- connection -----------------------------------------------------------------------
    def connect_to_broker(
        self, will: dict[str, Any] | None = None, *, wait: float | None = None
    ) -> None:
        """Starts connecting; ``connected`` or ``connection_failed`` follows. After
        ``connection_failed``, or a ``disconnected`` that is not a reconnection, the
        client is stopped and may connect again (a call while it runs does nothing).

        ``wait`` (seconds) keeps trying the first connection for up to that long
        instead of ``connect_retries`` times (a broker that refuses the connection
        itself ends it at once). ``will`` (``{"topic": ..., "payload": ..., "qos": 0,
        "retain": False}``) is the last will, published by the broker if the connection
        ends without :meth:`disconnect_from_broker`. A will the broker would refuse, or
        a ``wait`` that is not a positive number, emits ``connection_failed`` at once."""
        if self._core.running:
            return
        try:
            self._wake = self._core.open(will, wait)
        except (BrokerError, TypeError, ValueError) as error:
            self.connection_failed.emit(f"cannot connect: {error}")
            return
        self._notifier = QSocketNotifier(self._wake.fileno(), QSocketNotifier.Type.Read, self)
        self._notifier.activated.connect(self._on_events)

    def disconnect_from_broker(self) -> None:
        """Sends what is queued, says goodbye and stops; ``disconnected`` follows once
        it has stopped (none while reconnecting: that one came when the connection
        dropped)."""
        self._core.close()

    # -- messaging ------------------------------------------------------------------------
    def subscribe(
        self,
        patterns: str | Iterable[str],
        callback: Callable[[Message], Any] | None = None,
        *,
        queue: str | None = None,
        durable: bool = False,
        prefetch: int | None = None,
        max_length: int | None = None,
        max_bytes: int | None = None,
        max_deliveries: int | None = None,
        dead_letter_topic: str | None = None,
        passive: bool = False,
        no_local: bool = False,
        type: Any = None,
    ) -> QtSubscription | None:
        """Subscribes; matching messages arrive as ``message_received`` and ``message``
        (and go to ``callback``, if given: a value it returns answers a request).
        ``subscribed`` follows once the broker holds the patterns. Returns the
        :class:`QtSubscription` (``sub.unsubscribe()`` ends this one alone), or
        ``None`` after emitting ``error_occurred`` when it cannot subscribe.

        ``queue``, ``durable`` and the queue's options are those of
        :meth:`BrokerClient.subscribe <message_broker.BrokerClient.subscribe>`. A
        message from a queue is acknowledged when the callback returns without raising
        (without a callback: once the signals have been emitted) and given back when
        the callback raises; ``message.ack()`` / ``message.nack()`` in a slot settle it
        first. ``passive``, ``no_local`` and ``type`` (the callback gets a
        :class:`~message_broker.typed.TypedMessage`; a payload that does not validate
        emits ``error_occurred`` instead) are those of ``BrokerClient.subscribe`` too."""
        options = SubscribeOptions(
            queue,
            durable,
            prefetch,
            max_length,
            max_bytes,
            max_deliveries,
            dead_letter_topic,
            passive,
            no_local,
            type,
        )
        subscription = QtSubscription(self)
        try:
            self._core.subscribe(patterns, callback, options, self._subscribe_done, subscription)
        except (BrokerError, TypeError, ValueError) as error:
            self.error_occurred.emit(f"cannot subscribe: {error}")
            return None
        return subscription

    def _subscribe_done(self, patterns: list[str], error: BrokerError | None) -> None:
        if error is None:
            self.subscribed.emit(patterns)
        else:
            self.error_occurred.emit(f"cannot subscribe to {patterns}: {error}")

    def unsubscribe(
        self, patterns: str | Iterable[str] | None = None, *, queue: str | None = None
    ) -> None:
        """Stops ``patterns`` for every callback or, with ``queue``, stops consuming from
        that queue (its unacknowledged messages go back to it)."""
        try:
            if queue is not None:
                self._core.unsubscribe_queue(queue, self._unsubscribe_done)
            elif patterns is None:
                raise TypeError("unsubscribe() needs patterns or queue=")
            else:
                self._core.unsubscribe(patterns, self._unsubscribe_done)
        except (BrokerError, TypeError, ValueError) as error:
            self.error_occurred.emit(f"cannot unsubscribe: {error}")

    def _unsubscribe_done(self, _: list[str], error: BrokerError | None) -> None:
        if error is not None:
            self.error_occurred.emit(f"cannot unsubscribe: {error}")

    def publish(
        self,
        topic: str,
        payload: Any = None,
        qos: int = 0,
        ttl: float = 0,
        retain: bool = False,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Queues a message and returns its id. ``published`` follows with the id: at
        once for ``qos=0``; for ``qos=1`` once the broker has stored it in every durable
        queue it matches, else ``publish_failed``. ``retain=True`` keeps it as the
        topic's current state; ``ttl`` is in seconds (0 for none); ``headers`` (a dict
        of strings) travel beside the payload. Returns "" and emits
        ``error_occurred`` when the message cannot be sent."""
        try:
            message_id = self._core.publish(
                topic, payload, qos, ttl, retain, headers, self._confirmed
            )
        except BrokerError as error:
            self.error_occurred.emit(f"cannot publish on {topic!r}: {error}")
            return ""
        except BlockingIOError:
            self.error_occurred.emit(f"cannot publish on {topic!r}: the outgoing queue is full")
            return ""
        if qos == 0:
            self.published.emit(message_id)
        return message_id

    def _confirmed(self, message_id: str, error: BrokerError | None) -> None:
        if error is None:
            self.published.emit(message_id)
        else:
            self.publish_failed.emit(message_id, str(error))
            self.error_occurred.emit(f"message {message_id} was not confirmed: {error}")

    def delete_queue(self, name: str) -> None:
        """Deletes a queue and the messages in it; ``queue_deleted(name, messages)``
        follows, or ``error_occurred`` (there is no such queue, or no connection)."""

        def done(result: Any, error: BrokerError | None) -> None:
            if error is None:
                self.queue_deleted.emit(name, result)
            else:
                self.error_occurred.emit(f"cannot delete queue {name!r}: {error}")

        try:
            self._core.delete_queue(name, done)
        except BrokerError as error:
            done(None, error)

    def purge_queue(self, name: str) -> None:
        """Drops the messages waiting in a queue, keeping the queue and its consumers;
        ``queue_purged(name, messages dropped)`` follows, or ``error_occurred`` (there is
        no such queue, or no connection)."""

        def done(result: Any, error: BrokerError | None) -> None:
            if error is None:
                self.queue_purged.emit(name, result)
            else:
                self.error_occurred.emit(f"cannot purge queue {name!r}: {error}")

        try:
            self._core.purge_queue(name, done)
        except BrokerError as error:
            done(None, error)

    def request(
        self,
        topic: str,
        payload: Any = None,
        timeout: float = 5.0,
        callback: ReplyCallback | None = None,
        headers: dict[str, str] | None = None,
        *,
        response_type: Any = None,
    ) -> int:
        """Sends a request without blocking. Returns its number; the reply arrives as
        ``reply_received(number, reply)`` or ``request_failed(number, reason)``, and
        ``callback(reply, error)`` is called too, if given (in this thread). With
        ``response_type`` the reply is decoded into it (a reply that does not validate
        fails the request)."""
        number = next(self._request_numbers)

        def done(result: Any, error: BrokerError | None) -> None:
            if error is None:
                self.reply_received.emit(number, result)
            else:
                self.request_failed.emit(number, str(error))
            if callback is not None:
                callback(None if error else result, error)

        try:
            self._core.request(topic, payload, timeout, done, headers, response_type)
        except BrokerError as error:
            done(None, error)
        except ValueError as error:
            done(None, InvalidMessageError(str(error)))
        return number

    # -- the driver of the client core ----------------------------------------------------
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
        if not self._slice_scheduled:
            self._handle_slice()

    def _handle_slice(self) -> None:
        self._slice_scheduled = False
        deadline = time.perf_counter() + SLICE_SECONDS
        core = self._core
        while core.pump(EVENTS_PER_PUMP):
            if time.perf_counter() > deadline:
                break
        else:
            return
        if not self._slice_scheduled:
            self._slice_scheduled = True
            QTimer.singleShot(0, self._handle_slice)

    # Front of the client core (see message_broker._client_core.Front).
    def _on_connected(self) -> None:
        self._up = True
        self.connected.emit()

    def _on_disconnected(self, reason: str, reconnecting: bool) -> None:
        if reconnecting:
            self._up = False
            self.disconnected.emit()
        else:
            # The engine is still stopping (``Closed`` follows): connect_to_broker() now
            # would do nothing, so disconnected waits for it.
            self._ended_for_good = reason

    def _on_connect_failed(self, reason: str, code: int | None) -> None:
        # The engine is still stopping (``Closed`` follows): connect_to_broker() now
        # would do nothing, so connection_failed waits for it.
        self._connect_failure = reason

    def _on_closed(self) -> None:
        if self._notifier is not None:
            self._notifier.setEnabled(False)
            self._notifier.deleteLater()
        if self._wake is not None:
            self._wake.close()
        self._wake = self._notifier = None
        # Everything is read and reset before any signal: a slot may connect again,
        # which starts a new engine (and forgets why the old one stopped).
        reason, self._connect_failure = self._connect_failure, None
        was_up, self._up = self._up, False
        ended, self._ended_for_good = self._ended_for_good, None
        stop_reason = self._core.stop_reason
        if was_up:
            self.disconnected.emit()
            if stop_reason is not None:
                # It did not stop at the user's word (taken over, say): they must hear why.
                why = ended if ended is not None else stop_reason
                self.error_occurred.emit(f"disconnected for good: {why}")
        if reason is not None:
            self.connection_failed.emit(reason)

    def _on_writable(self) -> None:
        pass  # a full queue makes publish fail at once instead of waiting

    def _on_message(self, message: Message) -> None:
        payload = message.payload
        self.message.emit(message)
        self.message_received.emit(
            message.topic,
            payload if isinstance(payload, dict) else {"value": payload},
            message.sender,
            message.id,
        )

    def _on_publish_failed(self, message_id: str, error: BrokerError) -> None:
        self.publish_failed.emit(message_id, str(error))
        self.error_occurred.emit(f"the broker refused message {message_id}: {error}")

    def _on_problem(self, report: str) -> None:
        self.error_occurred.emit(report)

    def _on_invalid_payload(self, error: PayloadValidationError) -> None:
        self.error_occurred.emit(str(error))

    def _defer(self, result: Any, finish: Finish) -> bool:
        return False  # Qt callbacks are plain functions: what they return is their result


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
        """The port the broker listens on while running, else None."""
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
