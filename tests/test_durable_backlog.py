"""A durable backlog far larger than memory: more than 2 GB of qos=1 messages queued
while nobody consumes, the broker restarted, then everything drained in order. The
broker's memory stays under 200 MB throughout: the backlog lives on disk."""

from __future__ import annotations

import asyncio
import sys

import pytest

from message_broker import Message

from support.broker_process import BrokerProcess, free_port, reconnecting_client

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the broker's memory from /proc"
)

MESSAGE_BYTES = 512 * 1024
MESSAGES = 4200  # 2.2 GB of payload
IN_FLIGHT = 32  # publishes awaiting their confirmation at once
RSS_LIMIT = 200 * 1024 * 1024


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class PeakMemory:
    """Samples a process's resident memory every 50 ms while in use."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0

    async def __aenter__(self) -> PeakMemory:
        self._task = asyncio.ensure_future(self._sample())
        return self

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss(self.pid))
            await asyncio.sleep(0.05)

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        self.peak = max(self.peak, rss(self.pid))


@pytest.mark.timeout(600)
async def test_a_backlog_of_2_gb_stays_on_disk_across_a_restart(tmp_path):
    broker = BrokerProcess(free_port(), tmp_path / "data", tmp_path / "broker.log")
    await broker.start()
    filler = "x" * (MESSAGE_BYTES - 64)
    publisher = reconnecting_client("publisher", broker.port)
    try:
        assert await publisher.connect()
        # Declares the queue, then leaves it: everything published now waits in it.
        await publisher.subscribe(
            "backlog.#", print, queue="backlog", durable=True, max_bytes=4 * 1024**3
        )
        await publisher.unsubscribe(queue="backlog")
        window = asyncio.Semaphore(IN_FLIGHT)

        async def publish(n: int) -> None:
            async with window:
                await publisher.publish("backlog.item", {"n": n, "fill": filler}, qos=1)

        async with PeakMemory(broker.pid) as publishing:
            await asyncio.gather(*(publish(n) for n in range(MESSAGES)))
        status = await publisher.request("status", {})
        (queue,) = status["queues"]
        assert queue["depth"] == MESSAGES and queue["bytes"] > 2 * 1024**3, queue
        assert queue["memory_bytes"] <= 16 * 1024 * 1024, queue
        await publisher.disconnect()

        await broker.stop()
        await broker.start()
        after_restart = rss(broker.pid)

        consumer = reconnecting_client("consumer", broker.port)
        received: list[int] = []
        done = asyncio.get_running_loop().create_future()

        def consume(message: Message) -> None:
            received.append(message.payload["n"])
            if len(received) == MESSAGES and not done.done():
                done.set_result(None)

        assert await consumer.connect()
        try:
            async with PeakMemory(broker.pid) as draining:
                await consumer.subscribe(
                    "backlog.#", consume, queue="backlog", durable=True, max_bytes=4 * 1024**3
                )
                await asyncio.wait_for(done, 300)
            status = await consumer.request("status", {})
        finally:
            await consumer.disconnect()
        print(
            f"\nbroker RSS: publishing peak {publishing.peak / 2**20:.0f} MB, after restart "
            f"{after_restart / 2**20:.0f} MB, draining peak {draining.peak / 2**20:.0f} MB"
        )
        assert received == list(range(MESSAGES)), "in order, each once"
        (queue,) = status["queues"]
        assert queue["depth"] == 0 and queue["acked"] == MESSAGES
        assert publishing.peak < RSS_LIMIT
        assert after_restart < RSS_LIMIT
        assert draining.peak < RSS_LIMIT
    finally:
        await publisher.disconnect()
        await broker.stop()
