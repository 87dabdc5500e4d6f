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
    wide_fanout_messages: int = 10_000
    """Messages published to the 100 subscribers (10 processes x 10 clients)."""
    fanin_messages: int = 100_000
    """Messages the 100 publishers (10 processes x 10 clients) send in all."""
    patterns: int = 10_000
    """Other patterns held beside the 1->1 subscriber (and a tenth of it)."""
    loaded_seconds: float = 6.0
    """How long the half-rate flood runs while requests are timed."""
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


@dataclass(frozen=True)
class Shape:
    """Who takes part in a publish/subscribe workload: processes of each role, and the
    connections of each process (each one a whole publisher or subscriber)."""

    subscribers: int = 1
    clients_per_subscriber: int = 1
    publishers: int = 1
    clients_per_publisher: int = 1
    other_patterns: int = 0
    """Patterns held by other connections beside the subscribers, matching nothing."""
    idle_connections: int = 0
    """Silent connections open beside the traffic."""


async def _pubsub(
    group: ProcessGroup,
    peer: str,
    settings: Settings,
    *,
    pattern: str,
    topics: list[str],
    count: int,
    size: int = 0,
    shape: Shape = Shape(),
) -> Metrics:
    """`count` messages from the publishers in all, to every subscribing connection;
    figures measured at the subscribers."""
    if shape.idle_connections:
        raise_fd_limit(2 * shape.idle_connections + 200)
    server = await start_server(group, peer, max_connections=2 * shape.idle_connections + 200)
    base = _role_args(server, settings)
    await _beside_traffic(group, peer, base, settings, shape)
    per_publisher = count // (shape.publishers * shape.clients_per_publisher)
    expected = per_publisher * shape.publishers * shape.clients_per_publisher
    subscriber_args = replace(
        base, pattern=pattern, expected=expected, clients=shape.clients_per_subscriber
    )
    subs: list[Child] = []
    for i in range(shape.subscribers):
        subs.append(await spawn_role(group, peer, "subscriber", subscriber_args, f"sub{i + 1}"))
    await _all([sub.expect("ready", READY_TIMEOUT) for sub in subs])

    cpu_before = cpu_seconds(server.pid)
    publisher_args = replace(
        base, topics=topics, count=per_publisher, size=size, clients=shape.clients_per_publisher
    )
    publishers = [
        await spawn_role(group, peer, "publisher", publisher_args, f"publisher{i + 1}")
        for i in range(shape.publishers)
    ]
    publisher_results = await _all([p.expect("result", settings.timeout) for p in publishers])
    published = sum(r["published"] for r in publisher_results)
    results = await _all([sub.expect("result", settings.timeout) for sub in subs])
    cpu = cpu_seconds(server.pid) - cpu_before
    subscribers = shape.subscribers * shape.clients_per_subscriber
    publisher_result = {
        "broker_dropped": max(r.get("broker_dropped", 0) for r in publisher_results)
    }

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
    if peer == "ours":  # what our broker counted as dropped
        metrics["broker_dropped"] = publisher_result["broker_dropped"]
    if size:
        metrics["mb_per_s"] = metrics["rate"] * len(encode(make_payload(size))) / 1e6
    return metrics


async def _beside_traffic(
    group: ProcessGroup, peer: str, base: RoleArgs, settings: Settings, shape: Shape
) -> None:
    """Starts the pattern holders and idle connections of `shape`, ready before the
    traffic starts; the group stops them with everything else."""
    if shape.other_patterns:
        holder = await spawn_role(
            group, peer, "pattern_holder", replace(base, count=shape.other_patterns), "holder"
        )
        await holder.expect("ready", settings.timeout)
    if shape.idle_connections:
        idle = await spawn_role(
            group, peer, "idle", replace(base, count=shape.idle_connections), "idle"
        )
        await idle.expect("ready", settings.timeout)


async def _one_to_one(
    group: ProcessGroup, peer: str, settings: Settings, shape: Shape = Shape()
) -> Metrics:
    return await _pubsub(
        group,
        peer,
        settings,
        pattern="bench.data",
        topics=["bench.data"],
        count=settings.messages,
        shape=shape,
    )


