"""``QtActionClient``: sends goals to an action service from a Qt application, with
feedback, status and result as signals.

It speaks the protocol of :mod:`message_broker.actions` through a
:class:`~message_broker.qt_client.QtBrokerClient`, and, as that client, never blocks
the GUI thread: each call returns at once and its outcome comes as a signal, in the
thread that owns the client. The goal's topics are subscribed, and the broker has
confirmed it, before the goal is sent, so no feedback is ever missed.

PySide6 is an optional dependency: ``pip install message-broker[qt]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from message_broker._client_core import SubscribeOptions
from message_broker.actions import (
    GoalStatus,
    GoalTracker,
    _Topics,
    new_goal_id,
    result_from_reply,
)
from message_broker.errors import BrokerError, GoalRefusedError, InvalidMessageError
from message_broker.message import Message
from message_broker.qt_client import QtBrokerClient, QtSubscription
from message_broker.typed import encode

__all__ = ["QtActionClient"]


class QtActionClient(QObject):
    """Sends goals to the action ``name`` through ``client`` (a
    :class:`~message_broker.qt_client.QtBrokerClient`), reporting with signals.

    >>> move = QtActionClient(broker, "robot.move", parent=window)
    >>> move.feedback.connect(lambda goal_id, value: bar.setValue(value["current_cm"]))
    >>> move.result.connect(lambda goal_id, outcome: print(outcome.status.name))
    >>> goal_id = move.send_goal({"target_cm": 5})

    ``feedback_type`` and ``result_type`` (a dataclass, a pydantic model) decode what
    comes back; feedback that does not validate emits the client's ``error_occurred``
    instead of ``feedback``. The goals' messages also pass through the client's
    ``message`` and ``message_received`` signals, as every delivered message does.
    """

    goal_accepted = Signal(str)
    """(goal id): the service took the goal."""
    goal_failed = Signal(str, str)
    """(goal id, reason): the goal was not sent or not accepted (refused, no service,
    no answer in time, no connection), or a cancel or result request failed."""
    feedback = Signal(str, object)
    """(goal id, feedback value), every one in order."""
    status_changed = Signal(str, int)
    """(goal id, :class:`~message_broker.actions.GoalStatus` number), every one in order."""
    result = Signal(str, object)
    """(goal id, :class:`~message_broker.actions.GoalResult`): after the terminal
    ``status_changed``, and for :meth:`get_result`."""

    def __init__(
        self,
        client: QtBrokerClient,
        name: str,
        parent: QObject | None = None,
        *,
        feedback_type: Any = None,
        result_type: Any = None,
    ) -> None:
        super().__init__(parent)
        self.client = client
        """The client it sends on."""
        self.topics = _Topics(name)
        self._feedback_type = feedback_type
        self._result_type = result_type
        self._goals: dict[str, tuple[GoalTracker, QtSubscription]] = {}

    @property
    def name(self) -> str:
        """The action's name: the prefix of its topics."""
        return self.topics.name

    def statuses(self, goal_id: str) -> list[GoalStatus]:
        """Every status heard of a goal this client sent and that has not ended yet,
        in order (empty for another)."""
        tracked = self._goals.get(goal_id)
        return [] if tracked is None else list(tracked[0].statuses)

    def send_goal(self, goal: Any = None, timeout: float = 5.0) -> str:
        """Sends ``goal`` (a JSON value, a dataclass, a pydantic model) without
        blocking; returns its id. ``goal_accepted(id)`` follows, or ``goal_failed(id,
        reason)``, at once when there is no service; then ``status_changed``,
        ``feedback`` and finally ``result``."""
        goal_id = new_goal_id()
        core = self.client._core
        tracker = GoalTracker(
            self.topics, goal_id, self._feedback_type, self._result_type, core.report_invalid
        )
        subscription = QtSubscription(self.client)
        self._goals[goal_id] = (tracker, subscription)

        def subscribed(_: Any, error: BrokerError | None) -> None:
            if error is not None:
                self._fail(goal_id, f"cannot subscribe to the goal's topics: {error}")
                return
            try:
                core.request(
                    self.topics.goal,
                    {"goal_id": goal_id, "goal": encode(goal)},
                    timeout,
                    lambda reply, error: self._answered(goal_id, reply, error),
                )
            except (BrokerError, ValueError) as refused:
                self._fail(goal_id, str(refused))

        try:
            core.subscribe(
                self.topics.of_goal(goal_id),
                lambda message: self._deliver(goal_id, message),
                SubscribeOptions(),
                subscribed,
                subscription,
            )
        except (BrokerError, TypeError, ValueError) as error:
            reason = f"cannot send the goal: {error}"
            # After the caller has the id, so that it can tell which goal failed.
            QTimer.singleShot(0, lambda: self._fail(goal_id, reason))
        return goal_id

    def cancel_goal(self, goal_id: str, timeout: float = 5.0) -> None:
        """Asks the service to cancel goal ``goal_id``, without blocking: the
        statuses follow (CANCELING, then CANCELED with the partial result), or
        ``goal_failed`` when the request fails."""
        self._ask(self.topics.cancel, {"goal_id": goal_id}, timeout, goal_id, None)

    def get_result(self, goal_id: str, wait: float = 0.0, timeout: float = 5.0) -> None:
        """Asks where goal ``goal_id`` stands (for a goal another client sent, or
        after a reconnection), without blocking: ``result(goal_id, GoalResult)``
        follows, once the goal has ended when ``wait`` seconds are given (or when they
        have passed), or ``goal_failed`` (an unknown goal, say)."""

        def answered(reply: Any) -> None:
            try:
                outcome = result_from_reply(goal_id, reply, self._result_type, self.topics.result)
            except BrokerError as error:
                self._fail(goal_id, str(error))
                return
            self.result.emit(goal_id, outcome)

        self._ask(
            self.topics.result,
            {"goal_id": goal_id, "wait": wait},
            timeout + wait,
            goal_id,
            answered,
        )

    def _ask(
        self,
        topic: str,
        payload: dict[str, Any],
        timeout: float,
        goal_id: str,
        answered: Callable[[Any], None] | None,
    ) -> None:
        def done(reply: Any, error: BrokerError | None) -> None:
            if error is not None:
                self.goal_failed.emit(goal_id, str(error))
            elif isinstance(reply, dict) and reply.get("status") == GoalStatus.UNKNOWN:
                self.goal_failed.emit(goal_id, f"the action service does not know goal {goal_id}")
            elif answered is not None:
                answered(reply)

        try:
            self.client._core.request(topic, payload, timeout, done)
        except (BrokerError, ValueError) as error:
            failure = InvalidMessageError(str(error)) if isinstance(error, ValueError) else error
            QTimer.singleShot(0, lambda: done(None, failure))

    def _answered(self, goal_id: str, reply: Any, error: BrokerError | None) -> None:
        if error is None and not (isinstance(reply, dict) and reply.get("accepted") is True):
            reason = str(reply.get("reason", reply) if isinstance(reply, dict) else reply)
            error = GoalRefusedError(
                f"the action {self.name!r} refused goal {goal_id}: {reason}", goal_id, reason
            )
        if error is not None:
            self._fail(goal_id, str(error))
        else:
            self.goal_accepted.emit(goal_id)

    def _deliver(self, goal_id: str, message: Message) -> None:
        tracked = self._goals.get(goal_id)
        if tracked is None:
            return
        tracker, _ = tracked
        taken = tracker.take(message)
        if taken is None:
            return
        kind, value = taken
        if kind == "feedback":
            self.feedback.emit(goal_id, value)
            return
        self.status_changed.emit(goal_id, int(value))
        if value.terminal:
            self._forget(goal_id)
            if tracker.outcome is not None:
                self.result.emit(goal_id, tracker.outcome)
            else:
                self.goal_failed.emit(goal_id, str(tracker.invalid_result))

    def _fail(self, goal_id: str, reason: str) -> None:
        self._forget(goal_id)
        self.goal_failed.emit(goal_id, reason)

    def _forget(self, goal_id: str) -> None:
        tracked = self._goals.pop(goal_id, None)
        if tracked is not None:
            tracked[1].unsubscribe()
