"""Client roles against our broker, with the `message_broker` asyncio client (and raw
sockets for the idle connections and the raw request roles)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from typing import Any

from bench.common import (
    DURABLE_QUEUE,
    DURABLE_TOPIC,
    PATTERNS_PER_HOLDER,
    REQUEST_TOPIC,
    Role,
    RoleArgs,
    Tracker,
    emit,
    hold_until_deadline,
    in_window,
    keep_pace,
    make_payload,
    other_patterns,
    raise_fd_limit,
    timed_calls,
)
from message_broker import BrokerClient, Message


async def _connect(args: RoleArgs, name: str) -> BrokerClient:
    client = BrokerClient(f"bench-{name}-{os.getpid()}", host=args.host, port=args.port)
    if not await client.connect():
        raise ConnectionError(f"cannot connect to the broker at {args.host}:{args.port}")
    return client


async def subscriber(args: RoleArgs) -> dict[str, Any]:
    # One tracker for every connection of the process: they share its event loop, so
    # "nothing came for `settle` seconds" is a fact about the process, not about one
    # connection whose messages wait while the loop serves the others.
    tracker = Tracker(args.expected * args.clients)

    def on_message(msg: Message) -> None:  # msg.payload is already decoded
        tracker.hit()

    clients = []
    for i in range(args.clients):
        client = await _connect(args, f"sub{i}")
        await client.subscribe(args.pattern, on_message)
        clients.append(client)
    emit("ready")
    result = await tracker.wait(args)
    for client in clients:
        await client.disconnect()
    return result


async def _publish_all(client: BrokerClient, args: RoleArgs, started: float) -> dict[str, Any]:
    payload, topics = make_payload(args.size), args.topics
    for i in range(args.count):
        if args.rate and i % 100 == 0:
            await keep_pace(started, i, args.rate)
        await client.publish(topics[i % len(topics)], payload)
    # A round trip after the last publish, as nats-py's flush(): the broker handles a
    # connection's calls in order, so its answer means it has routed every message.
    status: dict[str, Any] = await client.request("status", {}, timeout=args.deadline)
    return status


async def publisher(args: RoleArgs) -> dict[str, Any]:
    clients = [await _connect(args, f"pub{i}") for i in range(args.clients)]
    started = time.monotonic()
    statuses = await asyncio.gather(*(_publish_all(client, args, started) for client in clients))
    seconds = time.monotonic() - started
    for client in clients:
        await client.disconnect()
    # Messages the broker dropped for slow subscribers whose queue overflowed.
    dropped = max(status["messages"]["dropped"] for status in statuses)
    published = args.count * len(clients)
    return {"published": published, "seconds": seconds, "broker_dropped": dropped}


async def pattern_holder(args: RoleArgs) -> dict[str, Any]:
    """Holds `count` patterns that match none of the workload's topics, over
    connections of PATTERNS_PER_HOLDER patterns each, until stopped."""
    patterns = other_patterns(args.count)
    clients = []
    for start in range(0, len(patterns), PATTERNS_PER_HOLDER):
        client = await _connect(args, f"holder{start}")
        await client.subscribe(patterns[start : start + PATTERNS_PER_HOLDER], lambda msg: None)
        clients.append(client)
    try:
        return await hold_until_deadline(args, len(clients))
    finally:
        for client in clients:
            await client.disconnect()


async def durable_consumer(args: RoleArgs) -> dict[str, Any]:
    """Consumes the durable queue; each message is acknowledged when the callback returns."""
    client = await _connect(args, "dsub")
    tracker = Tracker(args.expected)

    def on_message(msg: Message) -> None:
        tracker.hit()

    await client.subscribe(
        DURABLE_TOPIC, on_message, queue=DURABLE_QUEUE, durable=True, prefetch=1000
    )
    emit("ready")
    result = await tracker.wait(args)
    await client.disconnect()
    return result


async def durable_publisher(args: RoleArgs) -> dict[str, Any]:
    """qos=1 publishes, each awaited until the broker confirms it is stored."""
    client = await _connect(args, "dpub")
    payload = make_payload(args.size)

    async def publish_one(_: int) -> None:
        await client.publish(DURABLE_TOPIC, payload, qos=1)

    started = time.monotonic()
    await in_window(args.count, args.window, publish_one)
    seconds = time.monotonic() - started
    await client.disconnect()
    return {"published": args.count, "seconds": seconds}


async def responder(args: RoleArgs) -> dict[str, Any]:
    client = await _connect(args, "svc")
    await client.subscribe(REQUEST_TOPIC, lambda msg: msg.payload)
    emit("ready")
    await asyncio.sleep(args.deadline)
    return {}


async def requester(args: RoleArgs) -> dict[str, Any]:
    client = await _connect(args, "req")
    payload = make_payload(args.size)

    async def call(_: int) -> None:
        await client.request(REQUEST_TOPIC, payload, timeout=args.request_timeout)

    result = await timed_calls(call, args)
    await client.disconnect()
    return result


async def _raw_connect(
    args: RoleArgs, name: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A socket that speaks the protocol newline-delimited, connected as `name`."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(args.host, args.port), 5)
    call = {"jsonrpc": "2.0", "method": "connect", "params": {"client_id": name}, "id": 0}
    writer.write(json.dumps(call).encode() + b"\n")
    answer = json.loads(await asyncio.wait_for(reader.readline(), 5) or b"{}")
    if "result" not in answer:
        raise ConnectionError(f"connect refused: {answer}")
    return reader, writer


async def raw_responder(args: RoleArgs) -> dict[str, Any]:
    """Answers requests with their payload, over a bare socket: no client library."""
    reader, writer = await _raw_connect(args, f"bench-raw-svc-{os.getpid()}")
    call = {"jsonrpc": "2.0", "method": "subscribe", "params": {"patterns": [REQUEST_TOPIC]}}
    writer.write(json.dumps({**call, "id": 1}).encode() + b"\n")
    await asyncio.wait_for(reader.readline(), 5)
    emit("ready")

    async def answer() -> None:
        while line := await reader.readline():
            message = json.loads(line)
            if message.get("method") != "message":
                continue
            params = message["params"]
            reply = {"topic": params["reply_to"], "payload": params["payload"]}
            writer.write(
                json.dumps({"jsonrpc": "2.0", "method": "publish", "params": reply}).encode()
                + b"\n"
            )

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(answer(), args.deadline)
    return {}


async def raw_requester(args: RoleArgs) -> dict[str, Any]:
    """Sequential requests over a bare socket, timed as `requester` times them."""
    reader, writer = await _raw_connect(args, f"bench-raw-req-{os.getpid()}")
    payload = make_payload(args.size)

    async def call(n: int) -> None:
        params = {"topic": REQUEST_TOPIC, "payload": payload, "timeout": args.request_timeout}
        request = {"jsonrpc": "2.0", "method": "request", "params": params, "id": n}
        writer.write(json.dumps(request).encode() + b"\n")
        # No timeout per call (it would cost a task each): the runner bounds the role.
        answer = json.loads(await reader.readline() or b"{}")
        if "result" not in answer:
            raise RuntimeError(f"request failed: {answer}")

    result = await timed_calls(call, args)
    writer.close()
    return result


async def idle(args: RoleArgs) -> dict[str, Any]:
    """Opens `count` raw connections that each send `connect` (in line mode) and then
    stay silent. They never ping, so the broker never drops them for being idle."""
    raise_fd_limit(args.count + 100)
    connections = []
    try:
        for i in range(args.count):
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(args.host, args.port), 5
            )
            connections.append(writer)
            call = {"jsonrpc": "2.0", "method": "connect", "params": {"client_id": f"idle-{i}"}}
            writer.write(json.dumps({**call, "id": 1}).encode() + b"\n")
            answer = json.loads(await asyncio.wait_for(reader.readline(), 5) or b"{}")
            if "result" not in answer:
                raise ConnectionError(f"connection {i} refused: {answer}")
        return await hold_until_deadline(args, len(connections))
    finally:
        for writer in connections:
            writer.close()


ROLES: dict[str, Role] = {
    "subscriber": subscriber,
    "publisher": publisher,
    "responder": responder,
    "requester": requester,
    "raw_responder": raw_responder,
    "raw_requester": raw_requester,
    "idle": idle,
    "pattern_holder": pattern_holder,
    "durable_consumer": durable_consumer,
    "durable_publisher": durable_publisher,
}
