"""BrokerChannelLayer, the Django Channels layer, against a real broker: what a layer
must do beyond channels_redis's own tests (tests/channels_redis_suite), and how
Channels calls it: receives cancelled at every disconnect, a new event loop per
async_to_sync call, a process forked from one that used the layer."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import subprocess
import sys
import threading

import channels.exceptions
import pytest
from asgiref.sync import async_to_sync

from message_broker import ChannelFullError, MessageBroker
from message_broker.channels_layer import BrokerChannelLayer, ChannelFull, MessageTooLarge

from support import TESTS
from support.waiting import eventually


@pytest.fixture
def make_layer(broker: MessageBroker):
    def make(**config) -> BrokerChannelLayer:
        return BrokerChannelLayer(host="127.0.0.1", port=broker.port, **config)

    return make


async def test_bytes_and_odd_dicts_round_trip_as_sent(make_layer):
    layer = make_layer()
    message = {
        "type": "websocket.receive",
        "bytes": b"\x00\xff binary",
        "nested": [{"$bytes": "not bytes"}, {"$dict": 1}, ("a", b"b")],
        "text": "é",
        "n": 2**70,
    }
    await layer.send("bytes-channel", message)
    received = await layer.receive("bytes-channel")
    assert received == {**message, "nested": [{"$bytes": "not bytes"}, {"$dict": 1}, ["a", b"b"]]}
    assert isinstance(received["bytes"], bytes)
    await layer.flush()


async def test_full_channels_raise_channel_full_and_huge_messages_too_large(make_layer):
    layer = make_layer(capacity=2, channel_capacity={"tiny*": 1})
    await layer.send("tiny-one", {"type": "a"})
    with pytest.raises(channels.exceptions.ChannelFull) as caught:
        await layer.send("tiny-one", {"type": "b"})
    assert isinstance(caught.value, ChannelFull) and isinstance(caught.value, ChannelFullError)
    assert caught.value.code == -32016
    with pytest.raises(MessageTooLarge):
        await layer.send("big", {"type": "x", "text": "x" * (2 << 20)})
    with pytest.raises(TypeError):
        await layer.send("not valid!", {"type": "x"})
    with pytest.raises(TypeError):
        await layer.group_add("no!", "channel")
    await layer.flush()


async def test_flush_clears_only_the_layers_own_prefix(make_layer):
    mine, theirs = make_layer(prefix="mine"), make_layer(prefix="theirs")
    await mine.send("shared-name", {"type": "mine"})
    await theirs.send("shared-name", {"type": "theirs"})
    await mine.group_add("room", "shared-name")
    await theirs.group_add("room", "shared-name")
    await mine.flush()
    await mine.group_send("room", {"type": "after.flush"})
    await theirs.group_send("room", {"type": "theirs.again"})
    assert await theirs.receive("shared-name") == {"type": "theirs"}
    assert await theirs.receive("shared-name") == {"type": "theirs.again"}
    await mine.send("shared-name", {"type": "marker"})
    assert await mine.receive("shared-name") == {"type": "marker"}, "nothing was left before it"
    await theirs.flush()


async def test_group_send_never_raises_for_full_members_and_logs_how_many(make_layer, caplog):
    layer = make_layer(capacity=1)
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    await layer.group_add("room", "plain-member")
    with caplog.at_level(logging.INFO, logger="message_broker.channels_layer"):
        await layer.group_send("room", {"type": "first"})
        await layer.group_send("room", {"type": "second"})
    assert "2 of 2 channels over capacity in group room" in caplog.messages
    assert await layer.receive(channel) == {"type": "first"}
    assert await layer.receive("plain-member") == {"type": "first"}
    await layer.group_discard("room", "plain-member")
    await layer.group_send("room", {"type": "third"})
    assert await layer.receive(channel) == {"type": "third"}
    await layer.send("plain-member", {"type": "marker"})
    assert await layer.receive("plain-member") == {"type": "marker"}, "third never reached it"
    await layer.flush()


async def test_what_no_one_receives_here_waits_on_the_broker_past_the_channels_capacity(make_layer):
    # The broker hands the process's channels over together: one that nobody receives
    # fills its capacity here, then its messages stay on the broker, where the channel
    # fills up and refuses the sender. Nothing is dropped.
    layer = make_layer(capacity=10)
    listened, idle = await layer.new_channel(), await layer.new_channel()
    waiting = asyncio.ensure_future(layer.receive(listened))
    for n in range(10):
        await layer.send(idle, {"n": n})
    await layer.send(listened, {"type": "marker"})
    assert await asyncio.wait_for(waiting, 10) == {"type": "marker"}
    waiting = asyncio.ensure_future(layer.receive(listened))
    for n in range(10, 20):
        await layer.send(idle, {"n": n})
    with pytest.raises(ChannelFull):
        await layer.send(idle, {"n": 20})
    await layer.send(listened, {"type": "second marker"})
    assert await asyncio.wait_for(waiting, 10) == {"type": "second marker"}
    got = [(await asyncio.wait_for(layer.receive(idle), 10))["n"] for _ in range(20)]
    assert got == list(range(20))
    await layer.flush()


async def test_a_plain_channel_nobody_here_waits_on_leaves_its_messages_to_other_workers(
    broker, make_layer
):
    stopped, worker, sender = make_layer(), make_layer(), make_layer()
    gone = asyncio.ensure_future(stopped.receive("jobs"))
    await eventually(lambda: broker.status()["channels"]["receivers_waiting"] == 1)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    # Sent at once: the stopped layer's wait at the broker may not have ended yet.
    await sender.send("jobs", {"n": 1})
    assert await asyncio.wait_for(worker.receive("jobs"), 3) == {"n": 1}
    await worker.flush()


async def test_a_thousand_cancelled_receives_under_load_lose_and_reorder_nothing(make_layer):
    layer = make_layer(capacity=1000)
    sender_layer = make_layer(capacity=1000)
    process_channel = await layer.new_channel()
    channels_ = ["shared-work", process_channel]
    total = 3000
    sent_done = asyncio.Event()

    async def send_all() -> None:
        for n in range(total):
            channel = channels_[n % 2]
            for _ in range(1000):
                try:
                    await sender_layer.send(channel, {"n": n})
                    break
                except ChannelFull:
                    await asyncio.sleep(0.001)
            else:
                raise AssertionError(f"{channel} stayed full")
        sent_done.set()

    sender = asyncio.ensure_future(send_all())
    received: dict[str, list[int]] = {channel: [] for channel in channels_}
    cancelled = 0
    rng = random.Random(17)
    deadline = asyncio.get_running_loop().time() + 90
    while cancelled < 1000 or not sent_done.is_set():
        assert asyncio.get_running_loop().time() < deadline, (cancelled, len(received))
        channel = rng.choice(channels_)
        task = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(rng.choice([0, 0, 0.0001, 0.0005, 0.002]))
        task.cancel()
        try:
            received[channel].append((await task)["n"])
        except asyncio.CancelledError:
            cancelled += 1
    await sender
    for channel in channels_:
        expected = list(range(channels_.index(channel), total, 2))
        while len(received[channel]) < len(expected):
            received[channel].append((await asyncio.wait_for(layer.receive(channel), 10))["n"])
        assert received[channel] == expected, channel
    assert cancelled >= 1000
    await layer.flush()


def test_async_to_sync_gets_a_connection_per_event_loop_closed_with_it(broker):
    layer = BrokerChannelLayer(host="127.0.0.1", port=broker.port)
    channel = async_to_sync(layer.new_channel)()
    for n in range(20):
        async_to_sync(layer.send)(channel, {"n": n})
        async_to_sync(layer.group_send)("room", {"type": "nobody"})
    assert [async_to_sync(layer.receive)(channel)["n"] for _ in range(20)] == list(range(20))

    async def clients_left() -> None:
        await eventually(lambda: broker.status()["client_count"] == 0)

    asyncio.run(clients_left())
    async_to_sync(layer.flush)()


def test_async_to_sync_calls_leave_no_event_loops_or_connections_behind(broker):
    layer = BrokerChannelLayer(host="127.0.0.1", port=broker.port)
    for _ in range(200):
        async_to_sync(layer.group_send)("room", {"type": "nobody"})
        assert len(layer._loops) <= 2, "the state of closed loops goes"

    async def clients_left() -> None:
        await eventually(lambda: broker.status()["client_count"] == 0)

    asyncio.run(clients_left())


def test_a_receive_whose_loop_closes_right_after_the_broker_answered_loses_nothing(
    broker, monkeypatch
):
    layer = BrokerChannelLayer(host="127.0.0.1", port=broker.port)

    async def receive_and_vanish() -> None:
        receiving = asyncio.ensure_future(layer.receive("handed-over"))
        answered = asyncio.get_running_loop().create_future()
        # The answer reaches the connection and goes no further: the loop closes first.
        monkeypatch.setattr(layer, "_keep", lambda *_: answered.set_result(None))
        await eventually(lambda: broker.status()["channels"]["receivers_waiting"] == 1)
        await layer._call(
            "channel_send",
            {"channel": "handed-over", "message": {"n": 1}, "ttl": 60, "capacity": 10},
        )
        await asyncio.wait_for(answered, 10)
        receiving.cancel()

    async_to_sync(receive_and_vanish)()
    monkeypatch.undo()
    assert async_to_sync(layer.receive)("handed-over") == {"n": 1}
    async_to_sync(layer.send)("handed-over", {"type": "marker"})
    assert async_to_sync(layer.receive)("handed-over") == {"type": "marker"}, "received once"
    async_to_sync(layer.flush)()


def test_async_to_sync_receives_while_messages_arrive_lose_and_reorder_nothing(broker):
    # Each receive's loop closes while its connection may be waiting at the broker for
    # the next message, which arrives meanwhile.
    receiver = BrokerChannelLayer(host="127.0.0.1", port=broker.port, capacity=1000)
    sender = BrokerChannelLayer(host="127.0.0.1", port=broker.port, capacity=1000)
    channel = async_to_sync(receiver.new_channel)()
    total = 150
    received: dict[str, list[int]] = {"plain-work": [], channel: []}

    def receive_all() -> None:
        for n in range(2 * total):
            name = "plain-work" if n % 2 else channel
            received[name].append(async_to_sync(receiver.receive)(name)["n"])

    thread = threading.Thread(target=receive_all, daemon=True)
    thread.start()
    for n in range(total):
        async_to_sync(sender.send)(channel, {"n": n})
        async_to_sync(sender.send)("plain-work", {"n": n})
    thread.join(60)
    assert not thread.is_alive(), {name: len(got) for name, got in received.items()}
    assert received == {"plain-work": list(range(total)), channel: list(range(total))}
    async_to_sync(receiver.flush)()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on Windows")
def test_a_layer_used_before_fork_works_in_the_child(broker):
    child = subprocess.run(
        [sys.executable, "-m", "support.channels_fork_child", str(broker.port)],
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stdout + child.stderr
    assert child.stdout.split() == ["parent-ok", "child-ok", "child-exit-0"], child.stdout
