"""Crash safety: the broker is killed (SIGKILL) at random points while 10,000 qos=1
messages are published to a durable queue and consumed from it, and restarted on the
same data_dir each time. Every message the broker confirmed must be delivered;
duplicates are allowed (at least once) and counted, losses are not."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from message_broker import BrokerError, Message

from support.broker_process import BrokerProcess, free_port, reconnecting_client

MESSAGES = 10_000
# Publishes waiting for their confirmation at once.
WINDOW = 200


@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", [11, 23, 37])
async def test_no_confirmed_message_is_lost_when_the_broker_is_killed(seed, tmp_path):
    rng = random.Random(seed)
    config = tmp_path / "crash.toml"
    config.write_text('[[queues]]\nname = "crash"\npatterns = ["crash.#"]\n')
    broker = BrokerProcess(free_port(), tmp_path / "data", tmp_path / "broker.log", config)
    await broker.start()
    confirmed: set[int] = set()
    received: list[int] = []
    retries = 0

    consumer = reconnecting_client("consumer", broker.port)
    publisher = reconnecting_client("publisher", broker.port)
    try:
        assert await consumer.connect()
        assert await publisher.connect()

        def consume(message: Message) -> None:
            received.append(message.payload)

        await consumer.subscribe("crash.#", consume, queue="crash", durable=True, prefetch=500)

        async def publish_one(n: int) -> None:
            nonlocal retries
            while True:
                try:
                    await publisher.publish(f"crash.{n % 10}", n, qos=1)
                except BrokerError:
                    # Lost with the connection before its confirmation: maybe stored,
                    # maybe not. Publishing it again is what at-least-once asks of us.
                    retries += 1
                    await asyncio.sleep(0.01)
                    continue
                confirmed.add(n)
                return

        async def publish_all() -> None:
            window = asyncio.Semaphore(WINDOW)

            async def one(n: int) -> None:
                async with window:
                    await publish_one(n)

            await asyncio.gather(*(one(n) for n in range(MESSAGES)))

        publishing = asyncio.ensure_future(publish_all())
        kills = 0
        # Kill points: random moments while the messages are published and consumed
        # (the consumer takes them as they come); at least 3, at most 6.
        while kills < 3 or (not publishing.done() and kills < 6):
            await asyncio.sleep(rng.uniform(0.05, 0.6))
            await broker.kill()
            kills += 1
            await asyncio.sleep(rng.uniform(0.0, 0.2))
            await broker.start()
        await asyncio.wait_for(publishing, 120)

        async def all_delivered() -> None:
            while not confirmed <= set(received):
                await asyncio.sleep(0.05)

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(all_delivered(), 60)
        missing = sorted(confirmed - set(received))
        duplicates = len(received) - len(set(received))
        print(
            f"\nseed {seed}: {kills} kills, {len(confirmed)} confirmed, "
            f"{len(set(received))} distinct delivered, {duplicates} duplicates, "
            f"{retries} publishes retried, lost {len(missing)}"
        )
        assert len(confirmed) == MESSAGES
        assert kills >= 3
        assert not missing, f"confirmed but never delivered: {missing[:20]} ..."
    finally:
        await consumer.disconnect()
        await publisher.disconnect()
        await broker.stop()
