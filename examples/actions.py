"""An action, as commlib has them: a goal that runs a while, with feedback on the way,
a result at the end, and a cancel.

    python examples/actions.py [--port PORT]

A broker in this process, a service that "moves" a robot one centimetre at a time,
and a client that sends two goals: the first runs to its end, the second is canceled
half-way and returns where it got to. The default port 0 picks a free one.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses

from message_broker import BrokerClient, BrokerConfig, MessageBroker
from message_broker.actions import ActionClient, ActionService, Goal


@dataclasses.dataclass
class Move:
    target_cm: int


@dataclasses.dataclass
class Progress:
    current_cm: int


@dataclasses.dataclass
class Reached:
    dest_cm: int


def move(goal: Goal) -> Reached:
    """Runs in a thread of its own: it may block, and watches its cancel event."""
    travelled = 0
    while travelled < goal.data.target_cm and not goal.cancel_event.wait(0.01):
        goal.send_feedback(Progress(travelled))
        travelled += 1
    return Reached(travelled)


async def main(port: int) -> None:
    async with MessageBroker(BrokerConfig(host="127.0.0.1", port=port)) as broker:
        assert broker.port is not None
        async with (
            BrokerClient("robot", "127.0.0.1", broker.port) as robot,
            BrokerClient("operator", "127.0.0.1", broker.port) as operator,
            ActionService(robot, "robot.move", move, goal_type=Move),
        ):
            action = ActionClient(
                operator, "robot.move", feedback_type=Progress, result_type=Reached
            )

            goal = await action.send_goal(Move(target_cm=3), on_feedback=print)
            outcome = await goal.result(timeout=30)
            print(f"goal 1: {outcome.status.name} {outcome.result}")

            half_way = asyncio.Event()

            def on_feedback(progress: Progress) -> None:
                if progress.current_cm == 2:
                    half_way.set()

            goal = await action.send_goal(Move(target_cm=1000), on_feedback=on_feedback)
            await asyncio.wait_for(half_way.wait(), 30)
            await goal.cancel()
            outcome = await goal.result(timeout=30)
            print(f"goal 2: {outcome.status.name} {outcome.result}")
            print("statuses:", " ".join(status.name for status in goal.statuses))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: any free one)")
    asyncio.run(main(parser.parse_args().port))
