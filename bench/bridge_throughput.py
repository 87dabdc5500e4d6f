"""Messages per second through a NATS bridge, each way: a BrokerClient publishes to
our broker, whose bridge carries the messages to nats-server, where a nats-py
subscriber counts them (out); nats-py publishes, the bridge carries them in, a
BrokerClient counts them (in). Median of --runs runs, with at most 5,000 messages on
their way at once (a publisher that outruns an at-most-once path loses messages
instead). Everything but nats-server runs in this one Python process.

    python bench/bridge_throughput.py --messages 50000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nats

from message_broker import BrokerClient, BrokerConfig, MessageBroker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.peer_servers import NatsServer

PAYLOAD = {"sensor": "t1", "value": 21.5, "unit": "C", "seq": 0, "site": "lab-1", "ok": True}
TIMEOUT = 120.0
SETTLE = 2.0
# Messages on their way at most (below the broker's max_queue_size of 10,000), checked
# every BATCH messages.
WINDOW = 5_000
BATCH = 500


@dataclass
class Run:
    rate: float
    """Messages per second at the receiver, first to last."""
    lost: int
    skipped: dict[str, int]


async def keep_within_window(sent: int, received: list[float]) -> None:
    """Core NATS and a bridge are at most once: a publisher that outruns the receiver
    loses messages (counted by the broker as dropped for a slow consumer). The rate
    measured is the sustained one: at most WINDOW messages on their way at once."""
    if sent % BATCH:
        return
    deadline = time.monotonic() + TIMEOUT
    while sent - len(received) > WINDOW and time.monotonic() < deadline:
        await asyncio.sleep(0.0005)


async def wait_connected(broker: MessageBroker) -> None:
    deadline = time.monotonic() + 10
    while broker.status()["bridges"][0]["state"] != "connected":
        assert time.monotonic() < deadline, "the bridge did not connect"
        await asyncio.sleep(0.01)


async def run_once(server: NatsServer, count: int, direction: str) -> Run:
    rules = [{"pattern": "bench.#", "direction": direction}]
    config = BrokerConfig(
        host="127.0.0.1",
        port=0,
        bridges=[{"name": "bench", "kind": "nats", "url": server.url, "rules": rules}],
    )
    broker = MessageBroker(config)
    broker.start_sync()
    try:
        await wait_connected(broker)
        far = await nats.connect(server.url)
        local = BrokerClient("bench", host="127.0.0.1", port=broker.port)
        assert await local.connect()
        done = asyncio.Event()
        times: list[float] = []

        def take(*_: object) -> None:
            times.append(time.perf_counter())
            if len(times) == count:
                done.set()

        async def take_far(msg: object) -> None:
            take()

        if direction == "out":
            await far.subscribe("bench.>", cb=take_far)
            await far.flush()
            for i in range(count):
                await local.publish(f"bench.{i % 100}", {**PAYLOAD, "seq": i})
                await keep_within_window(i, times)
        else:
            await local.subscribe("bench.#", take)
            for i in range(count):
                payload = b'{"sensor":"t1","value":21.5,"unit":"C","seq":%d}' % i
                await far.publish(f"bench.{i % 100}", payload)
                if i % BATCH == 0:
                    await far.flush()
                await keep_within_window(i, times)
            await far.flush()
        # Everything arrived, or nothing more came for SETTLE seconds (a loss).
        deadline = time.monotonic() + TIMEOUT
        while not done.is_set() and time.monotonic() < deadline:
            seen = len(times)
            await asyncio.sleep(SETTLE)
            if len(times) == seen:
                break
        counters = broker.status()["bridges"][0]
        await local.disconnect()
        await far.close()
        assert len(times) > 1, f"nothing arrived: {counters}"
        return Run(
            (len(times) - 1) / (times[-1] - times[0]), count - len(times), counters["skipped"]
        )
    finally:
        broker.stop_sync()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, NatsServer(Path(folder)) as server:
        for direction in ("out", "in"):
            runs = [await run_once(server, args.messages, direction) for _ in range(args.runs)]
            print(
                f"{direction:>3}: median {statistics.median(run.rate for run in runs):,.0f} msg/s "
                f"(runs: {', '.join(f'{run.rate:,.0f}' for run in runs)}; "
                f"lost: {', '.join(str(run.lost) for run in runs)})"
            )


if __name__ == "__main__":
    asyncio.run(main())
