"""Bridges to a real nats-server: the mapping of every pattern row both ways, loops
cut, two brokers on one NATS, requests both ways, qos=1 through JetStream across a
server crash, and reconnecting. The far side is nats-py, an independent client."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from message_broker import BrokerClient, BrokerConfig, ConfigError, MessageBroker
from message_broker.errors import NoRespondersError, RequestTimeoutError, StorageError

from support.peer_servers import NatsServer
from support.waiting import eventually

nats = pytest.importorskip("nats")

Received = list[tuple[str, Any]]


def bridge(name: str, url: str, *rules: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {"name": name, "kind": "nats", "url": url, "rules": list(rules), **options}


def rule(pattern: str, direction: str, **options: Any) -> dict[str, Any]:
    return {"pattern": pattern, "direction": direction, **options}


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path) as server:
        yield server


@pytest.fixture
def jetstream_server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path, jetstream=True) as server:
        yield server


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Any]]:
    """Connects BrokerClients and nats-py clients; closes them all afterwards."""
    opened: list[Any] = []

    async def open_client(target: MessageBroker | NatsServer, name: str = "app") -> Any:
        if isinstance(target, NatsServer):
            client = await nats.connect(target.url, name=name, allow_reconnect=False)
        else:
            client = BrokerClient(name, host="127.0.0.1", port=target.port)
            assert await client.connect()
        opened.append(client)
        return client

    yield open_client
    for client in reversed(opened):
        if isinstance(client, BrokerClient):
            await client.disconnect()
        else:
            await client.close()


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


async def subscribed(server: NatsServer, client: Any, *subjects: str) -> None:
    """Waits until the server has the client's subscriptions. Not `flush()`: nats-py
    writes its PING at once, ahead of the SUB still in its buffer, so the PONG can come
    back before the server has the subscription, and whatever other connections publish
    meanwhile goes to nobody."""

    def listed() -> bool:
        (connection,) = server.monitor(f"connz?cid={client.client_id}&subs=1")["connections"]
        return set(subjects) <= set(connection.get("subscriptions_list", []))

    await eventually(listed)


async def nats_collector(server: NatsServer, client: Any, subject: str) -> Received:
    received: Received = []

    async def take(msg: Any) -> None:
        received.append((msg.subject, msg.data.decode()))

    await client.subscribe(subject, cb=take)
    await subscribed(server, client, subject)
    return received


def test_a_config_file_declares_bridges(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(
        "[[bridges]]\n"
        'name = "hub"\n'
        'kind = "nats"\n'
        'url = "nats://hub.lan:4222"\n'
        "rules = [\n"
        '  { pattern = "orders.#", direction = "both" },\n'
        '  { pattern = "audit.#", direction = "out", stream = "AUDIT" },\n'
        "]\n",
        encoding="utf-8",
    )
    (hub,) = BrokerConfig.from_file(path).bridges
    assert hub["rules"][1] == {"pattern": "audit.#", "direction": "out", "stream": "AUDIT"}
    path.write_text(path.read_text().replace('"both"', '"sideways"'), encoding="utf-8")
    refused = r"broker\.toml: .*bridges\[0\].*unknown variant `sideways`"
    with pytest.raises(ConfigError, match=refused):
        BrokerConfig.from_file(path)


def test_a_bad_bridge_is_refused_naming_it() -> None:
    broken = bridge("hub", "nats://127.0.0.1:4222", rule("a..b", "both"))
    with pytest.raises(
        ConfigError, match=r'bridges\[0\] \(name "hub"\): rules\[0\] \(pattern "a\.\.b"\): pattern'
    ):
        BrokerConfig.from_dict({"bridges": [broken]})
    misspelt = {**bridge("hub", "nats://x", rule("a", "in")), "tsl_ca_file": "ca.pem"}
    with pytest.raises(ConfigError, match="did you mean tls_ca_file"):
        BrokerConfig.from_dict({"bridges": [misspelt]})
    with pytest.raises(ConfigError, match="nats:// or tls://"):
        BrokerConfig.from_dict({"bridges": [bridge("hub", "http://x", rule("a", "in"))]})


async def test_every_mapping_row_crosses_both_ways(nats_server, start_broker, clients) -> None:
    rules = [
        rule("lit.x", "out"),
        rule("star.*", "out"),
        rule("plus.+.c", "out"),
        rule("tree.#", "out"),
        rule("#", "out", local_prefix="pre", remote_prefix="far"),
        rule("ilit.x", "in"),
        rule("istar.*", "in"),
        rule("iplus.+.c", "in"),
        rule("itree.#", "in"),
        rule("#", "in", local_prefix="ipre", remote_prefix="ifar"),
    ]
    broker = start_broker(bridges=[bridge("rows", nats_server.url, *rules)])
    await bridge_connected(broker, "rows")
    app = await clients(broker, "app")
    far = await clients(nats_server, "far")

    seen_there = await nats_collector(nats_server, far, ">")
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
        await app.publish(topic, {"topic": topic})
    for topic in ["pre.z.y", "pre", "other.x"]:
        await app.publish(topic, {"topic": topic})
    await app.publish("lit.x", "end")
    await eventually(lambda: ("lit.x", '"end"') in seen_there)
    assert [subject for subject, _ in seen_there] == [
        "lit.x", "star.q", "plus.b.c", "tree", "tree.a.b", "far.z.y", "far", "lit.x",
    ]  # fmt: skip
    assert seen_there[0][1].replace(" ", "") == '{"topic":"lit.x"}'

    seen_here = await local_collector(app, ["ilit.#", "istar.#", "iplus.#", "itree.#", "ipre.#"])
    for subject in [
        "ilit.x",
        "ilit.y",
        "istar.q",
        "istar.q.r",
        "iplus.b.c",
        "iplus.b.d",
        "itree",
        "itree.a.b",
    ]:
        await far.publish(subject, b'{"n": 1.50}')
    for subject in ["ifar.z", "ifar", "ipre.z"]:
        await far.publish(subject, b"[1]")
    await far.flush()
    await eventually(lambda: len(seen_here) >= 7)
    # Each rule has subscriptions of its own there, so only a rule keeps its order: a
    # marker on every rule's subscription shows that nothing else is on its way.
    markers = ["ilit.x", "istar.end", "iplus.end.c", "itree.end", "ifar.end"]
    for subject in markers:
        await far.publish(subject, b"")
    await far.flush()
    await eventually(lambda: sum(payload is None for _, payload in seen_here) == len(markers))
    assert sorted(topic for topic, payload in seen_here if payload is not None) == sorted(
        ["ilit.x", "istar.q", "iplus.b.c", "itree", "itree.a.b", "ipre.z", "ipre"]
    )
    assert ("ilit.x", {"n": 1.5}) in seen_here

    status = broker.status()["bridges"][0]
    assert status["messages"]["sent"] == 8 and status["messages"]["received"] == 7 + len(markers), (
        status
    )


async def test_both_ways_carries_each_message_once_and_never_loops(
    nats_server, start_broker, clients
) -> None:
    broker = start_broker(bridges=[bridge("loop", nats_server.url, rule("loop.#", "both"))])
    await bridge_connected(broker, "loop")
    publisher = await clients(broker, "publisher")
    listener = await clients(broker, "listener")
    far_publisher = await clients(nats_server, "far-publisher")
    far_listener = await clients(nats_server, "far-listener")
    seen_here = await local_collector(listener, ["loop.#"])
    seen_there = await nats_collector(nats_server, far_listener, "loop.>")

    for i in range(500):
        await publisher.publish(f"loop.here.{i}", i)
        await far_publisher.publish(f"loop.there.{i}", str(i).encode())
    await far_publisher.flush()
    await eventually(lambda: len(seen_here) >= 1000 and len(seen_there) >= 1000, timeout=20)
    # A marker after everything: once it has crossed, nothing else is on its way.
    await publisher.publish("loop.marker", "end")
    await eventually(lambda: ("loop.marker", '"end"') in seen_there)
    await eventually(lambda: ("loop.marker", "end") in seen_here)

    here = Counter(topic for topic, _ in seen_here)
    there = Counter(subject for subject, _ in seen_there)
    expected = (
        {f"loop.here.{i}" for i in range(500)}
        | {f"loop.there.{i}" for i in range(500)}
        | {"loop.marker"}
    )
    assert set(here) == expected and set(here.values()) == {1}, "each message once, here"
    assert set(there) == expected and set(there.values()) == {1}, "each message once, there"

    link = nats_server.connection("message-broker bridge loop")
    assert sorted(sub for sub in link["subscriptions_list"]) == ["loop", "loop.>"]
    assert (link["in_msgs"], link["out_msgs"]) == (501, 500), (
        "the bridge sent what came from here, took what came from there"
    )
    varz = nats_server.monitor("varz")
    # far-publisher's 500, the bridge's 501; nothing went round again.
    assert varz["in_msgs"] == 1001, varz["in_msgs"]
    assert broker.status()["bridges"][0]["skipped"]["looped"] == 0


async def test_two_brokers_on_one_nats_see_each_message_once(
    nats_server, start_broker, clients
) -> None:
    first = start_broker(bridges=[bridge("one", nats_server.url, rule("chat.#", "both"))])
    second = start_broker(bridges=[bridge("two", nats_server.url, rule("chat.#", "both"))])
    await bridge_connected(first, "one")
    await bridge_connected(second, "two")
    senders = {"a": await clients(first, "a"), "b": await clients(second, "b")}
    far = await clients(nats_server, "far")
    seen = {
        "a2": await local_collector(await clients(first, "a2"), ["chat.#"]),
        "b2": await local_collector(await clients(second, "b2"), ["chat.#"]),
        "far2": await nats_collector(nats_server, await clients(nats_server, "far2"), "chat.>"),
    }
    for i in range(100):
        await senders["a"].publish(f"chat.a.{i}", i)
        await senders["b"].publish(f"chat.b.{i}", i)
        await far.publish(f"chat.n.{i}", str(i).encode())
    await far.flush()
    await eventually(lambda: all(len(got) >= 300 for got in seen.values()), timeout=20)
    for marker, sender in [("chat.a.end", senders["a"]), ("chat.b.end", senders["b"])]:
        await sender.publish(marker, "end")
    await eventually(
        lambda: all(sum(t.endswith(".end") for t, _ in got) == 2 for got in seen.values())
    )
    expected = {f"chat.{side}.{i}" for side in "abn" for i in range(100)} | {
        "chat.a.end",
        "chat.b.end",
    }
    for name, got in seen.items():
        counts = Counter(topic for topic, _ in got)
        assert set(counts) == expected and set(counts.values()) == {1}, (
            f"{name}: {counts.most_common(3)}"
        )


async def test_requests_cross_both_ways(nats_server, start_broker, clients) -> None:
    rules = [rule("svc.#", "out"), rule("api.#", "in")]
    broker = start_broker(bridges=[bridge("rpc", nats_server.url, *rules, request_timeout=0.5)])
    await bridge_connected(broker, "rpc")
    app = await clients(broker, "app")
    far = await clients(nats_server, "far")

    # Here to NATS: answered there, nobody there, too slow there.
    async def echo(msg: Any) -> None:
        await msg.respond(b'{"echo": ' + msg.data + b"}")

    async def never_answer(msg: Any) -> None:
        pass

    await far.subscribe("svc.echo", cb=echo)
    await far.subscribe("svc.slow", cb=never_answer)
    await subscribed(nats_server, far, "svc.echo", "svc.slow")
    assert await app.request("svc.echo", {"x": 1}, timeout=2) == {"echo": {"x": 1}}
    started = time.monotonic()
    with pytest.raises(NoRespondersError):
        await app.request("svc.nobody", {}, timeout=5)
    assert time.monotonic() - started < 0.1, "NATS's no-responders comes back at once"
    with pytest.raises(RequestTimeoutError):
        await app.request("svc.slow", {}, timeout=0.3)

    # NATS to here: answered here, nobody here, too slow here.
    await app.subscribe("api.double", lambda msg: msg.payload * 2)
    await app.subscribe("api.slow", lambda msg: None)
    reply = await far.request("api.double", b"21", timeout=2)
    assert reply.data == b"42"
    started = time.monotonic()
    reply = await far.request("api.nobody", b"{}", timeout=2)
    assert time.monotonic() - started < 0.1
    assert reply.headers["Nats-Service-Error-Code"] == "503", reply.headers
    reply = await far.request("api.slow", b"{}", timeout=3)
    assert reply.headers["Nats-Service-Error-Code"] == "408", reply.headers

    counters = broker.status()["bridges"][0]["messages"]
    assert (counters["requests_out"], counters["requests_in"], counters["no_responders"]) == (
        3,
        3,
        1,
    ), counters


async def test_a_passive_local_listener_never_makes_a_bridged_request_look_answered(
    nats_server, start_broker, clients
) -> None:
    broker = start_broker(bridges=[bridge("rpc", nats_server.url, rule("svc.#", "both"))])
    await bridge_connected(broker, "rpc")
    app = await clients(broker, "app")
    monitor = await clients(broker, "monitor")
    await monitor.subscribe("svc.#", lambda msg: None, passive=True)
    started = time.monotonic()
    with pytest.raises(NoRespondersError):
        await app.request("svc.nobody", {}, timeout=5)
    assert time.monotonic() - started < 0.1


async def test_qos1_through_jetstream_is_confirmed_only_once_jetstream_has_it(
    jetstream_server, start_broker, clients
) -> None:
    far = await nats.connect(jetstream_server.url)
    jetstream = far.jetstream()
    await jetstream.add_stream(name="ORDERS", subjects=["orders.>"])
    await far.close()
    broker = start_broker(
        bridges=[
            bridge(
                "js",
                jetstream_server.url,
                rule("orders.#", "out", stream="ORDERS"),
                request_timeout=1,
                confirm_timeout=2,
            )
        ]
    )
    await bridge_connected(broker, "js")
    app = await clients(broker, "app")

    def in_jetstream() -> int:
        return int(broker.status()["bridges"][0]["messages"]["confirmed"])

    confirmed: dict[int, str] = {}
    refused: dict[int, str] = {}

    async def publish(i: int) -> None:
        try:
            confirmed[i] = await app.publish(f"orders.{i}", {"n": i}, qos=1)
        except StorageError as error:
            refused[i] = str(error)

    # Killed while the bridge carries the first hundred on; the second hundred are
    # published while nats-server is down, so none of them can be confirmed.
    first = [asyncio.create_task(publish(i)) for i in range(100)]
    await eventually(lambda: in_jetstream() >= 20)
    jetstream_server.kill()
    second = [asyncio.create_task(publish(i)) for i in range(100, 200)]
    await asyncio.wait_for(asyncio.gather(*second), timeout=10)
    assert set(refused) >= set(range(100, 200)), "nothing confirmed while JetStream is away"
    for why in refused.values():
        assert "is not confirmed" in why and "within 2 s; it stays queued" in why, why
    jetstream_server.start()
    await asyncio.wait_for(asyncio.gather(*first), timeout=10)
    await eventually(lambda: in_jetstream() >= 200, timeout=20)

    far = await nats.connect(jetstream_server.url)
    try:
        info = await far.jetstream().stream_info("ORDERS")
        assert info.state.messages == 200, "every message, confirmed or not, once"
        subscription = await far.jetstream().subscribe("orders.>", ordered_consumer=True)
        stored: dict[str, str] = {}
        for _ in range(200):
            msg = await subscription.next_msg(timeout=5)
            stored[msg.headers["Nats-Msg-Id"]] = msg.subject
        assert set(confirmed.values()) <= set(stored), "no confirmed message lost"
        assert sorted(stored.values()) == sorted(f"orders.{i}" for i in range(200))
    finally:
        await far.close()


async def test_the_bridge_is_back_within_two_seconds_of_a_nats_restart(
    nats_server, start_broker, clients
) -> None:
    broker = start_broker(bridges=[bridge("back", nats_server.url, rule("news.#", "both"))])
    await bridge_connected(broker, "back")
    app = await clients(broker, "app")
    states: list[str] = []
    await app.subscribe("system.bridge.back.state", lambda msg: states.append(msg.payload["state"]))
    await eventually(lambda: states == ["connected"])  # the retained state

    nats_server.kill()
    await eventually(lambda: states[-1] == "disconnected")
    nats_server.start()
    restarted = time.monotonic()
    await eventually(lambda: states[-1] == "connected", timeout=5)
    assert time.monotonic() - restarted < 2.0, states
    far = await clients(nats_server, "far")
    seen_there = await nats_collector(nats_server, far, "news.>")
    await app.publish("news.today", "back")
    await eventually(lambda: seen_there == [("news.today", '"back"')])
    assert broker.status()["bridges"][0]["reconnects"] == 1
