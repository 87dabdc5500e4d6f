"""`python -m bench channels`: the Django Channels layer on our broker, side by side
with channels_redis on redis-server.

Each run starts a fresh broker (ours: `python -m message_broker --port 0`; Redis:
`redis-server` bound to 127.0.0.1 on a free port, no persistence) and one client
process using the layer (`BrokerChannelLayer`, or `channels_redis.core.RedisChannelLayer`
4.3.0), which measures, in this order:

- group_send to a group of `--channels` process-specific channels (as `new_channel()`
  makes them for consumers), each send followed by one receive on every channel:
  group sends/s, deliveries/s, and the p50/p90 of the time from `group_send` to the
  last of its receives;
- `--round-trips` sequential send-then-receive round trips on one process-specific
  channel and on one plain channel: p50/p90 in microseconds.

Runs of the two peers are interleaved; the table shows the median (min-max) of the
runs and the ratio ours/channels_redis of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import emit, percentiles_us
from bench.processes import BenchError, Child, ProcessGroup, start_server

PEERS = ("ours", "channels_redis")
START_TIMEOUT = 30.0
RESULTS_DIR = Path(__file__).resolve().parent / "results"
MESSAGE = {"type": "chat.message", "text": "x" * 80}

FIGURES = [
    ("group_sends_per_s", "group_send to N channels, sends/s", 0),
    ("deliveries_per_s", "group_send to N channels, deliveries/s", 0),
    ("group_p50_ms", "group_send -> last receive p50 ms", 2),
    ("group_p90_ms", "group_send -> last receive p90 ms", 2),
    ("process_p50_us", "send/receive round trip, process channel p50 us", 0),
    ("process_p90_us", "send/receive round trip, process channel p90 us", 0),
    ("plain_p50_us", "send/receive round trip, plain channel p50 us", 0),
    ("plain_p90_us", "send/receive round trip, plain channel p90 us", 0),
]


# -- the client process ----------------------------------------------------------------------
def _make_layer(peer: str, host: str, port: int, channels: int) -> Any:
    # Room for one message per member in each process's shared channel key.
    capacity = max(100, 10 * channels)
    if peer == "ours":
        from message_broker.channels_layer import BrokerChannelLayer

        return BrokerChannelLayer(host=host, port=port, capacity=capacity)
    from channels_redis.core import RedisChannelLayer

    return RedisChannelLayer(hosts=[f"redis://{host}:{port}"], capacity=capacity)


async def _measure(
    peer: str, host: str, port: int, channels: int, group_sends: int, trips: int
) -> dict[str, Any]:
    layer = _make_layer(peer, host, port, channels)
    members = [await layer.new_channel() for _ in range(channels)]
    for channel in members:
        await layer.group_add("bench-room", channel)

    async def one_group_send() -> float:
        started = time.perf_counter()
        await layer.group_send("bench-room", MESSAGE)
        await asyncio.gather(*(layer.receive(channel) for channel in members))
        return time.perf_counter() - started

    for _ in range(5):  # warm-up: connections, pools, code paths
        await one_group_send()
    started = time.perf_counter()
    latencies = [await one_group_send() for _ in range(group_sends)]
    group_seconds = time.perf_counter() - started

    async def round_trips(channel: str) -> dict[str, float]:
        samples = []
        for n in range(trips + 50):
            begun = time.perf_counter()
            await layer.send(channel, MESSAGE)
            await layer.receive(channel)
            if n >= 50:
                samples.append(time.perf_counter() - begun)
        return percentiles_us(samples)

    process = await round_trips(await layer.new_channel())
    plain = await round_trips("bench-plain-channel")
    await layer.flush()
    group = percentiles_us(latencies)
    return {
        "group_sends_per_s": group_sends / group_seconds,
        "deliveries_per_s": group_sends * channels / group_seconds,
        "group_p50_ms": group["p50"] / 1000,
        "group_p90_ms": group["p90"] / 1000,
        "process_p50_us": process["p50"],
        "process_p90_us": process["p90"],
        "plain_p50_us": plain["p50"],
        "plain_p90_us": plain["p90"],
    }


def client_main(argv: list[str]) -> int:
    peer, host, port, channels, group_sends, trips, deadline = argv
    try:
        result = asyncio.run(
            asyncio.wait_for(
                _measure(peer, host, int(port), int(channels), int(group_sends), int(trips)),
                float(deadline),
            )
        )
    except Exception as error:  # reported to the runner, which shows it as a failure
        emit("error", error=f"{type(error).__name__}: {error}")
        return 1
    emit("result", **result)
    return 0


# -- the runner ------------------------------------------------------------------------------
def redis_server_path() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if Path(p).exists()), None
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _start_redis(group: ProcessGroup) -> tuple[Child, int]:
    executable = redis_server_path()
    if executable is None:
        raise BenchError("redis-server is not installed (apt-get install -y redis-server)")
    port = _free_port()
    argv = [
        executable,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    child = await group.spawn("redis-server", argv)
    for _ in range(int(START_TIMEOUT / 0.05)):
        if child.process.returncode is not None:
            raise child.failure(f"exited with code {child.process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return child, port
    raise child.failure(f"did not listen within {START_TIMEOUT:g} s")


async def run_once(peer: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-channels-") as workdir:
        try:
            async with ProcessGroup(Path(workdir)) as group:
                if peer == "ours":
                    server = await start_server(group, "ours")
                    host, port = server.host, server.port
                else:
                    _, port = await _start_redis(group)
                    host = "127.0.0.1"
                argv = [sys.executable, "-m", "bench.channels", "client", peer, host, str(port)]
                argv += [
                    str(args.channels),
                    str(args.group_sends),
                    str(args.round_trips),
                    str(args.timeout),
                ]
                client = await group.spawn(f"{peer}-client", argv)
                return {"ok": True, **await client.expect("result", args.timeout + 10)}
        except (BenchError, OSError) as error:
            return {"ok": False, "error": str(error)}


def _median(runs: list[dict[str, Any]], key: str) -> tuple[float, float, float] | None:
    values = [run[key] for run in runs if run["ok"]]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def _cell(stat: tuple[float, float, float] | None, digits: int) -> str:
    if stat is None:
        return "FAILED"
    number = f"{{:,.{digits}f}}".format
    return f"{number(stat[0])} ({number(stat[1])}-{number(stat[2])})"


def format_table(results: dict[str, list[dict[str, Any]]], channels: int) -> str:
    header = ["figure", "ours median (min-max)", "channels_redis median (min-max)", "ours/redis"]
    lines = [header]
    for key, label, digits in FIGURES:
        ours, redis = _median(results["ours"], key), _median(results["channels_redis"], key)

        ratio = f"{ours[0] / redis[0]:.2f}x" if ours and redis and redis[0] else "-"
        lines.append(
            [
                label.replace("N channels", f"{channels} channels"),
                _cell(ours, digits),
                _cell(redis, digits),
                ratio,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    lines.insert(1, ["-" * width for width in widths])
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def run(args: argparse.Namespace) -> int:
    if redis_server_path() is None:
        print("redis-server not found: apt-get install -y redis-server", file=sys.stderr)
        return 2
    results: dict[str, list[dict[str, Any]]] = {peer: [] for peer in PEERS}
    started = time.monotonic()
    for number in range(1, args.runs + 1):
        for peer in PEERS:
            result = asyncio.run(run_once(peer, args))
            results[peer].append(result)
            summary = (
                f"{result['group_sends_per_s']:,.0f} group sends/s, "
                f"round trip p50 {result['process_p50_us']:.0f} us"
                if result["ok"]
                else f"FAILED: {result['error']}"
            )
            print(f"  channels {peer:<14} run {number}/{args.runs}: {summary}", file=sys.stderr)
    print()
    print(
        f"{args.runs} run(s) each; group of {args.channels} channels, "
        f"{args.group_sends} group sends, {args.round_trips} round trips; "
        f"took {time.monotonic() - started:.0f} s"
    )
    print(format_table(results, args.channels))
    failures = [
        f"  {peer} run {n}: {run['error']}"
        for peer, runs in results.items()
        for n, run in enumerate(runs, 1)
        if not run["ok"]
    ]
    if failures:
        print("failures:\n" + "\n".join(failures))
    path = args.output
    if path is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-channels.json"
    document = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": vars(args) | {"output": str(path)},
        "runs": results,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nJSON: {path}")
    return 0


def add_parser(commands: Any) -> None:
    """The `channels` command of `python -m bench`."""
    parser = commands.add_parser(
        "channels", help="the Channels layer beside channels_redis on redis-server"
    )
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each peer (default 3)")
    parser.add_argument(
        "--channels", type=int, default=100, help="channels in the group (default 100)"
    )
    parser.add_argument(
        "--group-sends", type=int, default=500, help="group sends timed (default 500)"
    )
    parser.add_argument(
        "--round-trips",
        type=int,
        default=2000,
        help="round trips timed per channel kind (default 2,000)",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds a client may take (default 300)"
    )
    parser.add_argument("--output", type=Path, help="JSON file (default bench/results/...)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        sys.exit(client_main(sys.argv[2:]))
    print("run it as python -m bench channels", file=sys.stderr)
    sys.exit(2)