async def throughput(group: ProcessGroup, peer: str, settings: Settings) -> Metrics:
    return await _one_to_one(group, peer, settings)


async def fanout(group: ProcessGroup, peer: str, settings: Settings) -> Metrics:
    return await _pubsub(
        group,
        peer,
        settings,
        pattern="bench.fan",
        topics=["bench.fan"],
        count=settings.fanout_messages,
        shape=Shape(subscribers=settings.fanout),
    )


async def wildcard(group: ProcessGroup, peer: str, settings: Settings) -> Metrics:
    topics = [f"jobs.t{i}" for i in range(settings.topics)]
    return await _pubsub(
        group, peer, settings, pattern="jobs.*", topics=topics, count=settings.messages
    )


async def large(group: ProcessGroup, peer: str, settings: Settings) -> Metrics:
    return await _pubsub(
        group,
        peer,
        settings,
        pattern="bench.large",
        topics=["bench.large"],
        count=settings.large_messages,
        size=settings.large_size,
    )


async def wide_fanout(group: ProcessGroup, peer: str, settings: Settings) -> Metrics:
    """100 subscribers: 10 processes of 10 connections, on one topic."""
    return await _pubsub(
        group,
        peer,
        settings,
        pattern="bench.wide",
        topics=["bench.wide"],
        count=settings.wide_fanout_messages,
        shape=Shape(subscribers=10, clients_per_subscriber=10),
    )


async def fan_in(group: ProcessGroup, peer: str, settings: Settings) -> Metrics:
    """100 publishers (10 processes of 10 connections) into one subscriber."""
    return await _pubsub(
        group,
        peer,
        settings,
        pattern="bench.in",
        topics=["bench.in"],
        count=settings.fanin_messages,
        shape=Shape(publishers=10, clients_per_publisher=10),
    )


