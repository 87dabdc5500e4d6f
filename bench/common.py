"""What the client roles of both peers share: their arguments, the payloads, the
receive tracker, and how a role talks to the runner.

A role is one OS process (`python -m bench role PEER ROLE ARGS_JSON`). It writes one
JSON object per line on stdout: `{"event": "ready"}` once it is set up (subscribed,
connected), then `{"event": "result", ...}` with its figures, or `{"event": "error",
"error": "..."}` when it failed. Every role gives up after `RoleArgs.deadline` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

SMALL_PAYLOAD: dict[str, Any] = {
    "job_id": 123456,
    "status": "activated",
    "worker": "saw-01",
    "note": "x" * 40,
}
"""The ~100 B JSON dict (106 B compact) of the small-message workloads."""

REQUEST_TOPIC = "bench.echo"
PATTERNS_PER_HOLDER = 1_000
"""Patterns each connection of the pattern-holder role subscribes to."""
DURABLE_TOPIC = "bench.durable"
DURABLE_QUEUE = "bench"


async def in_window(count: int, window: int, publish_one: Callable[[int], Awaitable[None]]) -> None:
    """Runs publish_one(0..count-1) with at most `window` of them waiting at once."""
    next_index = iter(range(count))

    async def worker() -> None:
        for i in next_index:
            await publish_one(i)

    await asyncio.gather(*(worker() for _ in range(min(window, count))))


@dataclass
class RoleArgs:
    """Everything a role needs; sent to the role process as JSON."""

    host: str
    port: int
    count: int = 0
    """Messages each publishing connection publishes, connections to open (idle role),
    or patterns to hold (pattern holder)."""
    clients: int = 1
    """Connections of a publisher or subscriber process, each doing the whole role."""
    rate: float = 0.0
    """Messages per second a publisher keeps to (0: as fast as it can)."""
    expected: int = 0
    """Messages a subscriber waits for before it reports."""
    topics: list[str] = field(default_factory=lambda: ["bench.data"])
    """A publisher cycles through these topics."""
    pattern: str = "bench.data"
    """What a subscriber subscribes to."""
    size: int = 0
    """Encoded payload size in bytes; 0 for the small payload."""
    requests: int = 0
    window: int = 256
    """Confirmed publishes a durable publisher keeps in flight at once."""
    warmup: int = 50
    settle: float = 2.0
    """A subscriber that has received something reports after this long without more."""
    start_timeout: float = 30.0
    """A subscriber reports (nothing received) after this long without a first message."""
    request_timeout: float = 5.0
    deadline: float = 120.0
    """The role gives up after this many seconds, whatever it is doing."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RoleArgs:
        return cls(**json.loads(text))


Role = Callable[[RoleArgs], Awaitable[dict[str, Any]]]
"""A client role: sets up, calls `emit("ready")` when the runner may go on, and returns
its figures."""


def other_patterns(count: int) -> list[str]:
    """`count` distinct patterns beside the workloads' topics, none matching them: exact
    names, `*` and `#` patterns, sharing the first segment `bench` with the topics."""
    shapes = ("bench.other{}", "*.other{}", "bench.other{}.#")
    return [shapes[i % 3].format(i) for i in range(count)]


async def keep_pace(started: float, sent: int, rate: float) -> None:
    """Sleeps while `sent` messages are ahead of `rate` per second since `started`."""
    ahead = started + sent / rate - time.monotonic()
    if ahead > 0:
        await asyncio.sleep(ahead)


def make_payload(size: int) -> dict[str, Any]:
    """The small payload for `size == 0`, else a dict whose compact JSON is `size` bytes."""
    if size <= 0:
        return SMALL_PAYLOAD
    overhead = len(encode({"job_id": 123456, "data": ""}))
    return {"job_id": 123456, "data": "x" * max(0, size - overhead)}


def encode(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def run_role(role: Role, args: RoleArgs) -> int:
    """Runs a role under its deadline; reports its result or its failure on stdout."""
    try:
        result = asyncio.run(asyncio.wait_for(role(args), args.deadline))
    except asyncio.TimeoutError:
        emit("error", error=f"role did not finish within {args.deadline:g} s")
        return 1
    except Exception as error:  # reported to the runner, which shows it as a failure row
        emit("error", error=f"{type(error).__name__}: {error}")
        return 1
    emit("result", **result)
    return 0


class Tracker:
    """Counts the messages a subscriber receives and when the first and last came.

    Times are `time.monotonic()`, one clock for every process on Linux, so the runner
    can combine the spans of several subscribers.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self._done = asyncio.Event()

    def hit(self) -> None:
        now = time.monotonic()
        if self.count == 0:
            self.first = now
        self.count += 1
        self.last = now
        if self.count >= self.expected:
            self._done.set()

    async def wait(self, args: RoleArgs) -> dict[str, Any]:
        """Waits for `expected` messages, for `settle` seconds without a message once
        one came, or `start_timeout` seconds without any; then returns the figures."""
        started = time.monotonic()
        while not self._done.is_set():
            now = time.monotonic()
            if self.count == 0 and now - started > args.start_timeout:
                break
            if self.count > 0 and now - self.last > args.settle:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._done.wait(), 0.1)
        return {"received": self.count, "first": self.first, "last": self.last}


def percentiles_us(seconds: list[float]) -> dict[str, float]:
    """p50, p90 and p99 of the samples, in microseconds (nearest rank)."""
    ordered = sorted(seconds)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1e6

    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99)}


async def timed_calls(call: Callable[[int], Awaitable[None]], args: RoleArgs) -> dict[str, Any]:
    """Makes `args.warmup` calls, then `args.requests` timed one after the other; each
    call gets its running number. Returns their count and percentiles."""
    for n in range(args.warmup):
        await call(n)
    samples = []
    for n in range(args.warmup, args.warmup + args.requests):
        started = time.perf_counter()
        await call(n)
        samples.append(time.perf_counter() - started)
    return {"requests": len(samples), **percentiles_us(samples)}


def raise_fd_limit(needed: int) -> None:
    """Raises this process's soft limit on open files to `needed` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def hold_until_deadline(args: RoleArgs, opened: int) -> dict[str, Any]:
    """Reports `ready` and keeps the process (and its connections) alive until the
    runner stops it or the deadline passes."""
    emit("ready", opened=opened)
    await asyncio.sleep(args.deadline)
    return {"opened": opened}
