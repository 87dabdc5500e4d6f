"""Bridges to a real mosquitto (MQTT v5): the mapping rows both ways, user properties
as headers, loops cut with No Local, requests with response topics, and reconnecting.
The far side is paho-mqtt, an independent client."""

from __future__ import annotations

import json
import queue
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from message_broker import BrokerClient, MessageBroker

from support.peer_servers import Mosquitto
from support.waiting import eventually

mqtt = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

Received = list[tuple[str, Any]]


class FarClient:
    """A paho-mqtt v5 client on its own network thread; what it receives is kept."""

    def __init__(self, server: Mosquitto, name: str) -> None:
        self.received: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.messages: Received = []
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5
        )
        self.client.on_message = lambda client, userdata, message: self._take(message)
        self.client.connect("127.0.0.1", server.port)
        self.client.loop_start()
        self.subscribed: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.client.on_subscribe = lambda client, userdata, mid, codes, properties: (
            self.subscribed.put(mid)
        )

    def _take(self, message: Any) -> None:
        payload = json.loads(message.payload) if message.payload else None
        self.messages.append((message.topic, payload))
        self.received.put(message)

    def subscribe(self, topic: str) -> None:
        _, mid = self.client.subscribe(topic, qos=0)
        assert self.subscribed.get(timeout=5) == mid

    def publish(self, topic: str, payload: bytes, properties: Any = None) -> None:
        self.client.publish(topic, payload, qos=0, properties=properties).wait_for_publish(
            timeout=5
        )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path) as server:
        yield server


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Any]]:
    opened: list[Any] = []

    async def open_client(target: MessageBroker | Mosquitto, name: str = "app") -> Any:
        if isinstance(target, Mosquitto):
            far = FarClient(target, name)
            opened.append(far)
            return far
        client = BrokerClient(name, host="127.0.0.1", port=target.port)
        assert await client.connect()
        opened.append(client)
        return client

    yield open_client
    for client in reversed(opened):
        if isinstance(client, BrokerClient):
            await client.disconnect()
        else:
            client.close()


