"""Events (EventEmitter) and node heartbeats (NodeHeartbeat, NodeMonitor)."""

from __future__ import annotations

import asyncio

import pytest

from message_broker import (
    Event,
    EventEmitter,
    Heartbeat,
    Message,
    NodeHeartbeat,
    NodeMonitor,
    TypedMessage,
)


async def test_events_reach_the_subscribers_of_their_uri(make_client):
    emitter_client = await make_client("lights-switch")
    listener = await make_client("lights")
    typed: asyncio.Queue[TypedMessage] = asyncio.Queue()
    plain: asyncio.Queue[Message] = asyncio.Queue()
    await listener.subscribe("bedroom.lights.*", typed.put_nowait, type=Event)
    await listener.subscribe("bedroom.lights.on", plain.put_nowait)
    emitter = EventEmitter(emitter_client)
    on = Event("TurnOnBedroomLights", "bedroom.lights.on", payload={"level": 80})
    off = Event("TurnOffBedroomLights", "bedroom.lights.off", "good night")
    await emitter.send_event(on)
    await emitter.send_event(off)
    assert [(await asyncio.wait_for(typed.get(), 10)).payload for _ in range(2)] == [on, off]
    message = await asyncio.wait_for(plain.get(), 10)
    assert message.payload == {
        "name": "TurnOnBedroomLights",
        "uri": "bedroom.lights.on",
        "description": "",
        "payload": {"level": 80},
    }
    assert message.sender == "lights-switch"
    with pytest.raises(TypeError, match="takes an Event"):
        await emitter.send_event({"name": "x", "uri": "bedroom.lights.on"})  # type: ignore[arg-type]


async def test_heartbeats_come_every_interval_with_commlib_fields(make_client):
    node = await make_client("planner-client")
    listener = await make_client("listener")
    beats = await listener.subscribe("nodes.*.heartbeat", type=Heartbeat)
    async with NodeHeartbeat(node, "planner", interval=0.05) as heartbeat:
        assert heartbeat.topic == "nodes.planner.heartbeat"
        received = [(await beats.next_msg(timeout=10)).payload for _ in range(3)]
    assert [beat.sequence for beat in received] == [0, 1, 2]
    assert {(beat.node, beat.client_id, beat.interval) for beat in received} == {
        ("planner", "planner-client", 0.05)
    }
    assert received[0].ts < received[1].ts < received[2].ts  # nanoseconds since the epoch
    with pytest.raises(ValueError, match="one topic segment"):
        NodeHeartbeat(node, "robot.arm")


async def test_the_monitor_sees_nodes_come_and_go(make_client):
    events: asyncio.Queue[tuple[str, ...]] = asyncio.Queue()
    monitor_client = await make_client("monitor")
    monitor = NodeMonitor(
        monitor_client,
        missed=2,
        on_up=lambda node: events.put_nowait(("up", node)),
        on_down=lambda node, reason: events.put_nowait(("down", node, reason)),
    )
    async with monitor:
        # A node whose client leaves is down at once, with the broker's reason.
        leaving = await make_client("leaving-client")
        leaver = NodeHeartbeat(leaving, "leaver", interval=30)
        await leaver.start()
        assert await asyncio.wait_for(events.get(), 10) == ("up", "leaver")
        await leaving.disconnect()
        await leaver.stop()
        assert await asyncio.wait_for(events.get(), 10) == (
            "down",
            "leaver",
            "its client leaving-client left: client disconnect",
        )

        # A node that stops beating is down once it has missed its heartbeats.
        quiet = await make_client("quiet-client")
        heartbeat = NodeHeartbeat(quiet, "quiet", interval=0.25)
        await heartbeat.start()
        assert await asyncio.wait_for(events.get(), 10) == ("up", "quiet")
        await heartbeat.stop()
        assert await asyncio.wait_for(events.get(), 10) == (
            "down",
            "quiet",
            "no heartbeat for 0.5 s",
        )
        assert monitor.alive == [] and not monitor.nodes["quiet"].alive
        await heartbeat.start()
        assert await asyncio.wait_for(events.get(), 10) == ("up", "quiet")
        assert monitor.alive == ["quiet"]
        await heartbeat.stop()
