"""BrokerClient and Message against a real broker."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from message_broker import (
    BrokerClient,
    BrokerConfig,
    InvalidMessageError,
    Message,
    MessageBroker,
    NoRespondersError,
    NotConnectedError,
    RequestTimeoutError,
)

from support.waiting import eventually


async def test_message_fields_and_id(make_client):
    sub = await make_client("sub")
    pub = await make_client("pub")
    got: list[Message] = []
    await sub.subscribe("jobs.*", got.append)
    message_id = await pub.publish("jobs.activated", {"job_id": "123"}, ttl=30)
    await eventually(lambda: got)
    msg = got[0]
    assert (msg.topic, msg.payload, msg.sender, msg.id) == (
        "jobs.activated",
        {"job_id": "123"},
        "pub",
        message_id,
    )
    assert msg.timestamp > 1e9
    assert msg.ttl == 30
    assert msg.reply_to is None and not msg.is_request


async def test_sync_and_async_callbacks_run_on_the_loop_thread(make_client):
    client = await make_client("c")
    loop_thread = threading.get_ident()
    seen = []

    def sync_cb(msg):
        seen.append(("sync", msg.payload, threading.get_ident()))

    async def async_cb(msg):
        await asyncio.sleep(0)
        seen.append(("async", msg.payload, threading.get_ident()))

    await client.subscribe(["t.sync"], sync_cb)
    await client.subscribe(["t.async"], async_cb)
    await client.publish("t.sync", 1)
    await client.publish("t.async", 2)
    await eventually(lambda: len(seen) == 2)
    assert sorted(seen) == [("async", 2, loop_thread), ("sync", 1, loop_thread)]


async def test_exception_in_callback_is_logged_and_delivery_goes_on(make_client, caplog):
    client = await make_client("c")
    good = []

    def bad(msg):
        raise RuntimeError(f"boom {msg.payload}")

    async def bad_async(msg):
        raise ValueError("async boom")

    await client.subscribe("t", bad)
    await client.subscribe("t", bad_async)
    await client.subscribe("t", good.append)
    marks: list[Message] = []

    async def mark(msg):
        marks.append(msg)

    await client.subscribe("t.done", mark)
    with caplog.at_level(logging.ERROR, logger="message_broker.client"):
        for n in range(3):
            await client.publish("t", n)
        await eventually(lambda: len(good) == 3)
        # Delivered after the three, so its coroutine runs after theirs have failed.
        await client.publish("t.done", "marker")
        await eventually(lambda: marks)
    assert [m.payload for m in good] == [0, 1, 2]
    errors = [r for r in caplog.records if r.name == "message_broker.client"]
    assert sum("boom 1" in str(r.exc_info[1]) for r in errors) == 1
    assert sum("async boom" in str(r.exc_info[1]) for r in errors) == 3


async def test_each_callback_once_per_message(make_client):
    client = await make_client("c")
    a, b = [], []
    await client.subscribe(["x.*", "x.#", "x.y"], a.append)
    await client.subscribe(["#"], b.append)
    await client.publish("x.y", "one")
    await client.publish("done", "marker")
    await eventually(lambda: any(m.payload == "marker" for m in b))
    assert [m.payload for m in a] == ["one"]
    assert [m.payload for m in b if m.topic in ("x.y", "done")] == ["one", "marker"]


async def test_unsubscribe(make_client):
    client = await make_client("c")
    got = []
    await client.subscribe(["a.*", "b.*"], got.append)
    assert await client.unsubscribe(["a.*", "never.*"]) == ["a.*"]
    await client.publish("a.x", 1)
    await client.publish("b.x", 2)
    # b.x, published after a.x, is the marker: a.x would have arrived first.
    await eventually(lambda: got)
    assert [m.payload for m in got] == [2]
    status = await client.request("status", {})
    assert status["clients"][0]["subscriptions"] == ["b.*"]


async def test_request_response_with_sync_and_async_responders(make_client):
    service = await make_client("svc")
    client = await make_client("client")
    await service.subscribe("math.double", lambda m: m.payload * 2)

    async def slow_square(msg):
        await asyncio.sleep(0.01)
        return msg.payload**2

    await service.subscribe("math.square", slow_square)
    assert await client.request("math.double", 21) == 42
    assert await client.request("math.square", 12, timeout=2) == 144
    results = await asyncio.gather(*(client.request("math.double", n) for n in range(20)))
    assert results == [n * 2 for n in range(20)]


async def test_request_first_non_none_answer_wins(make_client):
    service = await make_client("svc")
    client = await make_client("client")
    await service.subscribe("q", lambda m: None)  # a listener that does not answer
    await service.subscribe("q", lambda m: "answer")
    assert await client.request("q", {}) == "answer"


async def test_no_responders_fails_at_once(make_client):
    client = await make_client("client")
    started = asyncio.get_running_loop().time()
    with pytest.raises(NoRespondersError) as caught:
        await client.request("nobody.listens", {}, timeout=60)
    assert caught.value.code == -32003
    assert asyncio.get_running_loop().time() - started < 30


async def test_request_timeout(make_client):
    silent = await make_client("silent")
    client = await make_client("client")
    await silent.subscribe("slow", lambda m: None)
    with pytest.raises(RequestTimeoutError) as caught:
        await client.request("slow", {}, timeout=0.2)
    assert caught.value.code == -32002
    assert isinstance(caught.value, TimeoutError)


async def test_20000_messages_in_order_none_lost(make_client):
    sub = await make_client("sub")
    pub = await make_client("pub")
    got = []
    await sub.subscribe("seq", lambda m: got.append(m.payload["n"]))
    count = 20_000
    for n in range(count):
        await pub.publish("seq", {"n": n, "text": "payload of about a hundred bytes"})
    await eventually(lambda: len(got) >= count, timeout=60)
    assert got == list(range(count))


@pytest.mark.parametrize(
    "payload",
    [
        {"text": 'Grüße 日本語 🎉 "quotes" \\ back\nslash', "n": [1, 2.5, None, True, False]},
        {"deep": {"a": {"b": {"c": [[[[{"d": "e"}]]]]}}}},
        [1, "two", {"three": 3}],
        "just a string",
        12345678901234567890,
        3.141592653589793,
        None,
        True,
        {},
    ],
)
async def test_payloads_round_trip(make_client, payload):
    sub = await make_client("sub")
    pub = await make_client("pub")
    got = []
    await sub.subscribe("rt", got.append)
    await pub.publish("rt", payload)
    await eventually(lambda: got)
    assert got[0].payload == payload
    assert type(got[0].payload) is type(payload)


@pytest.mark.parametrize(
    "payload,needle",
    [
        ({1, 2}, "set"),
        (object(), "object"),
        (float("nan"), "Out of range float"),
        ({"f": float("inf")}, "Out of range float"),
        (b"bytes", "bytes"),
    ],
)
async def test_payload_json_cannot_carry_raises_at_the_call_site(make_client, payload, needle):
    client = await make_client("c")
    with pytest.raises(InvalidMessageError, match=needle):
        await client.publish("t", payload)
    with pytest.raises(InvalidMessageError):
        await client.request("t", payload)


async def test_payload_larger_than_the_broker_allows(start_broker):
    broker = start_broker(max_message_size=4096)
    client = BrokerClient("c", host="127.0.0.1", port=broker.port)
    assert await client.connect()
    with pytest.raises(InvalidMessageError, match="max_message_size"):
        await client.publish("t", "x" * 5000)
    await client.publish("t", "x" * 1000)
    await client.disconnect()


@pytest.mark.parametrize("topic", ["", "a..b", "jobs.*", "system.broker.ready", "_internal.x"])
async def test_bad_topics_raise_at_the_call_site(make_client, topic):
    client = await make_client("c")
    with pytest.raises(InvalidMessageError):
        await client.publish(topic, 1)


async def test_bad_patterns_raise(make_client):
    client = await make_client("c")
    with pytest.raises(InvalidMessageError, match="last"):
        await client.subscribe(["#.a"], print)
    with pytest.raises(TypeError):
        await client.subscribe(["ok"], "not callable")
    with pytest.raises(TypeError):
        await client.subscribe([1], print)


async def test_qos_and_ttl_are_checked(make_client):
    client = await make_client("c")
    for qos in (2, -1, True, "1"):
        with pytest.raises(InvalidMessageError, match="qos"):
            await client.publish("t", 1, qos=qos)
    with pytest.raises(InvalidMessageError, match="retain"):
        await client.publish("t", 1, retain=1)
    with pytest.raises(InvalidMessageError, match="ttl"):
        await client.publish("t", 1, ttl=-1)


async def test_using_the_client_before_connect_raises():
    client = BrokerClient("early")
    with pytest.raises(NotConnectedError, match="connect"):
        await client.publish("t", 1)
    with pytest.raises(NotConnectedError):
        await client.subscribe("t", print)


def test_bad_client_ids():
    for bad in ["", "x" * 257, "a\nb", 5]:
        with pytest.raises(ValueError):
            BrokerClient(bad)


async def test_connect_returns_false_when_nobody_listens(caplog):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = BrokerClient("lonely", host="127.0.0.1", port=port, connect_retries=2)
    with caplog.at_level(logging.WARNING, logger="message_broker.client"):
        assert await client.connect() is False
    assert client.is_connected is False
    assert any("could not connect" in r.getMessage() for r in caplog.records)
    with pytest.raises(NotConnectedError):
        await client.publish("t", 1)


async def test_reconnect_and_resubscribe_after_broker_restart():
    first = MessageBroker(BrokerConfig(host="127.0.0.1", port=0))
    port = first.start_sync()
    sub = BrokerClient("sub", host="127.0.0.1", port=port, reconnect_delay=0.05)
    pub = BrokerClient("pub", host="127.0.0.1", port=port, reconnect_delay=0.05)
    assert await sub.connect() and await pub.connect()
    got = []
    await sub.subscribe("jobs.*", got.append)
    await pub.publish("jobs.before", 1)
    await eventually(lambda: len(got) == 1)

    await first.stop()
    await eventually(lambda: not sub.is_connected and not pub.is_connected)
    # Published while the broker is away: queued, and sent once the client is back,
    # after its own subscriptions are restored (so it hears its own message).
    await sub.publish("jobs.during", 2)
    with pytest.raises(NotConnectedError):
        await pub.request("jobs.x", {}, timeout=1)

    second = MessageBroker(BrokerConfig(host="127.0.0.1", port=port))
    second.start_sync()
    try:
        await eventually(lambda: sub.is_connected and pub.is_connected)
        await eventually(lambda: len(got) == 2)
        await pub.publish("jobs.after", 3)
        await eventually(lambda: len(got) == 3)
        assert [m.payload for m in got] == [1, 2, 3]
        status = await sub.request("status", {})
        subs = {c["client_id"]: c["subscriptions"] for c in status["clients"]}
        assert subs["sub"] == ["jobs.*"]
    finally:
        await sub.disconnect()
        await pub.disconnect()
        await second.stop()


async def test_publishes_beyond_the_buffer_while_disconnected_raise():
    broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=0))
    port = broker.start_sync()
    client = BrokerClient("c", host="127.0.0.1", port=port, max_pending=5, reconnect_delay=5)
    assert await client.connect()
    await broker.stop()
    await eventually(lambda: not client.is_connected)
    for n in range(5):
        await client.publish("t", n)
    with pytest.raises(NotConnectedError, match="5 messages already wait"):
        await client.publish("t", 5)
    await client.disconnect()


async def test_heartbeats_keep_the_client_alive(start_broker):
    broker = start_broker(heartbeat_interval=0.05, heartbeat_timeout=0.3)
    client = BrokerClient("beating", host="127.0.0.1", port=broker.port)
    assert await client.connect()
    await asyncio.sleep(1.0)
    assert client.is_connected
    status = await client.request("status", {})
    assert status["client_count"] == 1
    await client.disconnect()


async def test_take_over_does_not_ping_pong(make_client):
    first = await make_client("same-id")
    second = await make_client("same-id")
    await eventually(lambda: not first.is_connected)
    # A comeback would follow a reconnect timer (reconnect_delay 0.1 s), not a message.
    await asyncio.sleep(0.3)
    assert second.is_connected and not first.is_connected
    status = await second.request("status", {})
    assert [c["client_id"] for c in status["clients"]] == ["same-id"]


async def test_disconnect_is_announced_and_idempotent(make_client):
    watcher = await make_client("watcher")
    leaving = await make_client("leaving")
    events = []
    await watcher.subscribe("system.client.disconnected", events.append)
    await leaving.disconnect()
    await leaving.disconnect()
    assert not leaving.is_connected
    await eventually(lambda: events)
    assert events[0].payload == {"client_id": "leaving", "reason": "client disconnect"}


async def test_async_context_manager(broker):
    async with BrokerClient("ctx", host="127.0.0.1", port=broker.port) as client:
        assert client.is_connected
    assert not client.is_connected


async def test_pending_request_fails_when_disconnecting(make_client):
    silent = await make_client("silent")
    client = await make_client("client")
    arrived: list[Message] = []
    await silent.subscribe("slow", arrived.append)  # never answers
    pending = asyncio.ensure_future(client.request("slow", {}, timeout=30))
    await eventually(lambda: arrived)
    await client.disconnect()
    with pytest.raises(NotConnectedError):
        await pending


def test_a_client_belongs_to_the_loop_that_connected(broker):
    client = BrokerClient("loop-bound", host="127.0.0.1", port=broker.port)
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(client.connect())
        with pytest.raises(RuntimeError, match="event loop"):
            asyncio.run(client.publish("t", 1))
        loop.run_until_complete(client.disconnect())
    finally:
        loop.close()


SHORT_SCRIPT = textwrap.dedent(
    """
    import asyncio
    from message_broker import BrokerClient, BrokerConfig, MessageBroker

    async def main():
        broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=0))
        await broker.start()
        client = BrokerClient("short", host="127.0.0.1", port=broker.port)
        assert await client.connect()
        got = []
        await client.subscribe("t.#", got.append)
        for n in range(200):
            await client.publish("t.x", {"n": n})
        await asyncio.sleep(0.01)
        if DISCONNECT:
            await client.disconnect()
        if STOP:
            await broker.stop()

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("disconnect", [True, False])
@pytest.mark.parametrize("stop", [True, False])
def test_short_scripts_always_exit_cleanly(disconnect, stop):
    """The interpreter-exit crash: 4 variants x 15 scripts, every one exits with 0."""
    script = f"DISCONNECT = {disconnect}\nSTOP = {stop}\n" + SHORT_SCRIPT
    failures = []
    for _ in range(15):
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        if result.returncode != 0:
            failures.append((result.returncode, result.stderr[-1500:]))
    assert not failures, failures


