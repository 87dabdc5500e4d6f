"""Actions: goals that run for a while, with feedback, cancel and a result.

An :class:`ActionService` takes goals on request/response and reports on pub/sub; an
:class:`ActionClient` sends them. Topics, for an action named ``robot.move``:

==================================  ===================================================
``robot.move.goal``                 request ``{goal_id, goal}``: accepted or refused
``robot.move.cancel``               request ``{goal_id}``: the status after it
``robot.move.result``               request ``{goal_id, wait}``: status, result, error
``robot.move.goals``                request ``{}``: the goals the service knows
``robot.move.goal.<id>.feedback``   ``{goal_id, feedback}``, each feedback in order
``robot.move.goal.<id>.status``     ``{goal_id, status, state}``; the last one (a
                                    terminal status) also has ``result`` and ``error``
==================================  ===================================================

The client makes the goal id and subscribes to the goal's topics, and waits until the
broker has confirmed that subscription, before it sends the goal: so it hears every
status and every feedback the service publishes, the first included. (commlib's
service makes the id and starts the goal before its client knows the id, and the
client drops what comes before: the first feedback is lost.) The terminal status
carries the result, so it follows the last feedback in order.

>>> service = ActionService(client, "robot.move", on_goal)
>>> await service.start()
>>> goal = await ActionClient(other, "robot.move").send_goal({"target_cm": 5},
...                                                          on_feedback=print)
>>> (await goal.result()).status
<GoalStatus.SUCCEEDED: 4>
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import inspect
import logging
import re
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from message_broker.errors import (
    BrokerError,
    GoalRefusedError,
    PayloadValidationError,
    UnknownGoalError,
)
from message_broker.message import Message
from message_broker.typed import decode, encode

if TYPE_CHECKING:
    from message_broker.client import BrokerClient, Subscription

__all__ = ["ActionClient", "ActionService", "Goal", "GoalHandle", "GoalResult", "GoalStatus"]

logger = logging.getLogger("message_broker.actions")


class GoalStatus(enum.IntEnum):
    """The states of a goal, with commlib's numbers. ROS 2 (``action_msgs/GoalStatus``)
    numbers them the same up to 4 and swaps the last two: its ``CANCELED`` is 5 and
    ``ABORTED`` 6 (see :attr:`ros2` and :meth:`from_ros2`), and it calls ``RUNNING``
    ``EXECUTING``.

    ========== ======= ===== ============================================================
    State      commlib ROS 2 Meaning
    ========== ======= ===== ============================================================
    UNKNOWN    0       0     the service does not know the goal
    ACCEPTED   1       1     the service took it; it starts at once
    RUNNING    2       2     ``on_goal`` runs
    CANCELING  3       3     a cancel was asked for and accepted; ``on_goal`` winds up
    SUCCEEDED  4       4     ``on_goal`` returned: the result is its value
    ABORTED    5       6     ``on_goal`` raised: the error is the exception's text
    CANCELED   6       5     ended after a cancel: the result is the partial one
    ========== ======= ===== ============================================================
    """

    UNKNOWN = 0
    ACCEPTED = 1
    RUNNING = 2
    CANCELING = 3
    SUCCEEDED = 4
    ABORTED = 5
    CANCELED = 6
    # commlib's spelling, for programs ported from it.
    SUCCEDED = 4

    @property
    def terminal(self) -> bool:
        """True for the states a goal ends in: SUCCEEDED, ABORTED, CANCELED."""
        return self in _TERMINAL

    @property
    def ros2(self) -> int:
        """This state's number in ROS 2's ``action_msgs/GoalStatus``."""
        return _ROS2_NUMBERS.get(self, int(self))

    @classmethod
    def from_ros2(cls, number: int) -> GoalStatus:
        """The state ROS 2 numbers ``number`` (5 is CANCELED, 6 ABORTED)."""
        for status, ros2 in _ROS2_NUMBERS.items():
            if ros2 == number:
                return status
        return cls(number)


_TERMINAL = frozenset({GoalStatus.SUCCEEDED, GoalStatus.ABORTED, GoalStatus.CANCELED})
_ROS2_NUMBERS = {GoalStatus.ABORTED: 6, GoalStatus.CANCELED: 5}

# A goal id is one topic segment: the client makes it (a UUID's hex digits).
_GOAL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


@dataclasses.dataclass(frozen=True)
class GoalResult:
    """How a goal ended, or where it stands: ``status``, ``result`` (``on_goal``'s
    value, or the partial result of a canceled goal, decoded into the client's
    ``result_type`` when it has one) and ``error`` (for ABORTED, the exception's type
    and message)."""

    goal_id: str
    status: GoalStatus
    result: Any = None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        """True when the goal ended with SUCCEEDED."""
        return self.status is GoalStatus.SUCCEEDED


class _Topics:
    """The topics of one action."""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"an action needs a name (a topic), got {name!r}")
        self.name = name
        self.goal = f"{name}.goal"
        self.cancel = f"{name}.cancel"
        self.result = f"{name}.result"
        self.goals = f"{name}.goals"

    def of_goal(self, goal_id: str) -> str:
        """The pattern of a goal's feedback and status topics."""
        return f"{self.name}.goal.{goal_id}.+"

    def feedback(self, goal_id: str) -> str:
        return f"{self.name}.goal.{goal_id}.feedback"

    def status(self, goal_id: str) -> str:
        return f"{self.name}.goal.{goal_id}.status"