def bridge(name: str, url: str, *rules: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {"name": name, "kind": "mqtt", "url": url, "rules": list(rules), **options}


def rule(pattern: str, direction: str, **options: Any) -> dict[str, Any]:
    return {"pattern": pattern, "direction": direction, **options}


async def bridge_connected(broker: MessageBroker, name: str, timeout: float = 10.0) -> None:
    def connected() -> bool:
        return any(
            b["name"] == name and b["state"] == "connected" for b in broker.status()["bridges"]
        )

    await eventually(connected, timeout)


async def local_collector(client: BrokerClient, patterns: list[str]) -> Received:
    received: Received = []
    await client.subscribe(patterns, lambda msg: received.append((msg.topic, msg.payload)))
    return received


async def test_every_mapping_row_crosses_both_ways(mosquitto, start_broker, clients) -> None:
    rules = [
        rule("lit.x", "out"),
        rule("star.*", "out"),
        rule("plus.+.c", "out"),
        rule("tree.#", "out"),
        rule("#", "out", local_prefix="pre", remote_prefix="far/away"),
        rule("ilit.x", "in"),
        rule("istar.*", "in"),
        rule("iplus.+.c", "in"),
        rule("itree.#", "in"),
        rule("#", "in", local_prefix="ipre", remote_prefix="ifar"),
    ]
    broker = start_broker(bridges=[bridge("rows", mosquitto.url, *rules)])
    await bridge_connected(broker, "rows")
    app = await clients(broker, "app")
    far = await clients(mosquitto, "far")

    far.subscribe("#")
    for topic in [
        "lit.x",
        "lit.y",
        "star.q",
        "star.q.r",
        "plus.b.c",
        "plus.b.d",
        "tree",
        "tree.a.b",
    ]:
        await app.publish(topic, {"topic": topic}, headers={"trace": topic})
    for topic in ["pre.z.y", "pre", "other.x"]:
        await app.publish(topic, {"topic": topic})
    await app.publish("lit.x", "end")
    await eventually(lambda: ("lit/x", "end") in far.messages)
    assert [topic for topic, _ in far.messages] == [
        "lit/x", "star/q", "plus/b/c", "tree", "tree/a/b", "far/away/z/y", "far/away", "lit/x",
    ]  # fmt: skip
    first = far.received.get(timeout=1)
    properties = dict(first.properties.UserProperty)
    assert properties["trace"] == "lit.x" and properties["mb-hops"] == "1", properties

    seen_here = await local_collector(app, ["ilit.#", "istar.#", "iplus.#", "itree.#", "ipre.#"])
    headers = Properties(PacketTypes.PUBLISH)
    headers.UserProperty = ("lang", "en")
    for topic in [
        "ilit/x",
        "ilit/y",
        "istar/q",
        "istar/q/r",
        "iplus/b/c",
        "iplus/b/d",
        "itree",
        "itree/a/b",
    ]:
        far.publish(topic, b'{"n": 1.50}', headers)
    for topic in ["ifar/z", "ifar", "ipre/z", "ifar/a.b", "ifar//x", "ilit/x"]:
        far.publish(topic, b"" if topic == "ilit/x" else b"[1]")
    await eventually(lambda: ("ilit.x", None) in seen_here)
    assert [topic for topic, _ in seen_here] == [
        "ilit.x",
        "istar.q",
        "iplus.b.c",
        "itree",
        "itree.a.b",
        "ipre.z",
        "ipre",
        "ilit.x",
    ]
    assert seen_here[0][1] == {"n": 1.5}
    skipped = broker.status()["bridges"][0]["skipped"]
    assert skipped["unmappable"] == 2, skipped


async def test_both_ways_carries_each_message_once_and_never_loops(
    mosquitto, start_broker, clients
) -> None:
    broker = start_broker(bridges=[bridge("loop", mosquitto.url, rule("loop.#", "both"))])
    await bridge_connected(broker, "loop")
    publisher = await clients(broker, "publisher")
    listener = await clients(broker, "listener")
    far_publisher = await clients(mosquitto, "far-publisher")
    far_listener = await clients(mosquitto, "far-listener")
    seen_here = await local_collector(listener, ["loop.#"])
    far_listener.subscribe("loop/#")
    for i in range(500):
        await publisher.publish(f"loop.here.{i}", i)
        far_publisher.publish(f"loop/there/{i}", str(i).encode())
    await eventually(
        lambda: len(seen_here) >= 1000 and len(far_listener.messages) >= 1000, timeout=20
    )
    await publisher.publish("loop.marker", "end")
    await eventually(lambda: ("loop/marker", "end") in far_listener.messages)
    await eventually(lambda: ("loop.marker", "end") in seen_here)
    here = Counter(topic for topic, _ in seen_here)
    there = Counter(topic for topic, _ in far_listener.messages)
    assert len(here) == 1001 and set(here.values()) == {1}
    assert len(there) == 1001 and set(there.values()) == {1}
    counters = broker.status()["bridges"][0]["messages"]
    assert (counters["sent"], counters["received"]) == (501, 500), counters


async def test_requests_cross_both_ways(mosquitto, start_broker, clients) -> None:
    rules = [rule("svc.#", "out"), rule("api.#", "in")]
    broker = start_broker(bridges=[bridge("rpc", mosquitto.url, *rules, request_timeout=1)])
    await bridge_connected(broker, "rpc")
    app = await clients(broker, "app")
    far = await clients(mosquitto, "far")

    # A responder there: answers requests on svc/echo at their response topic.
    def answer(client: Any, userdata: Any, message: Any) -> None:
        if message.topic == "svc/echo":
            reply = Properties(PacketTypes.PUBLISH)
            reply.CorrelationData = message.properties.CorrelationData
            client.publish(
                message.properties.ResponseTopic,
                b'{"echo": ' + message.payload + b"}",
                properties=reply,
            )
        else:
            far._take(message)

    far.client.on_message = answer
    far.subscribe("svc/echo")
    assert await app.request("svc.echo", {"x": 1}, timeout=3) == {"echo": {"x": 1}}

    # A request from there, answered here at the response topic.
    await app.subscribe("api.double", lambda msg: msg.payload * 2)
    far.subscribe("replies/far")
    request = Properties(PacketTypes.PUBLISH)
    request.ResponseTopic = "replies/far"
    request.CorrelationData = b"42"
    started = time.monotonic()
    far.publish("api/double", b"21", request)
    await eventually(lambda: far.messages != [], timeout=5)
    assert far.messages == [("replies/far", 42)]
    assert time.monotonic() - started < 5
    reply = far.received.get(timeout=1)
    assert reply.properties.CorrelationData == b"42"


async def test_the_bridge_reconnects_after_a_restart(mosquitto, start_broker, clients) -> None:
    broker = start_broker(bridges=[bridge("back", mosquitto.url, rule("news.#", "both"))])
    await bridge_connected(broker, "back")
    app = await clients(broker, "app")
    states: list[str] = []
    await app.subscribe("system.bridge.back.state", lambda msg: states.append(msg.payload["state"]))
    await eventually(lambda: states == ["connected"])
    mosquitto.kill()
    await eventually(lambda: states[-1] == "disconnected")
    mosquitto.start()
    restarted = time.monotonic()
    await eventually(lambda: states[-1] == "connected", timeout=5)
    assert time.monotonic() - restarted < 2.0, states
    far = await clients(mosquitto, "far")
    far.subscribe("news/#")
    await app.publish("news.today", "back")
    await eventually(lambda: far.messages == [("news/today", "back")])
