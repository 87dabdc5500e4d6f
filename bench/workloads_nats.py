"""The same client roles against nats-server, written the way nats-py is meant to be
used: subscriptions with a callback, payloads as the bytes of `json.dumps`, requests
with a timeout. Subscribers decode each payload, as our client does for them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

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


async def _connect(args: RoleArgs) -> Client:
    return await nats.connect(
        f"nats://{args.host}:{args.port}", allow_reconnect=False, connect_timeout=5
    )


async def subscriber(args: RoleArgs) -> dict[str, Any]:
    # One tracker for every connection of the process (see workloads_ours.subscriber).
    tracker = Tracker(args.expected * args.clients)

    async def on_message(msg: Msg) -> None:
        json.loads(msg.data)
        tracker.hit()

    clients = []
    for _ in range(args.clients):
        nc = await _connect(args)
        await nc.subscribe(args.pattern, cb=on_message)
        await nc.flush(timeout=5)  # the server has the subscription before we say ready
        clients.append(nc)
    emit("ready")
    result = await tracker.wait(args)
    for nc in clients:
        await nc.close()
    return result


async def _publish_all(nc: Client, args: RoleArgs, started: float) -> None:
    payload, topics = make_payload(args.size), args.topics
    for i in range(args.count):
        if args.rate and i % 100 == 0:
            await keep_pace(started, i, args.rate)
        await nc.publish(topics[i % len(topics)], json.dumps(payload).encode())
    await nc.flush(timeout=30)  # the server has read everything


async def publisher(args: RoleArgs) -> dict[str, Any]:
    clients = [await _connect(args) for _ in range(args.clients)]
    started = time.monotonic()
    await asyncio.gather(*(_publish_all(nc, args, started) for nc in clients))
    seconds = time.monotonic() - started
    for nc in clients:
        await nc.close()
    return {"published": args.count * len(clients), "seconds": seconds}


async def pattern_holder(args: RoleArgs) -> dict[str, Any]:
    """Holds `count` patterns that match none of the workload's topics, over
    connections of PATTERNS_PER_HOLDER subscriptions each, until stopped."""
    patterns = [to_subject(p) for p in other_patterns(args.count)]
    clients = []
    try:
        for start in range(0, len(patterns), PATTERNS_PER_HOLDER):
            nc = await _connect(args)
            clients.append(nc)
            for pattern in patterns[start : start + PATTERNS_PER_HOLDER]:
                await nc.subscribe(pattern, cb=_ignore)
            await nc.flush(timeout=5)
        return await hold_until_deadline(args, len(clients))
    finally:
        for nc in clients:
            await nc.close()


async def _ignore(msg: Msg) -> None:
    return None


def to_subject(pattern: str) -> str:
    """Our pattern as a NATS subject: `#` (last) is NATS's `>`."""
    return pattern[:-1] + ">" if pattern.endswith("#") else pattern


async def responder(args: RoleArgs) -> dict[str, Any]:
    nc = await _connect(args)

    async def on_request(msg: Msg) -> None:
        await msg.respond(json.dumps(json.loads(msg.data)).encode())

    await nc.subscribe(REQUEST_TOPIC, cb=on_request)
    await nc.flush(timeout=5)
    emit("ready")
    await asyncio.sleep(args.deadline)
    return {}


async def requester(args: RoleArgs) -> dict[str, Any]:
    nc = await _connect(args)
    payload = make_payload(args.size)

    async def call(_: int) -> None:
        reply = await nc.request(
            REQUEST_TOPIC, json.dumps(payload).encode(), timeout=args.request_timeout
        )
        json.loads(reply.data)

    result = await timed_calls(call, args)
    await nc.close()
    return result


async def _raw_connect(args: RoleArgs) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A socket that speaks NATS's text protocol: INFO read, CONNECT sent, PONG awaited."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(args.host, args.port), 5)
    info = await asyncio.wait_for(reader.readline(), 5)
    if not info.startswith(b"INFO"):
        raise ConnectionError(f"not a NATS server: {info!r}")
    writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
    pong = await asyncio.wait_for(reader.readline(), 5)
    if not pong.startswith(b"PONG"):
        raise ConnectionError(f"connect refused: {pong!r}")
    return reader, writer