def _snapshot_status(payload: Any) -> GoalStatus:
    try:
        return GoalStatus(payload.get("status", 0))
    except (AttributeError, ValueError, TypeError):
        return GoalStatus.UNKNOWN


def result_from_reply(goal_id: str, reply: Any, result_type: Any, topic: str) -> GoalResult:
    """The :class:`GoalResult` of a ``result`` reply or a terminal status. Raises
    :class:`UnknownGoalError` when the service does not know the goal, and
    :class:`PayloadValidationError` when the result does not decode into
    ``result_type``."""
    status = _snapshot_status(reply)
    if status is GoalStatus.UNKNOWN:
        raise UnknownGoalError(f"the action service does not know goal {goal_id}", goal_id)
    result = reply.get("result")
    if result_type is not None and result is not None:
        result = decode(result, result_type, topic)
    error = reply.get("error")
    return GoalResult(goal_id, status, result, None if error is None else str(error))


class GoalTracker:
    """What a client hears of one goal, from its status and feedback messages (shared
    by :class:`ActionClient` and the Qt action client)."""

    def __init__(
        self,
        topics: _Topics,
        goal_id: str,
        feedback_type: Any,
        result_type: Any,
        report_invalid: Callable[[PayloadValidationError], None],
    ) -> None:
        self.topics = topics
        self.goal_id = goal_id
        self.statuses: list[GoalStatus] = []
        self.outcome: GoalResult | None = None
        self.invalid_result: PayloadValidationError | None = None
        self._feedback_type = feedback_type
        self._result_type = result_type
        self._report_invalid = report_invalid

    def take(self, message: Message) -> tuple[str, Any] | None:
        """``("feedback", value)`` or ``("status", GoalStatus)`` for a message of the
        goal's topics, ``None`` for one that is not (logged). After a terminal status,
        :attr:`outcome` (or :attr:`invalid_result`) holds how the goal ended."""
        payload = message.payload
        if not isinstance(payload, dict) or payload.get("goal_id") != self.goal_id:
            logger.warning("ignored a message on %r that is not the goal's", message.topic)
            return None
        if message.topic.endswith(".feedback"):
            value = payload.get("feedback")
            if self._feedback_type is not None:
                try:
                    value = decode(value, self._feedback_type, message.topic)
                except PayloadValidationError as error:
                    error.sender = message.sender
                    self._report_invalid(error)
                    return None
            return "feedback", value
        status = _snapshot_status(payload)
        if status is GoalStatus.UNKNOWN:
            logger.warning("ignored a status on %r without a known state", message.topic)
            return None
        self.statuses.append(status)
        if status.terminal:
            try:
                self.outcome = result_from_reply(
                    self.goal_id, payload, self._result_type, message.topic
                )
            except PayloadValidationError as error:
                error.sender = message.sender
                self.invalid_result = error
                self._report_invalid(error)
        return "status", status


def new_goal_id() -> str:
    """A fresh goal id: one topic segment, never used before."""
    return uuid.uuid4().hex