WORKER_THREADS_SCRIPT = textwrap.dedent(
    """
    import asyncio
    from message_broker import BrokerClient, BrokerConfig, MessageBroker

    async def main():
        broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=0))
        await broker.start()
        client = BrokerClient("threads", host="127.0.0.1", port=broker.port)
        assert await client.connect()
        got = []
        await client.subscribe("t", got.append)
        for n in range(100):
            await client.publish("t", n)
        status = await client.request("status", {})
        for _ in range(500):
            if len(got) == 100:
                break
            await asyncio.sleep(0.01)
        print(len(got), status["worker_threads"])
        await client.disconnect()
        await broker.stop()

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("threads", ["1", "3"])
def test_the_runtime_runs_on_as_many_workers_as_asked(threads):
    env = {**os.environ, "MESSAGE_BROKER_WORKER_THREADS": threads}
    result = subprocess.run(
        [sys.executable, "-c", WORKER_THREADS_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-1500:]
    assert result.stdout.split() == ["100", threads]


@pytest.mark.parametrize("threads", ["0", "many", "65"])
def test_a_bad_worker_count_is_refused_with_its_name(threads):
    script = textwrap.dedent(
        """
        import asyncio
        from message_broker import BrokerClient

        async def main():
            try:
                await BrokerClient("c", host="127.0.0.1", port=9).connect()
            except RuntimeError as error:
                print(error)

        asyncio.run(main())
        """
    )
    env = {**os.environ, "MESSAGE_BROKER_WORKER_THREADS": threads}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr[-1500:]
    assert result.stdout.strip() == (
        f"MESSAGE_BROKER_WORKER_THREADS must be a whole number from 1 to 64, got {threads!r}"
    ).replace("'", '"')


async def test_disconnect_right_after_a_burst_sends_everything(start_broker):
    """disconnect() sends what is queued: closing must never cut a frame in two."""
    broker = start_broker(max_queue_size=200_000, max_queue_bytes=256 * 1024 * 1024)
    sub = BrokerClient("sub", host="127.0.0.1", port=broker.port)
    pub = BrokerClient("pub", host="127.0.0.1", port=broker.port)
    assert await sub.connect() and await pub.connect()
    got = []
    await sub.subscribe("burst", lambda m: got.append(m.payload["n"]))
    count = 50_000
    for n in range(count):
        await pub.publish("burst", {"n": n, "text": "x" * 60})
    await pub.disconnect()
    await eventually(lambda: len(got) >= count, timeout=60)
    assert got == list(range(count))
    status = await sub.request("status", {})
    assert status["connections"]["protocol_errors"] == 0
    await sub.disconnect()


async def test_headers_travel_beside_the_payload(make_client):
    sub = await make_client("sub")
    pub = await make_client("pub")
    got: list[Message] = []
    await sub.subscribe("docs.*", got.append)
    headers = {"trace-id": "4bf92f35", "content-type": "text/markdown", "note": "grüße"}
    await pub.publish("docs.new", "# hi", headers=headers)
    await pub.publish("docs.plain", 1)
    await eventually(lambda: len(got) == 2)
    assert (got[0].headers, got[1].headers) == (headers, None)
    # A request carries them to the responder as well.
    seen: list[Message] = []

    def answer(msg: Message) -> str:
        seen.append(msg)
        return msg.headers["trace-id"] if msg.headers else "none"

    await sub.subscribe("svc.trace", answer)
    assert await pub.request("svc.trace", None, headers={"trace-id": "t-7"}) == "t-7"
    assert seen[0].headers == {"trace-id": "t-7"}


@pytest.mark.parametrize(
    "headers, complaint",
    [
        ({"n": 1}, "strings"),
        (["a"], "dict"),
        ({"": "x"}, "header names"),
        ({"k": "x" * 4097}, "longer than"),
        ({f"h{n}": "v" for n in range(65)}, "at most 64"),
    ],
)
async def test_bad_headers_are_refused_before_sending(make_client, headers, complaint):
    pub = await make_client("pub")
    with pytest.raises(InvalidMessageError, match=complaint):
        await pub.publish("t", 1, headers=headers)


async def test_passive_and_no_local_subscriptions(make_client):
    logger_client = await make_client("logger")
    asker = await make_client("asker")
    logged: list[Message] = []
    await logger_client.subscribe("svc.#", logged.append, passive=True)
    with pytest.raises(NoRespondersError):
        await asker.request("svc.add", [1, 2])
    await eventually(lambda: logged)
    assert logged[0].payload == [1, 2]

    chat = await make_client("chat")
    mine: list[Message] = []
    everything: list[Message] = []
    await chat.subscribe("room.*", mine.append, no_local=True)
    await chat.subscribe("room.#", everything.append)
    await chat.publish("room.a", "own")
    await eventually(lambda: everything)
    # Published once "own" is back: the marker arrives after it on chat's connection.
    await asker.publish("room.a", "marker")
    await eventually(lambda: len(everything) == 2)
    assert [m.payload for m in everything] == ["own", "marker"]
    assert [m.payload for m in mine] == ["marker"]
    with pytest.raises(ValueError, match="plain subscriptions"):
        await chat.subscribe("jobs", mine.append, queue="q", passive=True)


async def test_headers_count_towards_the_message_size(start_broker):
    broker = start_broker(max_message_size=2048)
    async with BrokerClient("pub", host="127.0.0.1", port=broker.port) as pub:
        await pub.publish("t", "x" * 1000, qos=1)
        with pytest.raises(InvalidMessageError, match="max_message_size"):
            await pub.publish("t", "x" * 1000, qos=1, headers={"h": "y" * 1500})


async def test_publish_nowait_queues_in_order_beside_publish(make_client):
    subscriber = await make_client("sub")
    publisher = await make_client("pub")
    got: list[Message] = []
    await subscriber.subscribe("nowait.*", got.append)
    ids = []
    for n in range(1000):
        if n % 3:
            ids.append(publisher.publish_nowait("nowait.a", n, headers={"n": str(n)}))
        else:
            ids.append(await publisher.publish("nowait.a", n, headers={"n": str(n)}))
    await eventually(lambda: len(got) == 1000)
    assert [m.payload for m in got] == list(range(1000))
    assert [m.id for m in got] == ids and len(set(ids)) == 1000
    assert all(m.headers == {"n": str(m.payload)} for m in got)
    retained = publisher.publish_nowait("nowait.state", {"on": True}, retain=True, ttl=60)
    late = await make_client("late")
    seen: list[Message] = []
    await late.subscribe("nowait.state", seen.append)
    await eventually(lambda: len(seen) == 1)
    assert (seen[0].id, seen[0].retained, seen[0].payload) == (retained, True, {"on": True})

    # The same refusals as publish(), raised where it is called.
    with pytest.raises(InvalidMessageError, match="reserved"):
        publisher.publish_nowait("system.x", 1)
    with pytest.raises(InvalidMessageError):
        publisher.publish_nowait("nowait.a", float("nan"))
    with pytest.raises(InvalidMessageError, match="max_message_size"):
        publisher.publish_nowait("nowait.a", "x" * (2 << 20))
    await publisher.disconnect()
    with pytest.raises(NotConnectedError):
        publisher.publish_nowait("nowait.a", 1)
