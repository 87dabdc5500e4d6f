"""Actions: goals with feedback, cancel and a result, between two clients of one broker."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from message_broker import (
    BrokerClient,
    BrokerError,
    GoalRefusedError,
    NoRespondersError,
    PayloadValidationError,
    RequestTimeoutError,
    UnknownGoalError,
)
from message_broker.actions import ActionClient, ActionService, Goal, GoalResult, GoalStatus

from support import REPOSITORY
from support.readme import readme_blocks
from support.waiting import eventually

ACCEPTED, RUNNING, CANCELING = GoalStatus.ACCEPTED, GoalStatus.RUNNING, GoalStatus.CANCELING
SUCCEEDED, ABORTED, CANCELED = GoalStatus.SUCCEEDED, GoalStatus.ABORTED, GoalStatus.CANCELED


@pytest.fixture
async def pair(make_client):
    """(service's client, goal sender's client)."""
    return await make_client("service"), await make_client("sender")


async def count_up(goal: Goal) -> dict:
    for value in range(goal.data["n"]):
        goal.send_feedback(value)
    return {"counted": goal.data["n"]}


def count_up_in_a_thread(goal: Goal) -> dict:
    assert threading.current_thread() is not threading.main_thread()
    for value in range(goal.data["n"]):
        goal.send_feedback(value)
    return {"counted": goal.data["n"]}


@pytest.mark.parametrize("on_goal", [count_up, count_up_in_a_thread], ids=["async", "sync"])
async def test_every_feedback_arrives_in_100_of_100_runs(pair, on_goal):
    service_client, sender = pair
    n = 20
    complete = 0
    async with ActionService(service_client, "counter", on_goal):
        action = ActionClient(sender, "counter")
        for _ in range(100):
            feedback: list[int] = []
            goal = await action.send_goal({"n": n}, on_feedback=feedback.append)
            outcome = await goal.result(timeout=10)
            assert outcome == GoalResult(goal.goal_id, SUCCEEDED, {"counted": n})
            assert feedback == list(range(n))
            complete += 1
    assert complete == 100


async def test_a_goal_that_succeeds_goes_accepted_running_succeeded(pair):
    service_client, sender = pair
    heard: list[GoalStatus] = []
    results: list[GoalResult] = []
    async with ActionService(service_client, "counter", count_up):
        goal = await ActionClient(sender, "counter").send_goal(
            {"n": 3}, on_status=heard.append, on_result=results.append
        )
        outcome = await goal.result(timeout=10)
    assert outcome.succeeded and outcome.result == {"counted": 3} and outcome.error is None
    assert goal.statuses == heard == [ACCEPTED, RUNNING, SUCCEEDED]
    assert goal.done and goal.status is SUCCEEDED
    assert results == [outcome]


def walk_until_canceled(goal: Goal) -> dict:
    walked = 0
    while not goal.cancel_event.wait(0.005):
        walked += 1
        goal.send_feedback(walked)
    return {"walked": walked}


async def test_a_sync_goal_canceled_ends_canceling_then_canceled_with_its_partial_result(pair):
    service_client, sender = pair
    started = asyncio.Event()
    async with ActionService(service_client, "walk", walk_until_canceled):
        goal = await ActionClient(sender, "walk").send_goal(on_feedback=lambda _: started.set())
        await asyncio.wait_for(started.wait(), 10)
        assert await goal.cancel() is CANCELING
        outcome = await goal.result(timeout=10)
    assert goal.statuses == [ACCEPTED, RUNNING, CANCELING, CANCELED]
    assert outcome.status is CANCELED
    assert outcome.result["walked"] >= 1


@pytest.mark.parametrize("catches_the_cancel", [True, False])
async def test_an_async_goal_is_canceled_as_a_task(pair, catches_the_cancel):
    service_client, sender = pair
    running = asyncio.Event()

    async def wait_forever(goal: Goal) -> dict:
        goal.set_result({"progress": "half"})
        running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if catches_the_cancel:
                return {"progress": "half, said on the way out"}
            raise
        raise AssertionError("never reached")

    async with ActionService(service_client, "wait", wait_forever):
        goal = await ActionClient(sender, "wait").send_goal()
        await asyncio.wait_for(running.wait(), 10)
        assert await goal.cancel() is CANCELING
        outcome = await goal.result(timeout=10)
    assert goal.statuses == [ACCEPTED, RUNNING, CANCELING, CANCELED]
    expected = "half, said on the way out" if catches_the_cancel else "half"
    assert outcome.result == {"progress": expected}


def fail_sync(goal: Goal) -> None:
    raise ValueError(f"target {goal.data} is out of reach")


async def fail_async(goal: Goal) -> None:
    raise ValueError(f"target {goal.data} is out of reach")


@pytest.mark.parametrize("on_goal", [fail_sync, fail_async], ids=["sync", "async"])
async def test_a_goal_that_raises_is_aborted_with_the_exception_text(pair, on_goal):
    service_client, sender = pair
    async with ActionService(service_client, "reach", on_goal):
        goal = await ActionClient(sender, "reach").send_goal(99)
        outcome = await goal.result(timeout=10)
    assert goal.statuses == [ACCEPTED, RUNNING, ABORTED]
    assert outcome == GoalResult(
        goal.goal_id, ABORTED, None, "ValueError: target 99 is out of reach"
    )


async def test_a_second_goal_is_refused_while_one_runs(pair):
    service_client, sender = pair
    release = threading.Event()

    def hold(goal: Goal) -> str:
        assert release.wait(10)
        return "held"

    async with ActionService(service_client, "hold", hold) as service:
        action = ActionClient(sender, "hold")
        first = await action.send_goal()
        refused_statuses: list[GoalStatus] = []
        with pytest.raises(GoalRefusedError) as refused:
            await action.send_goal(on_status=refused_statuses.append)
        assert first.goal_id in refused.value.reason and "running" in refused.value.reason
        assert refused.value.goal_id not in service.goals
        release.set()
        assert (await first.result(timeout=10)).result == "held"
        third = await action.send_goal()
        assert (await third.result(timeout=10)).succeeded
    assert first.statuses == [ACCEPTED, RUNNING, SUCCEEDED]
    assert refused_statuses == []


async def test_concurrent_goals_runs_that_many_at_once(pair):
    service_client, sender = pair
    release = threading.Event()

    def hold(goal: Goal) -> int:
        assert release.wait(10)
        return goal.data

    async with ActionService(service_client, "hold", hold, concurrent_goals=2):
        action = ActionClient(sender, "hold")
        first, second = await action.send_goal(1), await action.send_goal(2)
        with pytest.raises(GoalRefusedError, match="2 at a time"):
            await action.send_goal(3)
        release.set()
        outcomes = [await first.result(timeout=10), await second.result(timeout=10)]
    assert [outcome.result for outcome in outcomes] == [1, 2]


async def test_no_service_fails_at_once(pair):
    _, sender = pair
    started = time.monotonic()
    with pytest.raises(NoRespondersError):
        await ActionClient(sender, "nobody.here").send_goal({"n": 1}, timeout=10)
    assert time.monotonic() - started < 2


async def test_a_hung_service_times_out(pair):
    service_client, sender = pair
    await service_client.subscribe("hung.goal", lambda msg: None)  # never answers
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError):
        await ActionClient(sender, "hung").send_goal(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 5


async def test_a_late_joiner_gets_the_result(pair, make_client):
    service_client, sender = pair
    release = threading.Event()

    def hold(goal: Goal) -> str:
        assert release.wait(10)
        return "done"

    async with ActionService(service_client, "hold", hold):
        goal = await ActionClient(sender, "hold").send_goal()
        late = ActionClient(await make_client("late"), "hold")
        assert await late.goals() == {goal.goal_id: RUNNING}
        assert await late.get_result(goal.goal_id) == GoalResult(goal.goal_id, RUNNING)
        waiting = asyncio.ensure_future(late.get_result(goal.goal_id, wait=10))
        await asyncio.sleep(0)  # its request is sent
        # Answered after the service took the waiting request: it holds its answer.
        assert await late.goals() == {goal.goal_id: RUNNING}
        assert not waiting.done()
        release.set()
        assert await waiting == GoalResult(goal.goal_id, SUCCEEDED, "done")
        assert await late.get_result(goal.goal_id) == GoalResult(goal.goal_id, SUCCEEDED, "done")
        with pytest.raises(UnknownGoalError):
            await late.get_result("0123abcd")
        with pytest.raises(UnknownGoalError):
            await late.cancel_goal("0123abcd")


async def test_on_cancel_may_refuse_a_cancel(pair):
    service_client, sender = pair
    release = threading.Event()

    def hold(goal: Goal) -> str:
        assert release.wait(10)
        return "finished anyway"

    async with ActionService(service_client, "hold", hold, on_cancel=lambda goal: False):
        goal = await ActionClient(sender, "hold").send_goal()
        assert await goal.cancel() is RUNNING
        release.set()
        outcome = await goal.result(timeout=10)
    assert goal.statuses == [ACCEPTED, RUNNING, SUCCEEDED]
    assert outcome.result == "finished anyway"


async def test_stopping_the_service_aborts_the_goals_it_runs(pair):
    service_client, sender = pair
    service = ActionService(service_client, "walk", walk_until_canceled)
    await service.start()
    goal = await ActionClient(sender, "walk").send_goal()
    await eventually(lambda: goal.status is RUNNING)
    await service.stop()
    outcome = await goal.result(timeout=10)
    assert outcome.status is ABORTED and outcome.error == "the action service stopped"
    with pytest.raises(NoRespondersError):
        await ActionClient(sender, "walk").send_goal()


@dataclasses.dataclass
class Target:
    target_cm: int


@dataclasses.dataclass
class Progress:
    current_cm: int


@dataclasses.dataclass
class Reached:
    dest_cm: int


async def test_typed_goals_feedback_and_results(pair):
    service_client, _ = pair
    errors: list[BrokerError] = []
    sender = BrokerClient("typed-sender", "127.0.0.1", service_client.port, on_error=errors.append)
    assert await sender.connect()

    async def move(goal: Goal) -> Reached:
        assert isinstance(goal.data, Target)
        goal.send_feedback({"current_cm": "not a number"})  # does not validate
        for cm in range(goal.data.target_cm):
            goal.send_feedback(Progress(cm))
        return Reached(goal.data.target_cm)

    async with ActionService(service_client, "move", move, goal_type=Target):
        action = ActionClient(sender, "move", feedback_type=Progress, result_type=Reached)
        feedback: list[Progress] = []
        goal = await action.send_goal(Target(3), on_feedback=feedback.append)
        assert await goal.result(timeout=10) == GoalResult(goal.goal_id, SUCCEEDED, Reached(3))
        assert feedback == [Progress(0), Progress(1), Progress(2)]
        assert [type(error) for error in errors] == [PayloadValidationError]
        assert "current_cm" in str(errors[0])

        with pytest.raises(GoalRefusedError, match="target_cm"):
            await action.send_goal({"target_cm": "far"})

        untyped = ActionClient(sender, "move", result_type=Target)
        goal = await untyped.send_goal(Target(1))
        with pytest.raises(PayloadValidationError, match="target_cm"):
            await goal.result(timeout=10)
    await sender.disconnect()


def test_goal_status_has_commlib_numbers_and_knows_ros2_ones():
    assert [(status.name, int(status)) for status in GoalStatus] == [
        ("UNKNOWN", 0),
        ("ACCEPTED", 1),
        ("RUNNING", 2),
        ("CANCELING", 3),
        ("SUCCEEDED", 4),
        ("ABORTED", 5),
        ("CANCELED", 6),
    ]
    assert GoalStatus.SUCCEDED is GoalStatus.SUCCEEDED  # commlib's spelling
    assert (ABORTED.ros2, CANCELED.ros2, SUCCEEDED.ros2) == (6, 5, 4)
    assert GoalStatus.from_ros2(5) is CANCELED and GoalStatus.from_ros2(6) is ABORTED
    assert [status for status in GoalStatus if status.terminal] == [SUCCEEDED, ABORTED, CANCELED]


def test_the_actions_example_runs_on_the_port_given():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        [sys.executable, str(REPOSITORY / "examples" / "actions.py"), "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        "Progress(current_cm=0)",
        "Progress(current_cm=1)",
        "Progress(current_cm=2)",
        "goal 1: SUCCEEDED Reached(dest_cm=3)",
    ]
    assert re.fullmatch(r"goal 2: CANCELED Reached\(dest_cm=\d+\)", lines[4])
    assert lines[5:] == ["statuses: ACCEPTED RUNNING CANCELING CANCELED"]


def test_the_readme_commlib_examples_run_as_written():
    blocks = readme_blocks("## Coming from commlib", "python")
    assert len(blocks) == 2
    printed = []
    for block in blocks:
        ran = subprocess.run(
            [sys.executable, "-c", block], capture_output=True, text=True, timeout=60
        )
        assert ran.returncode == 0, ran.stderr
        printed += ran.stdout.splitlines()
    assert printed[:3] == [
        "Sum(c=3)",
        "sensors.sonar_front SonarMessage(distance=2.0, horizontal_fov=30.0, vertical_fov=14.0)",
        "TurnOnBedroomLights",
    ]
    assert printed[3:9] == [f"Feedback(current_cm={cm})" for cm in range(5)] + ["Result(dest_cm=5)"]
    assert re.fullmatch(
        r"GoalResult\(goal_id='[0-9a-f]{32}', status=<GoalStatus.SUCCEEDED: 4>, "
        r"result=Result\(dest_cm=5\), error=None\)",
        printed[9],
    )
    assert len(printed) == 10