# The coroutines of callbacks still running: a task nobody holds may be collected.
_running_callbacks: set[asyncio.Future[None]] = set()


def _call_back(callback: Callable[..., Any] | None, *args: Any) -> None:
    """Calls a user's callback; what it raises is logged, never more."""
    if callback is None:
        return
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(_awaited(callback, result))
            _running_callbacks.add(task)
            task.add_done_callback(_running_callbacks.discard)
    except Exception:
        logger.exception("the action callback %r failed", callback)


async def _awaited(callback: Callable[..., Any], pending: Awaitable[Any]) -> None:
    try:
        await pending
    except Exception:
        logger.exception("the action callback %r failed", callback)


# -- the service --------------------------------------------------------------------------
class Goal:
    """A goal as ``on_goal`` gets it: ``id``, ``data`` (the goal as sent, decoded into
    the service's ``goal_type`` when it has one), and the means to report on it.

    A synchronous ``on_goal`` runs in a thread of its own and should return soon after
    :attr:`cancel_event` is set, with its partial result; an asynchronous one is
    cancelled as a task (``asyncio.CancelledError`` is raised at its ``await``): it may
    catch that and return its partial result, or leave it with :meth:`set_result`
    beforehand. :meth:`send_feedback` may be called from either.
    """

    def __init__(self, service: ActionService, goal_id: str, data: Any) -> None:
        self.id = goal_id
        """The goal's id, made by the client."""
        self.data = data
        """The goal, as sent (decoded into ``goal_type`` when the service has one)."""
        self.cancel_event = threading.Event()
        """Set when a cancel has been accepted (for a synchronous ``on_goal``)."""
        self.status = GoalStatus.ACCEPTED
        """Where the goal stands."""
        self.result: Any = None
        """The result so far (see :meth:`set_result`), then the goal's result."""
        self.error: str | None = None
        """Why it was aborted, once it was."""
        self._service = service
        self._work: asyncio.Future[Any] | None = None
        self._ended = asyncio.get_running_loop().create_future()
        self._stopping = False

    @property
    def canceled(self) -> bool:
        """True once a cancel has been accepted."""
        return self.cancel_event.is_set()

    def send_feedback(self, feedback: Any) -> None:
        """Publishes ``feedback`` (a JSON value, a dataclass, a pydantic model) on the
        goal's feedback topic, after the feedback sent before it; from any thread. The
        value is encoded at once, so it may be changed afterwards. Feedback sent after
        the goal has ended is dropped (and logged)."""
        self._service._send(self, "feedback", {"goal_id": self.id, "feedback": encode(feedback)})

    def set_result(self, result: Any) -> None:
        """Keeps ``result`` as the goal's result so far: the partial result of an
        asynchronous ``on_goal`` that is cancelled without returning one."""
        self.result = result

    def _snapshot(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = {
            "goal_id": self.id,
            "status": int(self.status),
            "state": self.status.name,
        }
        if self.status.terminal:
            snapshot["result"] = encode(self.result)
            snapshot["error"] = self.error
        return snapshot


OnGoal = Callable[[Goal], Any]
"""``on_goal(goal)``: a function (run in a thread) or a coroutine function (run as a
task); what it returns is the result."""


class ActionService:
    """Serves the action ``name`` on ``client``: each goal accepted is given to
    ``on_goal(goal)`` (see :class:`Goal`), its statuses and feedback are published in
    order, and its result is kept for :meth:`ActionClient.get_result` (the last
    ``keep_results`` ended goals).

    ``on_goal`` returning gives SUCCEEDED with its value; raising gives ABORTED with the
    exception's type and message (commlib marks such a goal succeeded); returning or
    ending after a cancel gives CANCELED with the partial result. At most
    ``concurrent_goals`` goals run at once (1 by default): a goal past that is refused
    (the client's ``send_goal`` raises :class:`GoalRefusedError`), as is one whose data
    does not decode into ``goal_type``. ``on_cancel(goal)``, when given, is called on
    the event loop when a cancel is asked for; returning ``False`` refuses it.

    >>> async with ActionService(client, "robot.move", on_goal):
    ...     await stop_requested.wait()
    """

    def __init__(
        self,
        client: BrokerClient,
        name: str,
        on_goal: OnGoal,
        on_cancel: Callable[[Goal], bool | None] | None = None,
        *,
        goal_type: Any = None,
        concurrent_goals: int = 1,
        keep_results: int = 100,
    ) -> None:
        if not callable(on_goal):
            raise TypeError(f"on_goal must be callable, got {on_goal!r}")
        if on_cancel is not None and not callable(on_cancel):
            raise TypeError(f"on_cancel must be callable, got {on_cancel!r}")
        for option, value in (
            ("concurrent_goals", concurrent_goals),
            ("keep_results", keep_results),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be a whole number of 1 or more, got {value!r}")
        self.client = client
        """The client it serves on."""
        self.topics = _Topics(name)
        self._on_goal = on_goal
        self._is_async = inspect.iscoroutinefunction(on_goal) or inspect.iscoroutinefunction(
            getattr(on_goal, "__call__", None)  # noqa: B004 - a callable object's method
        )
        self._on_cancel = on_cancel
        self._goal_type = goal_type
        self._concurrent_goals = concurrent_goals
        self._keep_results = keep_results
        self._goals: collections.OrderedDict[str, Goal] = collections.OrderedDict()
        self._subscription: Subscription | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._outbox: asyncio.Queue[tuple[str, dict[str, Any]]] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._runs: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        """The action's name: the prefix of its topics."""
        return self.topics.name

    @property
    def goals(self) -> dict[str, GoalStatus]:
        """The goals it knows (running, then ended among ``keep_results``) by id."""
        return {goal_id: goal.status for goal_id, goal in self._goals.items()}

    async def start(self) -> None:
        """Starts answering goals, cancels and result requests; returns once the broker
        holds the subscription. Does nothing when started already."""
        if self._subscription is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._outbox = asyncio.Queue()
        self._publisher = self._loop.create_task(self._publish_in_order())
        topics = self.topics
        self._subscription = await self.client.subscribe(
            [topics.goal, topics.cancel, topics.result, topics.goals], self._on_request
        )

    async def stop(self, timeout: float = 5.0) -> None:
        """Stops taking requests. Goals still running are cancelled (their
        ``cancel_event`` set, their task cancelled) and reported ABORTED, "the action
        service stopped"; what was published is sent within ``timeout`` seconds."""
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return
        with contextlib.suppress(BrokerError):
            await subscription.unsubscribe()
        for goal in list(self._goals.values()):
            if not goal.status.terminal:
                goal._stopping = True
                goal.cancel_event.set()
                if goal._work is not None:
                    goal._work.cancel()
                self._end(goal, GoalStatus.ABORTED, goal.result, "the action service stopped")
        for run in list(self._runs):
            run.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)
        assert self._outbox is not None and self._publisher is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._outbox.join(), timeout)
        self._publisher.cancel()
        await asyncio.gather(self._publisher, return_exceptions=True)

    async def __aenter__(self) -> ActionService:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- requests -------------------------------------------------------------------------
    def _on_request(self, message: Message) -> Any:
        payload = message.payload if isinstance(message.payload, dict) else {}
        topics = self.topics
        if message.topic == topics.goal:
            return self._take_goal(payload, message.sender)
        if message.topic == topics.goals:
            return {"goals": [goal._snapshot() for goal in self._goals.values()]}
        goal_id = payload.get("goal_id")
        goal = self._goals.get(goal_id) if isinstance(goal_id, str) else None
        if goal is None:
            return {"goal_id": goal_id, "status": int(GoalStatus.UNKNOWN)}
        if message.topic == topics.cancel:
            return self._cancel(goal)
        wait = payload.get("wait", 0)
        if goal.status.terminal or not isinstance(wait, (int, float)) or not wait > 0:
            return goal._snapshot()
        return self._snapshot_when_ended(goal, float(wait))

    def _take_goal(self, request: dict[str, Any], sender: str) -> dict[str, Any]:
        goal_id = request.get("goal_id")
        if not isinstance(goal_id, str) or not _GOAL_ID.match(goal_id):
            return _refusal(
                goal_id, f"a goal needs a goal_id of 1-64 letters, digits, - or _ (got {goal_id!r})"
            )
        if goal_id in self._goals:
            return _refusal(goal_id, f"goal id {goal_id} is in use")
        running = [goal.id for goal in self._goals.values() if not goal.status.terminal]
        if len(running) >= self._concurrent_goals:
            busy = ", ".join(running)
            return _refusal(
                goal_id,
                f"goal {busy} is running and the service runs {self._concurrent_goals} at a time",
            )
        data = request.get("goal")
        if self._goal_type is not None:
            try:
                data = decode(data, self._goal_type, self.topics.goal)
            except PayloadValidationError as error:
                error.sender = sender
                self.client._core.report_invalid(error)
                return _refusal(goal_id, str(error))
        goal = Goal(self, goal_id, data)
        self._goals[goal_id] = goal
        self._forget_old_goals()
        self._publish_status(goal)
        assert self._loop is not None
        run = self._loop.create_task(self._run(goal))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)
        return {"goal_id": goal_id, "accepted": True, "status": int(goal.status)}

    def _cancel(self, goal: Goal) -> dict[str, Any]:
        if goal.status in (GoalStatus.ACCEPTED, GoalStatus.RUNNING):
            if self._on_cancel is not None:
                try:
                    refused = self._on_cancel(goal) is False
                except Exception:
                    logger.exception("on_cancel of action %r failed on goal %s", self.name, goal.id)
                    refused = True
                if refused:
                    return {**goal._snapshot(), "refused": True}
            goal.status = GoalStatus.CANCELING
            goal.cancel_event.set()
            self._publish_status(goal)
            if goal._work is not None and self._is_async:
                goal._work.cancel()
        return goal._snapshot()

    async def _snapshot_when_ended(self, goal: Goal, wait: float) -> dict[str, Any]:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(goal._ended), wait)
        return goal._snapshot()

    def _forget_old_goals(self) -> None:
        ended = [goal_id for goal_id, goal in self._goals.items() if goal.status.terminal]
        for goal_id in ended[: max(len(ended) - self._keep_results, 0)]:
            del self._goals[goal_id]

    # -- running a goal -------------------------------------------------------------------
    async def _run(self, goal: Goal) -> None:
        if goal.canceled:  # canceled before it started
            self._end(goal, GoalStatus.CANCELED, goal.result, None)
            return
        goal.status = GoalStatus.RUNNING
        self._publish_status(goal)
        goal._work = self._start_work(goal)
        try:
            result = await goal._work
        except asyncio.CancelledError:
            if goal._stopping or not goal.canceled:
                raise
            self._end(goal, GoalStatus.CANCELED, goal.result, None)
        except Exception as error:
            logger.warning("goal %s of action %r aborted: %r", goal.id, self.name, error)
            self._end(goal, GoalStatus.ABORTED, goal.result, f"{type(error).__name__}: {error}")
        else:
            ended = GoalStatus.CANCELED if goal.canceled else GoalStatus.SUCCEEDED
            self._end(goal, ended, result, None)

    def _start_work(self, goal: Goal) -> asyncio.Future[Any]:
        if self._is_async:
            return asyncio.ensure_future(self._on_goal(goal))
        # Its own thread, not the loop's executor: a goal may run for hours, and goals
        # must never wait for one another's threads.
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[Any] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            if outcome.done():
                return
            if error is None:
                outcome.set_result(result)
            else:
                outcome.set_exception(error)

        def work() -> None:
            try:
                result, error = self._on_goal(goal), None
            except Exception as raised:
                result, error = None, raised
            with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
                loop.call_soon_threadsafe(settle, result, error)

        threading.Thread(target=work, name=f"goal-{self.name}-{goal.id}", daemon=True).start()
        return outcome

    def _end(self, goal: Goal, status: GoalStatus, result: Any, error: str | None) -> None:
        if goal.status.terminal:
            return
        goal.status, goal.result, goal.error = status, result, error
        self._publish_status(goal)
        if not goal._ended.done():
            goal._ended.set_result(None)
        self._forget_old_goals()

    # -- publishing in order ----------------------------------------------------------------
    def _publish_status(self, goal: Goal) -> None:
        self._send(goal, "status", goal._snapshot())

    def _send(self, goal: Goal, kind: str, payload: dict[str, Any]) -> None:
        """Queues a message of the goal for the publisher task, from any thread: one
        task publishes them all, so they reach the broker in the order they were sent."""
        loop, outbox = self._loop, self._outbox
        assert loop is not None and outbox is not None
        topic = self.topics.feedback(goal.id) if kind == "feedback" else self.topics.status(goal.id)
        if threading.get_ident() == self._loop_thread:
            self._queue(goal, kind, topic, payload)
        else:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody hears
                loop.call_soon_threadsafe(self._queue, goal, kind, topic, payload)

    def _queue(self, goal: Goal, kind: str, topic: str, payload: dict[str, Any]) -> None:
        if kind == "feedback" and goal.status.terminal:
            logger.warning(
                "feedback for goal %s of action %r after it ended: dropped", goal.id, self.name
            )
            return
        assert self._outbox is not None
        self._outbox.put_nowait((topic, payload))

    async def _publish_in_order(self) -> None:
        assert self._outbox is not None
        while True:
            topic, payload = await self._outbox.get()
            try:
                await self.client.publish(topic, payload)
            except BrokerError as error:
                logger.error("action %r could not publish on %r: %s", self.name, topic, error)
            finally:
                self._outbox.task_done()


