"""``message-broker bench``: a quick throughput and latency check against a running
broker, in the spirit of ``nats bench``.

One publisher and ``--subscribers`` subscribers, each on a connection of its own, run
in this process. The publisher sends ``--messages`` messages of ``--size`` bytes; each
payload carries the moment it was published, so a subscriber knows how long it took
to arrive (one clock: the same process). The run is bounded by ``--timeout``: what has
not arrived by then is reported as missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from message_broker.client import BrokerClient
from message_broker.message import Message

# Latencies kept for the percentiles, at most; past it every n-th one is kept.
MAX_SAMPLES = 200_000
# The payload that tells a subscriber the publisher is done.
END = "end"
# How often the publisher yields to the event loop, so subscribers and the progress
# line run while it publishes.
YIELD_EVERY = 256


@dataclass
class Subscriber:
    """What one subscriber has received."""

    received: int = 0
    ended: bool = False
    first_at: float | None = None
    last_at: float | None = None


@dataclass
class Run:
    messages: int
    size: int
    subscribers: list[Subscriber]
    stride: int
    published: int = 0
    latencies: list[float] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def received(self) -> int:
        return sum(s.received for s in self.subscribers)

    @property
    def expected(self) -> int:
        return self.messages * len(self.subscribers)

    @property
    def finished(self) -> bool:
        return all(s.ended or s.received == self.messages for s in self.subscribers)


def payload_of(seq: int, size: int) -> list[Any]:
    """``[seq, published at, padding]``, about ``size`` bytes of JSON."""
    bare = len(json.dumps([seq, time.perf_counter(), ""]))
    return [seq, time.perf_counter(), "x" * max(0, size - bare)]


def receiver(run: Run, me: Subscriber) -> Callable[[Message], None]:
    def receive(msg: Message) -> None:
        now = time.perf_counter()
        payload = msg.payload
        if payload == END:
            me.ended = True
        elif isinstance(payload, list) and len(payload) == 3:
            me.received += 1
            me.first_at = me.first_at or now
            me.last_at = now
            if payload[0] % run.stride == 0 and len(run.latencies) < MAX_SAMPLES:
                run.latencies.append(now - payload[1])
        run.changed.set()

    return receive


class Progress:
    """One line on standard error: rewritten in place on a terminal, else a line a
    second."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.on_terminal = sys.stderr.isatty()

    def text(self) -> str:
        run = self.run
        line = f"bench: published {run.published}/{run.messages}"
        if run.subscribers:
            line += f", received {run.received}/{run.expected}"
        return line

    async def keep_showing(self) -> None:
        interval = 0.2 if self.on_terminal else 1.0
        while True:
            await asyncio.sleep(interval)
            self.show()

    def show(self) -> None:
        end = "\r" if self.on_terminal else "\n"
        print(self.text(), end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.on_terminal:
            print(" " * len(self.text()), end="\r", file=sys.stderr, flush=True)


async def publish_all(client: BrokerClient, topic: str, run: Run, rate: float | None) -> float:
    """Publishes every message; returns the seconds it took."""
    started = time.perf_counter()
    for seq in range(run.messages):
        if rate is not None:
            ahead = started + seq / rate - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
        elif seq % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        await client.publish(topic, payload_of(seq, run.size))
        run.published += 1
    # Round trip: the broker has taken every message published before it.
    await client.request("status", {})
    return time.perf_counter() - started


async def wait_for_the_end(client: BrokerClient, topic: str, run: Run, deadline: float) -> bool:
    """Tells the subscribers the publisher is done, again until each has heard it (a
    subscriber too slow for the broker may miss it as it missed messages); True when
    all have, before ``deadline``."""
    while not run.finished:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await client.publish(topic, END)
        run.changed.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(run.changed.wait(), min(left, 0.5))
    return True


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f} msgs/s" if seconds > 0 else "-"


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def millis(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def report(run: Run, topic: str, publish_seconds: float, complete: bool) -> list[str]:
    subscribers = len(run.subscribers)
    lines = [
        f"bench: {run.messages} messages of {run.size} bytes on {topic}, "
        f"{subscribers} subscriber(s)",
        f"publish: {run.published} msgs in {publish_seconds:.2f} s = "
        f"{rate(run.published, publish_seconds)} "
        f"({run.published * run.size / max(publish_seconds, 1e-9) / 1e6:.1f} MB/s)",
    ]
    if not subscribers:
        return lines
    spans = [
        (s.last_at - s.first_at, s.received)
        for s in run.subscribers
        if s.first_at is not None and s.last_at is not None
    ]
    each = sorted(rate(received, span) for span, received in spans if span > 0)
    lines.append(
        f"receive: {run.received}/{run.expected} msgs"
        + (f", per subscriber {', '.join(each)}" if each else "")
    )
    missing = run.expected - run.received
    if missing:
        why = "dropped for a slow subscriber" if complete else "not arrived within --timeout"
        lines.append(f"missing: {missing} ({why}; see `message-broker status`)")
    if run.latencies:
        ordered = sorted(run.latencies)
        lines.append(
            "latency, publish to delivery: "
            + "  ".join(
                f"{name} {millis(percentile(ordered, fraction))}"
                for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
            )
            + f"  max {millis(ordered[-1])}  ({len(ordered)} samples)"
        )
    return lines


async def run_bench(
    publisher: BrokerClient,
    args: argparse.Namespace,
    make_client: Callable[[str], BrokerClient],
) -> int:
    """Runs the benchmark; 0 when every subscriber heard the end in time."""
    topic = args.topic or f"bench.{os.getpid()}"
    deadline = time.monotonic() + args.timeout
    subscribers = [Subscriber() for _ in range(args.subscribers)]
    expected = args.messages * max(1, args.subscribers)
    run = Run(args.messages, args.size, subscribers, stride=max(1, expected // MAX_SAMPLES))
    progress = Progress(run)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(publisher)
        for number, subscriber in enumerate(subscribers):
            client = make_client(f"{publisher.client_id}-sub{number}")
            await stack.enter_async_context(client)
            await client.subscribe(topic, receiver(run, subscriber))
        showing = asyncio.ensure_future(progress.keep_showing())
        try:
            left = deadline - time.monotonic()
            try:
                publish_seconds = await asyncio.wait_for(
                    publish_all(publisher, topic, run, args.rate), left
                )
                complete = await wait_for_the_end(publisher, topic, run, deadline)
            except asyncio.TimeoutError:
                publish_seconds, complete = args.timeout, False
        finally:
            showing.cancel()
            progress.close()
    for line in report(run, topic, publish_seconds, complete):
        print(line)
    if not complete:
        print(f"message-broker: bench stopped after --timeout {args.timeout:g} s", file=sys.stderr)
        return 1
    return 0
