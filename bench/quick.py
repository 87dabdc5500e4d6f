"""Quick measurement: 1 publisher -> 1 subscriber throughput and request round trips,
each client in its own process, the broker in another.

    python -m bench.quick [--messages 100000] [--requests 2000] [--runs 3]

Build the extension in release mode first (`maturin develop --release` or
`pip install .`). Prints the median and the range over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import time

PAYLOAD = {"job_id": 123456, "status": "activated", "worker": "saw-01", "note": "x" * 40}


async def subscriber(port: int, count: int) -> None:
    from message_broker import BrokerClient

    client = BrokerClient("bench-sub", host="127.0.0.1", port=port)
    assert await client.connect()
    done = asyncio.get_running_loop().create_future()
    seen = 0
    first = 0.0

    def on_message(msg) -> None:
        nonlocal seen, first
        if seen == 0:
            first = time.perf_counter()
        seen += 1
        if seen == count:
            done.set_result(time.perf_counter() - first)

    await client.subscribe("bench.data", on_message)
    print("ready", flush=True)
    elapsed = await asyncio.wait_for(done, 120)
    print(f"received {seen} {elapsed}", flush=True)
    await client.disconnect()


async def publisher(port: int, count: int) -> None:
    from message_broker import BrokerClient

    client = BrokerClient("bench-pub", host="127.0.0.1", port=port)
    assert await client.connect()
    for _ in range(count):
        await client.publish("bench.data", PAYLOAD)
    await client.disconnect()


async def responder(port: int) -> None:
    from message_broker import BrokerClient

    client = BrokerClient("bench-svc", host="127.0.0.1", port=port)
    assert await client.connect()
    await client.subscribe("bench.echo", lambda msg: msg.payload)
    print("ready", flush=True)
    await asyncio.sleep(3600)


async def requester(port: int, count: int) -> None:
    from message_broker import BrokerClient

    client = BrokerClient("bench-req", host="127.0.0.1", port=port)
    assert await client.connect()
    for _ in range(50):  # warm-up
        await client.request("bench.echo", PAYLOAD)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        await client.request("bench.echo", PAYLOAD)
        times.append(time.perf_counter() - started)
    times.sort()
    p = lambda q: times[int(q * (len(times) - 1))] * 1e6  # noqa: E731
    print(f"latency {p(0.5)} {p(0.9)} {p(0.99)}", flush=True)
    await client.disconnect()


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.quick", *args],
        stdout=subprocess.PIPE,
        text=True,
    )


def start_broker() -> tuple[subprocess.Popen, int]:
    broker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "message_broker",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert broker.stdout is not None
    port = int(re.search(r":(\d+)$", broker.stdout.readline().strip()).group(1))
    return broker, port


def run_once(messages: int, requests: int) -> tuple[float, tuple[float, float, float]]:
    broker, port = start_broker()
    try:
        sub = spawn("--role", "subscriber", "--port", str(port), "--messages", str(messages))
        assert sub.stdout is not None and sub.stdout.readline().strip() == "ready"
        pub = spawn("--role", "publisher", "--port", str(port), "--messages", str(messages))
        received = sub.stdout.readline().split()
        pub.wait(120)
        sub.wait(120)
        throughput = int(received[1]) / float(received[2])

        svc = spawn("--role", "responder", "--port", str(port))
        assert svc.stdout is not None and svc.stdout.readline().strip() == "ready"
        req = spawn("--role", "requester", "--port", str(port), "--requests", str(requests))
        assert req.stdout is not None
        latency = tuple(float(x) for x in req.stdout.readline().split()[1:])
        req.wait(120)
        svc.kill()
        svc.wait()
        return throughput, latency  # type: ignore[return-value]
    finally:
        broker.terminate()
        broker.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role")
    parser.add_argument("--port", type=int)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    roles = {
        "subscriber": lambda: subscriber(args.port, args.messages),
        "publisher": lambda: publisher(args.port, args.messages),
        "responder": lambda: responder(args.port),
        "requester": lambda: requester(args.port, args.requests),
    }
    if args.role:
        asyncio.run(roles[args.role]())
        return
    results = [run_once(args.messages, args.requests) for _ in range(args.runs)]
    rates = [r[0] for r in results]
    p50s = [r[1][0] for r in results]
    p90s = [r[1][1] for r in results]
    print(f"1 -> 1 pub/sub, {args.messages} messages of ~100 B, {args.runs} runs:")
    median, low, high = statistics.median(rates), min(rates), max(rates)
    print(f"  median {median:,.0f} msg/s (min {low:,.0f}, max {high:,.0f})")
    print(f"request round trip, {args.requests} sequential requests:")
    print(
        f"  p50 median {statistics.median(p50s):.0f} us (min {min(p50s):.0f}, max {max(p50s):.0f}),"
        f" p90 median {statistics.median(p90s):.0f} us"
    )


if __name__ == "__main__":
    main()