async def _raw_message(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[list[bytes], bytes]:
    """The next MSG's header fields and payload; a server PING is answered on the way."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        if line.startswith(b"PING"):
            writer.write(b"PONG\r\n")
            continue
        if line.startswith(b"MSG "):
            fields = line.split()
            data = await reader.readexactly(int(fields[-1]) + 2)
            return fields, data[:-2]


async def raw_responder(args: RoleArgs) -> dict[str, Any]:
    """Answers requests with their payload, over a bare socket: no client library."""
    reader, writer = await _raw_connect(args)
    writer.write(f"SUB {REQUEST_TOPIC} 1\r\nPING\r\n".encode())
    await asyncio.wait_for(reader.readline(), 5)
    emit("ready")

    async def answer() -> None:
        while True:
            fields, data = await _raw_message(reader, writer)
            if len(fields) == 5:
                payload = json.dumps(json.loads(data)).encode()
                writer.write(b"PUB %s %d\r\n%s\r\n" % (fields[3], len(payload), payload))

    with contextlib.suppress(TimeoutError, ConnectionError):
        await asyncio.wait_for(answer(), args.deadline)
    return {}


async def raw_requester(args: RoleArgs) -> dict[str, Any]:
    """Sequential requests over a bare socket, timed as `requester` times them."""
    reader, writer = await _raw_connect(args)
    inbox = f"_INBOX.bench{id(reader)}"
    writer.write(f"SUB {inbox} 2\r\n".encode())
    payload = make_payload(args.size)
    subject = REQUEST_TOPIC.encode()

    async def call(_: int) -> None:
        data = json.dumps(payload).encode()
        writer.write(b"PUB %s %s %d\r\n%s\r\n" % (subject, inbox.encode(), len(data), data))
        # No timeout per call (it would cost a task each): the runner bounds the role.
        _, reply = await _raw_message(reader, writer)
        json.loads(reply)

    result = await timed_calls(call, args)
    writer.close()
    return result


async def idle(args: RoleArgs) -> dict[str, Any]:
    """Opens `count` raw connections that each send `CONNECT` (and a `PING`, to know
    the server took it) and then stay silent."""
    raise_fd_limit(args.count + 100)
    connections = []
    try:
        for i in range(args.count):
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(args.host, args.port), 5
            )
            connections.append(writer)
            await asyncio.wait_for(reader.readline(), 5)  # INFO {...}
            options = {"verbose": False, "pedantic": False, "name": f"idle-{i}"}
            writer.write(f"CONNECT {json.dumps(options)}\r\nPING\r\n".encode())
            answer = await asyncio.wait_for(reader.readline(), 5)
            if answer.strip() != b"PONG":
                raise ConnectionError(f"connection {i} refused: {answer!r}")
        return await hold_until_deadline(args, len(connections))
    finally:
        for writer in connections:
            writer.close()


DURABLE_STREAM = "BENCH"


async def durable_consumer(args: RoleArgs) -> dict[str, Any]:
    """A JetStream file stream and a durable push consumer; nats-py acknowledges each
    message when the callback returns."""
    nc = await _connect(args)
    js = nc.jetstream()
    await js.add_stream(name=DURABLE_STREAM, subjects=[DURABLE_TOPIC], storage="file")
    tracker = Tracker(args.expected)

    async def on_message(msg: Msg) -> None:
        json.loads(msg.data)
        tracker.hit()

    await js.subscribe(DURABLE_TOPIC, durable=DURABLE_QUEUE, cb=on_message)
    await nc.flush(timeout=5)
    emit("ready")
    result = await tracker.wait(args)
    await nc.close()
    return result


async def durable_publisher(args: RoleArgs) -> dict[str, Any]:
    """JetStream publishes, each awaited until the server's PubAck (stored)."""
    nc = await _connect(args)
    js = nc.jetstream()
    payload = make_payload(args.size)

    async def publish_one(_: int) -> None:
        await js.publish(DURABLE_TOPIC, json.dumps(payload).encode(), timeout=30)

    started = time.monotonic()
    await in_window(args.count, args.window, publish_one)
    seconds = time.monotonic() - started
    await nc.close()
    return {"published": args.count, "seconds": seconds}


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
