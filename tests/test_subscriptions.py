"""Subscription handles, taking messages without a callback, flush and drain: the
asyncio client and the synchronous one (the Qt client's handle is tested in
test_qt_client.py; a Qt client never waits for a message, so it has no next_msg)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import threading

import pytest

from message_broker import (
    URL_ENV,
    BrokerClient,
    Message,
    MessageBroker,
    NoRespondersError,
    NotConnectedError,
    Subscription,
)
from message_broker.sync import SyncBrokerClient, SyncSubscription

from support.readme import readme_blocks
from support.waiting import eventually


@pytest.fixture
def sync_client(broker):
    clients: list[SyncBrokerClient] = []

    def make(client_id: str, **options) -> SyncBrokerClient:
        client = SyncBrokerClient(client_id, "127.0.0.1", broker.port, **options)
        assert client.connect()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.disconnect()


def held_patterns(broker: MessageBroker, client_id: str) -> list[str]:
    """The patterns the broker holds for ``client_id``."""
    clients = {c["client_id"]: c for c in broker.status()["clients"]}
    return clients[client_id]["subscriptions"]


def queue_status(broker: MessageBroker, name: str) -> dict:
    return next(q for q in broker.status()["queues"] if q["name"] == name)


async def until_marker(client: BrokerClient, publisher: BrokerClient) -> None:
    """Waits until ``client`` has heard a marker published by ``publisher`` after what
    came before: everything published before it has been delivered."""
    heard = asyncio.Event()
    marker = await client.subscribe("marker", lambda _: heard.set())
    await publisher.publish("marker", None)
    await asyncio.wait_for(heard.wait(), 10)
    await marker.unsubscribe()


# -- the handle -------------------------------------------------------------------------


async def test_subscribe_returns_its_patterns_as_a_list_and_a_handle(make_client):
    client = await make_client("c")
    sub = await client.subscribe(["a.*", "b", "a.*"], lambda _: None)
    assert isinstance(sub, Subscription) and isinstance(sub, list)
    assert sub == ["a.*", "b"]
    assert sub.active and sub.queue is None and sub.pending == 0 and sub.dropped == 0
    assert repr(sub) == "<Subscription ['a.*', 'b'] active>"
    await sub.unsubscribe()
    assert not sub.active
    assert repr(sub) == "<Subscription ['a.*', 'b'] ended>"
    await sub.unsubscribe()  # once ended, nothing more to do
    await client.disconnect()


async def test_unsubscribing_one_callback_keeps_the_others_on_its_pattern(make_client, broker):
    client = await make_client("c")
    publisher = await make_client("p")
    first: list[int] = []
    second: list[int] = []
    first_sub = await client.subscribe("jobs.*", lambda m: first.append(m.payload))
    second_sub = await client.subscribe(["jobs.*", "other"], lambda m: second.append(m.payload))
    await publisher.publish("jobs.a", 1)
    await eventually(lambda: first == [1] and second == [1])

    await first_sub.unsubscribe()
    assert held_patterns(broker, "c") == ["jobs.*", "other"], "still held for the second"
    await publisher.publish("jobs.a", 2)
    await until_marker(client, publisher)
    assert (first, second) == ([1], [1, 2])

    await second_sub.unsubscribe()
    assert held_patterns(broker, "c") == [], "no subscription holds them any more"
    await client.disconnect()
    await publisher.disconnect()


async def test_a_shared_pattern_left_to_a_passive_subscription_becomes_passive(make_client):
    client = await make_client("c")
    caller = await make_client("caller")
    responder = await client.subscribe("svc.x", lambda m: "answer")
    await client.subscribe("svc.x", lambda m: None, passive=True)
    assert await caller.request("svc.x", {}, timeout=5) == "answer"
    await responder.unsubscribe()
    with pytest.raises(NoRespondersError):
        await caller.request("svc.x", {}, timeout=5)
    await client.disconnect()
    await caller.disconnect()


async def test_the_clients_unsubscribe_ends_the_handles_left_without_patterns(make_client):
    client = await make_client("c")
    only_jobs = await client.subscribe("jobs.*")
    jobs_and_more = await client.subscribe(["jobs.*", "more"])
    assert await client.unsubscribe("jobs.*") == ["jobs.*"]
    assert not only_jobs.active
    assert jobs_and_more.active, "it still has a pattern"
    await client.disconnect()
    assert not jobs_and_more.active, "a closed client ends every subscription"


# -- taking messages ----------------------------------------------------------------------


async def test_next_msg_takes_messages_in_order_then_times_out(make_client):
    client = await make_client("c")
    publisher = await make_client("p")
    sub = await client.subscribe("jobs.*")
    for n in range(3):
        await publisher.publish("jobs.n", n)
    got = [await sub.next_msg(timeout=5) for _ in range(3)]
    assert [(m.topic, m.payload, m.sender) for m in got] == [("jobs.n", n, "p") for n in range(3)]
    with pytest.raises(TimeoutError, match=r"no message on \['jobs\.\*'\] within 0.05 s"):
        await sub.next_msg(timeout=0.05)
    for _ in range(3):
        with pytest.raises(TimeoutError):
            await sub.next_msg(timeout=0)
    assert sub._messages._waiters == [], "polling a quiet subscription keeps nothing"
    with pytest.raises(ValueError, match="timeout"):
        await sub.next_msg(timeout=-1)
    await client.disconnect()
    await publisher.disconnect()


async def test_next_msg_is_for_subscriptions_without_a_callback(make_client):
    client = await make_client("c")
    sub = await client.subscribe("jobs.*", lambda _: None)
    with pytest.raises(TypeError, match="has a callback"):
        await sub.next_msg(timeout=1)
    with pytest.raises(TypeError, match="has a callback"):
        sub.__aiter__()
    await client.disconnect()


async def test_async_for_ends_once_unsubscribed_and_the_buffer_is_empty(make_client):
    client = await make_client("c")
    sub = await client.subscribe("jobs.*")
    await client.publish("jobs.a", 1)
    await client.publish("jobs.a", 2)
    await eventually(lambda: sub.pending == 2)
    await sub.unsubscribe()
    got = [msg.payload async for msg in sub]
    assert got == [1, 2], "what it received before is still taken"
    with pytest.raises(NotConnectedError, match="has ended"):
        await sub.next_msg(timeout=1)
    await client.disconnect()


async def test_a_waiting_next_msg_ends_when_the_client_disconnects(make_client):
    client = await make_client("c")
    sub = await client.subscribe("jobs.*")
    waiting = asyncio.ensure_future(sub.next_msg())
    await asyncio.sleep(0)
    await client.disconnect()
    with pytest.raises(NotConnectedError, match="has ended"):
        await asyncio.wait_for(waiting, 5)


async def test_messages_subscribes_for_the_loop_and_unsubscribes_after(make_client, broker):
    client = await make_client("c")
    publisher = await make_client("p")
    got: list[int] = []

    async def consume() -> None:
        async for msg in client.messages("jobs.*"):
            got.append(msg.payload)
            if len(got) == 2:
                break

    consumer = asyncio.ensure_future(consume())
    await eventually(lambda: held_patterns(broker, "c") == ["jobs.*"])
    await publisher.publish("jobs.a", 1)
    await publisher.publish("jobs.a", 2)
    await asyncio.wait_for(consumer, 10)
    assert got == [1, 2]
    await eventually(lambda: held_patterns(broker, "c") == [])

    async with contextlib.aclosing(client.messages("closing.*")) as stream:
        # It subscribes when the first message is asked for.
        first = asyncio.ensure_future(anext(stream))
        await eventually(lambda: held_patterns(broker, "c") == ["closing.*"])
        await publisher.publish("closing.a", 3)
        assert (await asyncio.wait_for(first, 10)).payload == 3
    assert held_patterns(broker, "c") == [], "aclosing unsubscribes at the end of its block"
    await client.disconnect()
    await publisher.disconnect()


async def test_a_full_buffer_drops_new_messages_counts_and_warns_once(make_client, caplog):
    client = await make_client("c")
    publisher = await make_client("p")
    sub = await client.subscribe("jobs.*", max_buffered=3)
    with caplog.at_level(logging.WARNING, logger="message_broker.client"):
        for n in range(10):
            await publisher.publish("jobs.n", n)
        await until_marker(client, publisher)
    assert (sub.pending, sub.dropped) == (3, 7)
    warnings = [r for r in caplog.records if "drops new ones" in r.getMessage()]
    assert len(warnings) == 1, "one warning when dropping starts, not one per message"
    assert [(await sub.next_msg(timeout=1)).payload for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="max_buffered"):
        await client.subscribe("x", max_buffered=0)
    await client.disconnect()
    await publisher.disconnect()


async def test_queue_messages_taken_are_acknowledged_when_the_next_is_taken(make_client, broker):
    client = await make_client("c")
    publisher = await make_client("p")
    sub = await client.subscribe("work.*", queue="work", durable=True)
    assert sub.queue == "work"
    for n in range(3):
        await publisher.publish("work.n", n)
    first = await sub.next_msg(timeout=5)
    assert first.payload == 0 and first.queue == "work"
    await eventually(lambda: queue_status(broker, "work")["in_flight"] == 3)
    second = await sub.next_msg(timeout=5)
    assert second.payload == 1
    await eventually(lambda: queue_status(broker, "work")["acked"] == 1)
    second.ack()
    await eventually(lambda: queue_status(broker, "work")["acked"] == 2)
    # The one not taken goes back to the (durable) queue with the subscription.
    await sub.unsubscribe()
    assert sub.pending == 0
    other = await make_client("other")
    again = await other.subscribe("work.*", queue="work", durable=True)
    assert (await again.next_msg(timeout=5)).payload == 2
    await client.disconnect()
    await other.disconnect()
    await publisher.disconnect()


# -- flush and drain ------------------------------------------------------------------


async def test_flush_returns_once_everything_published_reached_the_broker(make_client, broker):
    client = await make_client("c")
    before = broker.status()["messages"]["published"]
    for n in range(2000):
        await client.publish("nobody.listens", n)
    await client.flush(timeout=10)
    assert broker.status()["messages"]["published"] - before == 2000
    await client.disconnect()


async def test_flush_without_a_connection_raises(start_broker):
    broker = start_broker()
    client = BrokerClient("c", host="127.0.0.1", port=broker.port, reconnect_delay=5)
    assert await client.connect()
    broker.stop_sync()
    await eventually(lambda: not client.is_connected)
    with pytest.raises(NotConnectedError):
        await client.flush()
    await client.disconnect()
    with pytest.raises(NotConnectedError):
        await client.flush()


async def test_drain_finishes_callbacks_flushes_and_disconnects(make_client):
    client = await make_client("c")
    watcher = await make_client("w")
    seen: list[int] = []
    await watcher.subscribe("done", lambda m: seen.append(m.payload))
    started = asyncio.Event()
    finished: list[int] = []

    async def slow(msg: Message) -> None:
        started.set()
        await asyncio.sleep(0.2)
        finished.append(msg.payload)
        await client.publish("done", msg.payload)

    buffered = await client.subscribe("left")
    await client.subscribe("jobs.*", slow)
    await watcher.publish("left", "still there")
    await eventually(lambda: buffered.pending == 1)
    await watcher.publish("jobs.a", 1)
    await asyncio.wait_for(started.wait(), 5)
    await client.drain(timeout=10)
    assert finished == [1], "the callback in flight finished"
    assert not client.is_connected
    await eventually(lambda: seen == [1])  # what it published reached the broker
    assert [m.payload async for m in buffered] == ["still there"]
    await client.drain()  # once disconnected, nothing to do
    await watcher.disconnect()


async def test_drain_disconnects_when_its_time_is_up(make_client):
    client = await make_client("c")
    started = asyncio.Event()
    never = asyncio.Event()

    async def stuck(_: Message) -> None:
        started.set()
        await never.wait()

    await client.subscribe("jobs.*", stuck)
    await client.publish("jobs.a", 1)
    await asyncio.wait_for(started.wait(), 5)
    with pytest.raises(TimeoutError, match=r"did not drain within 0\.2 s"):
        await client.drain(timeout=0.2)
    assert not client.is_connected


# -- the synchronous client -----------------------------------------------------------


def test_sync_unsubscribing_one_callback_keeps_the_others(sync_client, broker):
    client = sync_client("c")
    publisher = sync_client("p")
    first: list[int] = []
    second: list[int] = []
    marker = threading.Event()
    first_sub = client.subscribe("jobs.*", lambda m: first.append(m.payload))
    client.subscribe("jobs.*", lambda m: second.append(m.payload))
    client.subscribe("marker", lambda _: marker.set())
    assert isinstance(first_sub, SyncSubscription) and first_sub == ["jobs.*"]
    first_sub.unsubscribe()
    assert not first_sub.active
    publisher.publish("jobs.a", 2)
    publisher.publish("marker")
    assert marker.wait(10)
    assert (first, second) == ([], [2])
    assert held_patterns(broker, "c") == ["jobs.*", "marker"]


def test_sync_next_msg_and_messages(sync_client, broker):
    client = sync_client("c")
    publisher = sync_client("p")
    sub = client.subscribe("jobs.*")
    publisher.publish("jobs.a", 1)
    assert sub.next_msg(timeout=5).payload == 1
    with pytest.raises(TimeoutError):
        sub.next_msg(timeout=0.05)
    with pytest.raises(TypeError, match="has a callback"):
        client.subscribe("other", lambda _: None).next_msg()

    got: list[int] = []

    def consume() -> None:
        for msg in client.messages("stream.*"):
            got.append(msg.payload)
            if len(got) == 2:
                break

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert held_patterns_eventually(broker, "c", "stream.*")
    publisher.publish("stream.a", 1)
    publisher.publish("stream.a", 2)
    consumer.join(10)
    assert not consumer.is_alive() and got == [1, 2]
    assert "stream.*" not in held_patterns(broker, "c"), "unsubscribed when the loop ended"

    sub.unsubscribe()
    with pytest.raises(NotConnectedError, match="has ended"):
        sub.next_msg(timeout=1)


def held_patterns_eventually(broker: MessageBroker, client_id: str, pattern: str) -> bool:
    """Waits (bounded) until the broker holds ``pattern`` for ``client_id``."""
    done = threading.Event()
    for _ in range(1000):
        if pattern in held_patterns(broker, client_id):
            return True
        done.wait(0.01)
    return False


def test_sync_next_msg_from_several_threads_shares_the_messages(sync_client):
    client = sync_client("c")
    sub = client.subscribe("jobs.*")
    taken: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(50):
            payload = sub.next_msg(timeout=10).payload
            with lock:
                taken.append(payload)

    takers = [threading.Thread(target=take) for _ in range(4)]
    for taker in takers:
        taker.start()
    for n in range(200):
        client.publish("jobs.n", n)
    for taker in takers:
        taker.join(20)
    assert sorted(taken) == list(range(200)), "each message to exactly one taker"


def test_sync_flush_and_drain(sync_client, broker):
    client = sync_client("c")
    watcher = sync_client("w")
    before = broker.status()["messages"]["published"]
    for n in range(500):
        client.publish("nobody.listens", n)
    client.flush(timeout=10)
    assert broker.status()["messages"]["published"] - before == 500

    started = threading.Event()
    release = threading.Event()
    finished: list[int] = []

    def slow(msg: Message) -> None:
        started.set()
        release.wait(10)
        finished.append(msg.payload)

    client.subscribe("jobs.*", slow)
    watcher.publish("jobs.a", 1)
    assert started.wait(10)
    threading.Timer(0.2, release.set).start()
    client.drain(timeout=10)
    assert finished == [1], "drain waited for the callback thread"
    assert not client.is_connected
    with pytest.raises(NotConnectedError):
        client.publish("x", 1)


# -- the README's examples ------------------------------------------------------------

README_SECTION = "### Subscriptions, iteration, flush and drain"


def run_example(example: str, broker: MessageBroker) -> subprocess.Popen[str]:
    """Starts a README example as its own program, given the broker by MESSAGE_BROKER_URL."""
    env = {**os.environ, URL_ENV: f"tcp://127.0.0.1:{broker.port}", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", example], env=env, stdout=subprocess.PIPE, text=True
    )


def test_the_readme_subscription_example_runs_as_written(broker):
    example = readme_blocks(README_SECTION, "python")[0]
    process = run_example(example, broker)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    assert out.splitlines() == [
        "audit: jobs.created",
        "took: {'id': 1}",
        "task 0",
        "task 1",
        "task 2",
    ]


def test_the_readme_messages_example_runs_as_written(broker):
    example = readme_blocks(README_SECTION, "python")[1]
    process = run_example(example, broker)
    try:
        subscribed = threading.Event()
        for _ in range(2000):
            clients = {c["client_id"]: c for c in broker.status()["clients"]}
            if "print.*" in clients.get("printer", {}).get("subscriptions", []):
                break
            subscribed.wait(0.01)
        with SyncBrokerClient("feeder", "127.0.0.1", broker.port) as feeder:
            feeder.publish("print.one", 1)
            feeder.publish("print.last", "bye")
            out, _ = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0
    assert out.splitlines() == ["print.one 1", "print.last bye"]
