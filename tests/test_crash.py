"""Crash safety: the broker is killed (SIGKILL) at random points while 10,000 qos=1
messages are published to a durable queue and consumed from it, and restarted on the
same data_dir each time. Every message the broker confirmed must be delivered;
duplicates are allowed (at least once) and counted, losses are not."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import sys
from pathlib import Path

import pytest

from message_broker import BrokerClient, BrokerError, Message

MESSAGES = 10_000
# Publishes waiting for their confirmation at once.
WINDOW = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrokerProcess:
    """`python -m message_broker` on a fixed port and data_dir, killed and restarted."""

    def __init__(self, port: int, data_dir: Path, log: Path) -> None:
        self.port, self.data_dir, self.log = port, data_dir, log
        config = data_dir.parent / "crash.toml"
        config.write_text('[[queues]]\nname = "crash"\npatterns = ["crash.#"]\n')
        self.args = [
            sys.executable,
            "-m",
            "message_broker",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--config",
            str(config),
            "--log-level",
            "WARNING",
        ]
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.args, stdout=asyncio.subprocess.PIPE, stderr=log
            )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        assert b"listening" in line, (line, self.log.read_text())
        self.starts += 1

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.process.wait(), 10)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except asyncio.TimeoutError:
                await self.kill()


def client(client_id: str, port: int) -> BrokerClient:
    return BrokerClient(
        client_id,
        host="127.0.0.1",
        port=port,
        reconnect_delay=0.02,
        max_reconnect_delay=0.2,
        connect_retries=50,
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", [11, 23, 37])
async def test_no_confirmed_message_is_lost_when_the_broker_is_killed(seed, tmp_path):
    rng = random.Random(seed)
    broker = BrokerProcess(free_port(), tmp_path / "data", tmp_path / "broker.log")
    await broker.start()
    confirmed: set[int] = set()
    received: list[int] = []
    retries = 0

    consumer = client("consumer", broker.port)
    publisher = client("publisher", broker.port)
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