def _refusal(goal_id: Any, reason: str) -> dict[str, Any]:
    return {"goal_id": goal_id, "accepted": False, "reason": reason}


# -- the client ---------------------------------------------------------------------------
class GoalHandle:
    """A goal sent by :meth:`ActionClient.send_goal`: where it stands, and how to wait
    for its end or cancel it. Not made directly."""

    def __init__(
        self,
        action: ActionClient,
        tracker: GoalTracker,
        on_feedback: Callable[[Any], Any] | None,
        on_status: Callable[[GoalStatus], Any] | None,
        on_result: Callable[[GoalResult], Any] | None,
    ) -> None:
        self._action = action
        self._tracker = tracker
        self._on_feedback = on_feedback
        self._on_status = on_status
        self._on_result = on_result
        self._ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._subscription: Subscription | None = None
        self._closing: asyncio.Task[None] | None = None

    @property
    def goal_id(self) -> str:
        """The goal's id."""
        return self._tracker.goal_id

    @property
    def status(self) -> GoalStatus:
        """The last status heard (UNKNOWN before the first)."""
        statuses = self._tracker.statuses
        return statuses[-1] if statuses else GoalStatus.UNKNOWN

    @property
    def statuses(self) -> list[GoalStatus]:
        """Every status heard, in order (ACCEPTED, RUNNING, ..., the terminal one)."""
        return list(self._tracker.statuses)

    @property
    def done(self) -> bool:
        """True once a terminal status has come."""
        return self._ended.done()

    async def result(self, timeout: float | None = None) -> GoalResult:
        """How the goal ended, once it has: waits up to ``timeout`` seconds (``None``:
        as long as it takes) and raises ``TimeoutError`` past that. Raises
        :class:`PayloadValidationError` when the result does not decode into the
        client's ``result_type``. (Status messages published while the connection was
        down are not kept: after a reconnection, ask :meth:`ActionClient.get_result`.)"""
        try:
            await asyncio.wait_for(asyncio.shield(self._ended), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"goal {self.goal_id} did not end within {timeout} s") from None
        if self._tracker.invalid_result is not None:
            raise self._tracker.invalid_result
        assert self._tracker.outcome is not None
        return self._tracker.outcome

    async def cancel(self, timeout: float = 5.0) -> GoalStatus:
        """Asks the service to cancel the goal; returns its status after the request
        (CANCELING when accepted, the terminal status when it had ended)."""
        return await self._action.cancel_goal(self.goal_id, timeout=timeout)

    def _on_message(self, message: Message) -> None:
        taken = self._tracker.take(message)
        if taken is None:
            return
        kind, value = taken
        if kind == "feedback":
            _call_back(self._on_feedback, value)
            return
        _call_back(self._on_status, value)
        if value.terminal and not self._ended.done():
            self._ended.set_result(None)
            if self._tracker.outcome is not None:
                _call_back(self._on_result, self._tracker.outcome)
            self._closing = asyncio.ensure_future(self._close())

    async def _close(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(BrokerError):
                await self._subscription.unsubscribe()


class ActionClient:
    """Sends goals to the action ``name`` on ``client``. ``feedback_type`` and
    ``result_type`` (a dataclass, a pydantic model) decode what comes back; feedback
    that does not validate is logged and given to the client's ``on_error``, never to
    ``on_feedback``.

    >>> goal = await ActionClient(client, "robot.move").send_goal({"target_cm": 5})
    >>> print((await goal.result(timeout=60)).result)
    """

    def __init__(
        self,
        client: BrokerClient,
        name: str,
        *,
        feedback_type: Any = None,
        result_type: Any = None,
    ) -> None:
        self.client = client
        """The client it sends on."""
        self.topics = _Topics(name)
        self._feedback_type = feedback_type
        self._result_type = result_type

    @property
    def name(self) -> str:
        """The action's name: the prefix of its topics."""
        return self.topics.name

    async def send_goal(
        self,
        goal: Any = None,
        *,
        timeout: float = 5.0,
        on_feedback: Callable[[Any], Any] | None = None,
        on_status: Callable[[GoalStatus], Any] | None = None,
        on_result: Callable[[GoalResult], Any] | None = None,
    ) -> GoalHandle:
        """Sends ``goal`` (a JSON value, a dataclass, a pydantic model) and returns its
        :class:`GoalHandle` once the service has accepted it. ``on_feedback(value)``,
        ``on_status(GoalStatus)`` and ``on_result(GoalResult)`` (functions or coroutine
        functions) hear every feedback and status, the first included: the goal's
        topics are subscribed before the goal is sent.

        Raises :class:`GoalRefusedError` when the service refuses it (it runs all the
        goals it takes, say), :class:`NoRespondersError` at once when no service serves
        the action, and :class:`RequestTimeoutError` when the service does not answer
        within ``timeout`` seconds."""
        tracker = GoalTracker(
            self.topics,
            new_goal_id(),
            self._feedback_type,
            self._result_type,
            self.client._core.report_invalid,
        )
        handle = GoalHandle(self, tracker, on_feedback, on_status, on_result)
        subscription = await self.client.subscribe(
            self.topics.of_goal(tracker.goal_id), handle._on_message
        )
        handle._subscription = subscription
        try:
            reply = await self.client.request(
                self.topics.goal, {"goal_id": tracker.goal_id, "goal": encode(goal)}, timeout
            )
            if not isinstance(reply, dict) or reply.get("accepted") is not True:
                reason = str(reply.get("reason", reply) if isinstance(reply, dict) else reply)
                raise GoalRefusedError(
                    f"the action {self.name!r} refused goal {tracker.goal_id}: {reason}",
                    tracker.goal_id,
                    reason,
                )
        except BaseException:
            with contextlib.suppress(BrokerError):
                await subscription.unsubscribe()
            raise
        return handle

    async def cancel_goal(self, goal_id: str, *, timeout: float = 5.0) -> GoalStatus:
        """Asks the service to cancel goal ``goal_id``; returns its status after the
        request (CANCELING when accepted, RUNNING when ``on_cancel`` refused, the
        terminal status when it had ended). Raises :class:`UnknownGoalError` when the
        service does not know the goal."""
        reply = await self.client.request(self.topics.cancel, {"goal_id": goal_id}, timeout)
        status = _snapshot_status(reply)
        if status is GoalStatus.UNKNOWN:
            raise UnknownGoalError(f"the action service does not know goal {goal_id}", goal_id)
        return status

    async def get_result(
        self, goal_id: str, *, wait: float = 0.0, timeout: float = 5.0
    ) -> GoalResult:
        """Where goal ``goal_id`` stands, and how it ended once it has: for a client that
        did not send it (it learned the id from :meth:`goals` or a status topic) or that
        reconnected. With ``wait`` (seconds) the service answers once the goal has
        ended, or when ``wait`` has passed. Raises :class:`UnknownGoalError` when the
        service does not know the goal."""
        reply = await self.client.request(
            self.topics.result, {"goal_id": goal_id, "wait": wait}, timeout + wait
        )
        return result_from_reply(goal_id, reply, self._result_type, self.topics.result)

    async def goals(self, *, timeout: float = 5.0) -> dict[str, GoalStatus]:
        """The goals the service knows (running, then the ended ones it keeps) by id."""
        reply = await self.client.request(self.topics.goals, {}, timeout)
        goals = reply.get("goals", []) if isinstance(reply, dict) else []
        return {goal["goal_id"]: _snapshot_status(goal) for goal in goals}