async def patterns_tenth(group: ProcessGroup, peer: str, settings: Settings) -> Metrics:
    """1->1 beside a tenth of `patterns` other patterns."""
    return await _one_to_one(group, peer, settings, Shape(other_patterns=settings.patterns // 10))


async def patterns_all(group: ProcessGroup, peer: str, settings: Settings) -> Metrics:
    """1->1 beside `patterns` other patterns."""
    return await _one_to_one(group, peer, settings, Shape(other_patterns=settings.patterns))


async def beside_idle(group: ProcessGroup, peer: str, settings: Settings) -> Metrics:
    """1->1 beside `idle_connections` silent connections."""
    shape = Shape(idle_connections=settings.idle_connections)
    return await _one_to_one(group, peer, settings, shape)


LOADED_ATTEMPTS = 3
"""Floods tried, each longer than the last, before a machine too slow for the requests
is reported as a failure of the run."""


async def request_under_load(group: ProcessGroup, peer: str, settings: Settings) -> Metrics:
    """Sequential requests while a 1->1 flood runs at half the rate this broker reached
    unthrottled a moment before (measured on the same broker, with its own figures).

    The requests must end before the flood does. How long they take depends on the
    machine, so a flood they outlast is run again, long enough for what they took."""
    server = await start_server(group, peer)
    base = _role_args(server, settings)
    calibration = min(settings.messages, 50_000)
    flat_out = await _flood(group, peer, base, settings, count=calibration, rate=0.0, tag="max")
    rate = flat_out["rate"] / 2
    responder = await spawn_role(group, peer, "responder", base, "responder")
    await responder.expect("ready", READY_TIMEOUT)
    seconds = settings.loaded_seconds
    lost = 0  # over every flood: one the requests outlasted may lose messages too
    for attempt in range(1, LOADED_ATTEMPTS + 1):
        lead = min(1.0, seconds / 4)  # the flood is on before the first request
        flood = asyncio.ensure_future(
            _flood(group, peer, base, settings, count=int(rate * seconds), rate=rate, tag="half")
        )
        try:
            await asyncio.sleep(lead)
            requester_args = replace(base, requests=settings.requests)
            started = time.monotonic()
            requester = await spawn_role(group, peer, "requester", requester_args, "requester")
            result = await requester.expect("result", settings.timeout)
            requests_done = time.monotonic()
            flooded = await flood
        finally:
            flood.cancel()
        lost += flooded["lost"]
        if flooded["published_at"] >= requests_done:
            break
        if attempt == LOADED_ATTEMPTS:
            raise BenchError(
                f"the requests outlasted {attempt} floods, the last of {seconds:.0f} s:"
                " raise --loaded-seconds"
            )
        seconds = max(2 * seconds, 1.5 * (lead + requests_done - started))
    return {
        "requests": result["requests"],
        "p50": result["p50"],
        "p90": result["p90"],
        "p99": result["p99"],
        "flood_rate": flooded["rate"],
        "flood_seconds": seconds,
        "max_rate": flat_out["rate"],
        "lost": lost,
        "peak_rss": peak_rss_bytes(server.pid),
        "version": server.version,
    }


async def _flood(
    group: ProcessGroup,
    peer: str,
    base: RoleArgs,
    settings: Settings,
    *,
    count: int,
    rate: float,
    tag: str,
) -> Metrics:
    sub_args = replace(base, pattern=f"bench.flood.{tag}", expected=count)
    sub = await spawn_role(group, peer, "subscriber", sub_args, f"flood-sub-{tag}")
    await sub.expect("ready", READY_TIMEOUT)
    pub_args = replace(base, topics=[f"bench.flood.{tag}"], count=count, rate=rate)
    pub = await spawn_role(group, peer, "publisher", pub_args, f"flood-pub-{tag}")
    published = (await pub.expect("result", settings.timeout))["published"]
    published_at = time.monotonic()
    received = await sub.expect("result", settings.timeout)
    span = received["last"] - received["first"]
    return {
        "rate": received["received"] / span if span > 0 else 0.0,
        "lost": published - received["received"],
        "published_at": published_at,
    }


async def request_reply(group: ProcessGroup, peer: str, settings: Settings) -> Metrics:
    """Sequential requests to one responder; latency measured at the requester."""
    return await _requests(group, peer, settings, "")


async def raw_request_reply(group: ProcessGroup, peer: str, settings: Settings) -> Metrics:
    """`request` with both clients speaking the wire protocol over a bare asyncio socket:
    the same round trip without either peer's client library, so that the broker's share
    shows apart from the client's."""
    return await _requests(group, peer, settings, "raw_")


async def _requests(group: ProcessGroup, peer: str, settings: Settings, roles: str) -> Metrics:
    server = await start_server(group, peer)
    base = _role_args(server, settings)
    responder = await spawn_role(group, peer, f"{roles}responder", base, "responder")
    await responder.expect("ready", READY_TIMEOUT)
    cpu_before = cpu_seconds(server.pid)
    requester_args = replace(base, requests=settings.requests)
    requester = await spawn_role(group, peer, f"{roles}requester", requester_args, "requester")
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
    "request_raw": raw_request_reply,
    "wildcard": wildcard,
    "large": large,
    "idle": idle_memory,
    "durable": durable,
    "fanout100": wide_fanout,
    "fanin100": fan_in,
    "patterns1k": patterns_tenth,
    "patterns10k": patterns_all,
    "idle_traffic": beside_idle,
    "request_loaded": request_under_load,
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
    elif "flood_rate" in result:
        summary = (
            f"p50 {result['p50']:.0f} us, p99 {result['p99']:.0f} us beside "
            f"{result['flood_rate']:,.0f} msg/s (of {result['max_rate']:,.0f}), "
            f"lost {result['lost']}"
        )
    elif "p50" in result:
        summary = f"p50 {result['p50']:.0f} us, p90 {result['p90']:.0f} us"
    else:
        summary = f"idle {result['idle_rss'] / MB:.1f} MB, +{result['connections_rss'] / MB:.1f} MB"
    took = result["wall_seconds"]
    print(f"  {workload:<14} {peer:<4} run {run}/{runs}: {summary} ({took:.1f} s)", file=sys.stderr)
