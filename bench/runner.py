"""Orchestration: each workload run starts a fresh broker, its client roles in separate
processes, measures, and stops everything. Runs of the peers are interleaved (ours,
NATS, ours, NATS, ...) so that drift on the machine hits both alike.

A run that fails (a role errs, a wait times out) becomes a failure entry, never a hang:
every wait has a timeout and the whole run has one more as a backstop.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.common import RoleArgs, encode, make_payload, raise_fd_limit
from bench.processes import BenchError, Child, ProcessGroup, Server, spawn_role, start_server
from bench.procstat import cpu_seconds, peak_rss_bytes, rss_bytes

READY_TIMEOUT = 30.0
"""Seconds a role gets to connect and subscribe."""
MEMORY_SETTLE = 1.0
"""Seconds to let a broker settle before its RSS is read."""
MB = 1e6


@dataclass
class Settings:
    peers: tuple[str, ...] = ("ours",)
    workloads: tuple[str, ...] = ()
    """Names from WORKLOADS; empty for all."""
    runs: int = 3
    messages: int = 100_000
    fanout: int = 8
    fanout_messages: int = 100_000
    topics: int = 100
    requests: int = 2_000
    large_messages: int = 2_000
    large_size: int = 65_536
    idle_connections: int = 1_000
    durable_messages: int = 20_000
    settle: float = 2.0
    timeout: float = 120.0
    """Seconds any one wait of a run may take (a publisher's run, a subscriber's)."""

    def selected(self) -> list[str]:
        return [name for name in WORKLOADS if not self.workloads or name in self.workloads]


Metrics = dict[str, Any]
Workload = Callable[[ProcessGroup, str, Settings], Awaitable[Metrics]]


async def _all(waits: list[Awaitable[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Awaits every one (so none is left running), then raises the first failure."""
    results = await asyncio.gather(*waits, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def _role_args(server: Server, settings: Settings) -> RoleArgs:
    return RoleArgs(
        host=server.host, port=server.port, settle=settings.settle, deadline=settings.timeout
    )


async def _pubsub(
    group: ProcessGroup,
    peer: str,
    settings: Settings,
    *,
    subscribers: int,
    pattern: str,
    topics: list[str],
    count: int,
    size: int = 0,
) -> Metrics:
    """One publisher, `subscribers` subscribers; figures measured at the subscribers."""
    server = await start_server(group, peer)
    base = _role_args(server, settings)
    subscriber_args = replace(base, pattern=pattern, expected=count)
    subs: list[Child] = []
    for i in range(subscribers):
        subs.append(await spawn_role(group, peer, "subscriber", subscriber_args, f"sub{i + 1}"))
    await _all([sub.expect("ready", READY_TIMEOUT) for sub in subs])

    cpu_before = cpu_seconds(server.pid)
    publisher_args = replace(base, topics=topics, count=count, size=size)
    publisher = await spawn_role(group, peer, "publisher", publisher_args, "publisher")
    publisher_result = await publisher.expect("result", settings.timeout)
    published = publisher_result["published"]
    results = await _all([sub.expect("result", settings.timeout) for sub in subs])
    cpu = cpu_seconds(server.pid) - cpu_before

    received = sum(r["received"] for r in results)
    active = [r for r in results if r["received"]]
    if not active:
        raise BenchError(f"no message arrived at any subscriber ({published} published)")
    span = max(r["last"] for r in active) - min(r["first"] for r in active)
    metrics: Metrics = {
        "published": published,
        "received": received,
        "lost": published * subscribers - received,
        "seconds": span,
        "rate": received / span if span > 0 else 0.0,
        "cpu_us_per_msg": cpu * 1e6 / received,
        "peak_rss": peak_rss_bytes(server.pid),
        "version": server.version,
    }
    if "broker_dropped" in publisher_result:  # what our broker counted as dropped
        metrics["broker_dropped"] = publisher_result["broker_dropped"]
    if size:
        metrics["mb_per_s"] = metrics["rate"] * len(encode(make_payload(size))) / 1e6
    return metrics


async def throughput(group: ProcessGroup, peer: str, settings: Settings) -> Metrics:
    return await _pubsub(
        group,
        peer,
        settings,
        subscribers=1,
        pattern="bench.data",
        topics=["bench.data"],
        count=settings.messages,
    )


async def fanout(group: ProcessGroup, peer: str, settings: Settings) -> Metrics:
    return await _pubsub(
        group,
        peer,
        settings,
        subscribers=settings.fanout,
        pattern="bench.fan",
        topics=["bench.fan"],
        count=settings.fanout_messages,
    )


async def wildcard(group: ProcessGroup, peer: str, settings: Settings) -> Metrics:
    topics = [f"jobs.t{i}" for i in range(settings.topics)]
    return await _pubsub(
        group,
        peer,
        settings,
        subscribers=1,
        pattern="jobs.*",
        topics=topics,
        count=settings.messages,
    )


async def large(group: ProcessGroup, peer: str, settings: Settings) -> Metrics:
    return await _pubsub(
        group,
        peer,
        settings,
        subscribers=1,
        pattern="bench.large",
        topics=["bench.large"],
        count=settings.large_messages,
        size=settings.large_size,
    )


async def request_reply(group: ProcessGroup, peer: str, settings: Settings) -> Metrics:
    """Sequential requests to one responder; latency measured at the requester."""
    server = await start_server(group, peer)
    base = _role_args(server, settings)
    responder = await spawn_role(group, peer, "responder", base, "responder")
    await responder.expect("ready", READY_TIMEOUT)
    cpu_before = cpu_seconds(server.pid)
    requester_args = replace(base, requests=settings.requests)
    requester = await spawn_role(group, peer, "requester", requester_args, "requester")
    result = await requester.expect("result", settings.timeout)
    cpu = cpu_seconds(server.pid) - cpu_before
    # Each round trip is two deliveries: the request to the responder, the reply back.
    delivered = 2 * (settings.requests + requester_args.warmup)
    return {
        "requests": result["requests"],
        "p50": result["p50"],
        "p90": result["p90"],
        "p99": result["p99"],
        "cpu_us_per_msg": cpu * 1e6 / delivered,
        "peak_rss": peak_rss_bytes(server.pid),
        "version": server.version,
    }


async def durable(group: ProcessGroup, peer: str, settings: Settings) -> Metrics:
    """At-least-once: a consumer on a durable queue (ours) or a durable JetStream
    consumer on a file stream (NATS); the publisher awaits each confirmation, with
    up to `window` in flight. Figures: confirmed publishes/s at the publisher, and
    deliveries/s at the consumer (which acknowledges each one)."""
    server = await start_server(group, peer, durable=True)
    count = settings.durable_messages
    base = _role_args(server, settings)
    consumer = await spawn_role(
        group, peer, "durable_consumer", replace(base, expected=count), "consumer"
    )
    await consumer.expect("ready", READY_TIMEOUT)
    cpu_before = cpu_seconds(server.pid)
    publisher = await spawn_role(
        group, peer, "durable_publisher", replace(base, count=count), "publisher"
    )
    published = await publisher.expect("result", settings.timeout)
    consumed = await consumer.expect("result", settings.timeout)
    cpu = cpu_seconds(server.pid) - cpu_before
    received = consumed["received"]
    if not received:
        raise BenchError(f"no message arrived at the consumer ({count} published)")
    span = consumed["last"] - consumed["first"]
    return {
        "published": count,
        "received": received,
        "lost": count - received if received < count else 0,
        "duplicates": max(received - count, 0),
        "publish_rate": count / published["seconds"],
        "rate": received / span if span > 0 else 0.0,
        "cpu_us_per_msg": cpu * 1e6 / count,
        "peak_rss": peak_rss_bytes(server.pid),
        "version": server.version,
    }


async def idle_memory(group: ProcessGroup, peer: str, settings: Settings) -> Metrics:
    """RSS of an idle broker, then with `idle_connections` silent connections."""
    # Children inherit the limit: the broker, and the role that opens the sockets.
    raise_fd_limit(2 * settings.idle_connections + 100)
    server = await start_server(group, peer, max_connections=2 * settings.idle_connections)
    await asyncio.sleep(MEMORY_SETTLE)
    idle_rss = rss_bytes(server.pid)
    holder_args = replace(_role_args(server, settings), count=settings.idle_connections)
    holder = await spawn_role(group, peer, "idle", holder_args, "idle-connections")
    opened = (await holder.expect("ready", settings.timeout))["opened"]
    await asyncio.sleep(MEMORY_SETTLE)
    loaded_rss = rss_bytes(server.pid)
    return {
        "connections": opened,
        "idle_rss": idle_rss,
        "connections_rss": loaded_rss - idle_rss,
        "peak_rss": peak_rss_bytes(server.pid),
        "version": server.version,
    }


WORKLOADS: dict[str, Workload] = {
    "throughput": throughput,
    "fanout": fanout,
    "request": request_reply,
    "wildcard": wildcard,
    "large": large,
    "idle": idle_memory,
    "durable": durable,
}


@dataclass
class Results:
    settings: Settings
    runs: dict[str, dict[str, list[Metrics]]] = field(default_factory=dict)
    """runs[peer][workload]: one entry per run, with "ok" and either figures or "error"."""
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


async def run_once(workload: str, peer: str, settings: Settings) -> tuple[Metrics, str]:
    """One run of a workload against a fresh broker; returns its figures (or failure)
    and the broker's version."""
    started = time.monotonic()
    version = ""
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        try:
            async with ProcessGroup(Path(workdir)) as group:
                metrics = await asyncio.wait_for(
                    WORKLOADS[workload](group, peer, settings), settings.timeout * 3
                )
            version = metrics.pop("version")
            result: Metrics = {"ok": True, **metrics}
        except asyncio.TimeoutError:
            result = {"ok": False, "error": f"run did not finish in {settings.timeout * 3:g} s"}
        except (BenchError, OSError) as error:
            result = {"ok": False, "error": str(error)}
    result["wall_seconds"] = time.monotonic() - started
    return result, version


async def run_suite(settings: Settings) -> Results:
    results = Results(settings)
    started = time.monotonic()
    for workload in settings.selected():
        for run in range(1, settings.runs + 1):
            for peer in settings.peers:
                result, version = await run_once(workload, peer, settings)
                if version:
                    results.versions[peer] = version
                results.runs.setdefault(peer, {}).setdefault(workload, []).append(result)
                progress(workload, peer, run, settings.runs, result)
    results.seconds = time.monotonic() - started
    return results


def progress(workload: str, peer: str, run: int, runs: int, result: Metrics) -> None:
    if not result["ok"]:
        summary = f"FAILED: {result['error']}"
    elif "publish_rate" in result:
        summary = (
            f"{result['publish_rate']:,.0f} confirmed/s, {result['rate']:,.0f} consumed/s, "
            f"lost {result['lost']}"
        )
    elif "rate" in result:
        summary = f"{result['rate']:,.0f} msg/s, lost {result['lost']}"
        if result.get("broker_dropped"):
            summary += f" (broker dropped {result['broker_dropped']})"
    elif "p50" in result:
        summary = f"p50 {result['p50']:.0f} us, p90 {result['p90']:.0f} us"
    else:
        summary = f"idle {result['idle_rss'] / MB:.1f} MB, +{result['connections_rss'] / MB:.1f} MB"
    took = result["wall_seconds"]
    print(f"  {workload:<10} {peer:<4} run {run}/{runs}: {summary} ({took:.1f} s)", file=sys.stderr)
