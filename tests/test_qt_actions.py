"""QtActionClient: goals sent from a Qt client, with feedback, status and result as
signals, to an ActionService running on an asyncio loop in a thread of its own
(headless: QT_QPA_PLATFORM=offscreen, set in conftest)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from message_broker import BrokerClient
from message_broker.actions import ActionService, Goal, GoalResult, GoalStatus
from message_broker.qt_actions import QtActionClient
from message_broker.qt_client import QtBrokerClient

WAIT_MS = 10_000
ACCEPTED, RUNNING, CANCELING = GoalStatus.ACCEPTED, GoalStatus.RUNNING, GoalStatus.CANCELING
SUCCEEDED, ABORTED, CANCELED = GoalStatus.SUCCEEDED, GoalStatus.ABORTED, GoalStatus.CANCELED


class ServiceThread:
    """Action services on a client of their own, on an asyncio loop in a thread."""

    def __init__(self, port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.client = BrokerClient("qt-actions-service", "127.0.0.1", port)
        assert self.run(self.client.connect())
        self.services: list[ActionService] = []

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=20)

    def serve(self, name: str, on_goal: Callable[[Goal], Any], **options: Any) -> None:
        async def start() -> None:
            service = ActionService(self.client, name, on_goal, **options)
            await service.start()
            self.services.append(service)

        self.run(start())

    def close(self) -> None:
        async def stop() -> None:
            for service in self.services:
                await service.stop()
            await self.client.disconnect()

        try:
            self.run(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=20)
            self.loop.close()


@pytest.fixture
def service(broker) -> Iterator[ServiceThread]:
    services = ServiceThread(broker.port)
    yield services
    services.close()


@pytest.fixture
def qt_client(qtbot, broker):
    clients: list[QtBrokerClient] = []

    def make(client_id: str = "qt") -> QtBrokerClient:
        client = QtBrokerClient(client_id, "127.0.0.1", broker.port)
        with qtbot.waitSignal(client.connected, timeout=WAIT_MS):
            client.connect_to_broker()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.disconnect_from_broker()


class Recorder:
    """Everything a QtActionClient emits, by goal id."""

    def __init__(self, action: QtActionClient) -> None:
        self.feedback: dict[str, list[Any]] = {}
        self.statuses: dict[str, list[GoalStatus]] = {}
        self.results: dict[str, GoalResult] = {}
        self.failures: dict[str, str] = {}
        self.accepted: list[str] = []
        action.feedback.connect(
            lambda goal_id, value: self.feedback.setdefault(goal_id, []).append(value)
        )
        action.status_changed.connect(
            lambda goal_id, status: self.statuses.setdefault(goal_id, []).append(GoalStatus(status))
        )
        action.result.connect(self.results.__setitem__)
        action.goal_failed.connect(self.failures.__setitem__)
        action.goal_accepted.connect(self.accepted.append)


def count_up(goal: Goal) -> dict:
    for value in range(goal.data["n"]):
        goal.send_feedback(value)
    return {"counted": goal.data["n"]}


def test_every_feedback_arrives_through_qt_in_100_of_100_runs(qtbot, qt_client, service):
    service.serve("counter", count_up)
    action = QtActionClient(qt_client(), "counter")
    seen = Recorder(action)
    n = 20
    for _ in range(100):
        with qtbot.waitSignal(action.result, timeout=WAIT_MS) as ended:
            goal_id = action.send_goal({"n": n})
        assert ended.args == [goal_id, GoalResult(goal_id, SUCCEEDED, {"counted": n})]
        assert seen.feedback[goal_id] == list(range(n))
        assert seen.statuses[goal_id] == [ACCEPTED, RUNNING, SUCCEEDED]
    assert len(seen.results) == 100 and seen.failures == {}


def walk_until_canceled(goal: Goal) -> dict:
    walked = 0
    while not goal.cancel_event.wait(0.005):
        walked += 1
        goal.send_feedback(walked)
    return {"walked": walked}


def test_cancel_through_qt_gives_canceling_then_canceled_with_the_partial_result(
    qtbot, qt_client, service
):
    service.serve("walk", walk_until_canceled)
    action = QtActionClient(qt_client(), "walk")
    seen = Recorder(action)
    with qtbot.waitSignal(action.feedback, timeout=WAIT_MS) as first:
        goal_id = action.send_goal()
    assert first.args == [goal_id, 1]
    assert seen.accepted == [goal_id]
    with qtbot.waitSignal(action.result, timeout=WAIT_MS):
        action.cancel_goal(goal_id)
    assert seen.statuses[goal_id] == [ACCEPTED, RUNNING, CANCELING, CANCELED]
    outcome = seen.results[goal_id]
    assert outcome.status is CANCELED and outcome.result["walked"] >= 1


def test_an_abort_through_qt_carries_the_exception_text(qtbot, qt_client, service):
    def fail(goal: Goal) -> None:
        raise RuntimeError("motor stalled")

    service.serve("stall", fail)
    action = QtActionClient(qt_client(), "stall")
    seen = Recorder(action)
    with qtbot.waitSignal(action.result, timeout=WAIT_MS):
        goal_id = action.send_goal()
    assert seen.statuses[goal_id] == [ACCEPTED, RUNNING, ABORTED]
    assert seen.results[goal_id] == GoalResult(
        goal_id, ABORTED, None, "RuntimeError: motor stalled"
    )


def test_a_second_goal_is_refused_through_qt(qtbot, qt_client, service):
    release = threading.Event()

    def hold(goal: Goal) -> str:
        assert release.wait(10)
        return "held"

    service.serve("hold", hold)
    action = QtActionClient(qt_client(), "hold")
    seen = Recorder(action)
    with qtbot.waitSignal(action.goal_accepted, timeout=WAIT_MS):
        first = action.send_goal()
    with qtbot.waitSignal(action.goal_failed, timeout=WAIT_MS):
        second = action.send_goal()
    assert "refused" in seen.failures[second] and first in seen.failures[second]
    with qtbot.waitSignal(action.result, timeout=WAIT_MS):
        release.set()
    assert seen.statuses == {first: [ACCEPTED, RUNNING, SUCCEEDED]}
    assert seen.results[first].result == "held"


def test_no_service_fails_at_once_through_qt(qtbot, qt_client):
    action = QtActionClient(qt_client(), "nobody.here")
    started = time.monotonic()
    with qtbot.waitSignal(action.goal_failed, timeout=WAIT_MS) as failed:
        goal_id = action.send_goal({"n": 1}, timeout=10)
    assert failed.args[0] == goal_id and "no responders" in failed.args[1].lower()
    assert time.monotonic() - started < 2


def test_a_hung_service_times_out_through_qt(qtbot, qt_client):
    hung = qt_client("hung-service")
    with qtbot.waitSignal(hung.subscribed, timeout=WAIT_MS):
        hung.subscribe("hung.goal", lambda msg: None)  # never answers
    action = QtActionClient(qt_client(), "hung")
    started = time.monotonic()
    with qtbot.waitSignal(action.goal_failed, timeout=WAIT_MS) as failed:
        action.send_goal(timeout=0.3)
    assert "timeout" in failed.args[1].lower() or "timed out" in failed.args[1].lower()
    assert 0.3 <= time.monotonic() - started < 5


def test_a_late_qt_client_gets_the_result(qtbot, qt_client, service):
    service.serve("counter", count_up)
    sender = QtActionClient(qt_client("sender"), "counter")
    with qtbot.waitSignal(sender.result, timeout=WAIT_MS):
        goal_id = sender.send_goal({"n": 2})
    late = QtActionClient(qt_client("late"), "counter")
    with qtbot.waitSignal(late.result, timeout=WAIT_MS) as got:
        late.get_result(goal_id)
    assert got.args == [goal_id, GoalResult(goal_id, SUCCEEDED, {"counted": 2})]
    with qtbot.waitSignal(late.goal_failed, timeout=WAIT_MS) as failed:
        late.get_result("0123abcd")
    assert failed.args == ["0123abcd", "the action service does not know goal 0123abcd"]


@dataclasses.dataclass
class Progress:
    current_cm: int


def test_typed_feedback_through_qt_and_what_does_not_validate(qtbot, qt_client, service):
    def move(goal: Goal) -> None:
        goal.send_feedback({"current_cm": "far"})
        goal.send_feedback(Progress(1))

    service.serve("move", move)
    client = qt_client()
    errors: list[str] = []
    client.error_occurred.connect(errors.append)
    action = QtActionClient(client, "move", feedback_type=Progress)
    seen = Recorder(action)
    with qtbot.waitSignal(action.result, timeout=WAIT_MS):
        goal_id = action.send_goal()
    assert seen.feedback[goal_id] == [Progress(1)]
    assert len(errors) == 1 and "not a valid Progress" in errors[0]


def test_qt_subscriptions_decode_typed_payloads_and_report_what_does_not_validate(qtbot, qt_client):
    client = qt_client()
    errors: list[str] = []
    client.error_occurred.connect(errors.append)
    received: list[Any] = []
    with qtbot.waitSignal(client.subscribed, timeout=WAIT_MS):
        client.subscribe("robot.progress", lambda msg: received.append(msg.payload), type=Progress)
    client.publish("robot.progress", {"current_cm": "far"})
    with qtbot.waitSignal(client.message_received, timeout=WAIT_MS):
        client.publish("robot.progress", Progress(7))  # the marker, after the bad one
    qtbot.waitUntil(lambda: len(received) == 1, timeout=WAIT_MS)
    assert received == [Progress(7)]
    assert len(errors) == 1 and "not a valid Progress" in errors[0]

    with qtbot.waitSignal(client.subscribed, timeout=WAIT_MS):
        client.subscribe(
            "robot.where", lambda msg: Progress(msg.payload.current_cm + 1), type=Progress
        )
    with qtbot.waitSignal(client.reply_received, timeout=WAIT_MS) as replied:
        client.request("robot.where", Progress(1), response_type=Progress)
    assert replied.args[1] == Progress(2)


def test_the_qt_action_client_documents_its_public_names():
    members = [
        name
        for name, member in vars(QtActionClient).items()
        if not name.startswith("_")
        and (callable(member) or isinstance(member, property))
        and type(member).__name__ != "Signal"
    ]
    assert QtActionClient.__doc__
    assert members and [n for n in members if not getattr(QtActionClient, n).__doc__] == []
