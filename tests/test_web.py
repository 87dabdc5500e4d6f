"""The HTTP listener: monitoring (`/varz`, `/connz`, `/subsz`, `/topics`,
`/metrics`), HTTP access to messages (last, long poll with a cursor, publish), the
WebSocket session, and the checks that keep other web sites out."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from message_broker import (
    ERROR_CODES,
    BrokerClient,
    MessageBroker,
    NoRespondersError,
)

from support.http import Http
from support.waiting import eventually
from support.wire import RawClient

StartBroker = Callable[..., MessageBroker]


@pytest.fixture
def web_broker(start_broker: StartBroker) -> MessageBroker:
    return start_broker(http_port=0, max_connections=200)


@pytest.fixture
def http(web_broker: MessageBroker) -> Http:
    assert web_broker.http_port is not None
    return Http(web_broker.http_port, web_broker.token)


def client(broker: MessageBroker, name: str) -> BrokerClient:
    return BrokerClient(name, host="127.0.0.1", port=broker.port)


def test_there_is_no_http_listener_unless_asked(broker: MessageBroker) -> None:
    assert broker.http_port is None
    assert broker.http_url is None


def test_the_page_address_carries_the_token_in_its_fragment(web_broker: MessageBroker) -> None:
    assert (
        web_broker.http_url == f"http://127.0.0.1:{web_broker.http_port}/#token={web_broker.token}"
    )


def test_health_needs_no_token_and_the_data_does(http: Http) -> None:
    assert http.get("/healthz", token=None).json() == {"status": "ok"}
    page = http.get("/", token=None)
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for path in [
        "/varz",
        "/connz",
        "/subsz",
        "/topics",
        "/metrics",
        "/api/messages/poll?timeout=0",
    ]:
        refused = http.get(path, token=None)
        assert refused.status == 401, path
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in refused.json()["error"]["message"]
        wrong = http.get(path, token="0" * 64)
        assert wrong.status == 401, path
        assert "wrong token" in wrong.json()["error"]["message"]
    refused = http.post_json("/api/publish", {"topic": "a", "payload": 1}, token=None)
    assert refused.status == 401
    assert http.get("/varz").status == 200


def test_a_foreign_host_header_is_refused(http: Http) -> None:
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1
    sends `Host: evil.example`; it gets nothing, the page included."""
    for host in [f"evil.example:{http.port}", "evil.example", f"127.0.0.1:{http.port + 1}"]:
        for path in ["/", "/varz", "/healthz"]:
            refused = http.get(path, headers={"Host": host})
            assert refused.status == 403, (host, path)
            assert "not this broker's" in refused.json()["error"]["message"]
    for host in [f"localhost:{http.port}", f"[::1]:{http.port}", "127.0.0.1"]:
        assert http.get("/varz", headers={"Host": host}).status == 200, host


def test_requests_from_other_sites_pages_are_refused(http: Http) -> None:
    evil = {"Origin": "http://evil.example"}
    assert http.get("/varz", headers=evil).status == 403
    refused = http.post_json("/api/publish", {"topic": "a", "payload": 1}, headers=evil)
    assert refused.status == 403
    assert "evil.example" in refused.json()["error"]["message"]
    for origin in ["null", f"https://127.0.0.1:{http.port}", f"http://127.0.0.1:{http.port + 1}"]:
        assert http.get("/varz", headers={"Origin": origin}).status == 403, origin
    own = {"Origin": f"http://127.0.0.1:{http.port}"}
    assert http.post_json("/api/publish", {"topic": "a", "payload": 1}, headers=own).status == 200


async def test_counters_are_exact_after_a_scripted_workload(
    web_broker: MessageBroker, http: Http
) -> None:
    async with (
        client(web_broker, "sub-a") as a,
        client(web_broker, "sub-b") as b,
        client(web_broker, "pub") as pub,
    ):
        got: list[Any] = []
        await a.subscribe("w.#", lambda m: got.append(m.payload))
        await b.subscribe(["w.a", "w.b"], lambda m: got.append(m.payload))
        await pub.subscribe("math.double", lambda m: m.payload * 2)
        await pub.flush()
        before = http.get_json("/varz")
        for n in range(1000, 1010):
            await pub.publish("w.a", n)
        await pub.publish("w.c", 1010)
        assert await a.request("math.double", 21) == 42
        with pytest.raises(NoRespondersError):
            await a.request("nobody.home", 1)
        await eventually(lambda: len(got) == 21)
        after = http.get_json("/varz")
        delta = {
            k: after[k] - before[k] for k in after if isinstance(after[k], int) and k in before
        }
        # 11 publishes, the request and the request nobody answers.
        assert delta["in_msgs"] == 13
        # 10 to both subscribers, 1 to a, the request to its responder.
        assert delta["out_msgs"] == 22
        assert delta["in_bytes"] == 11 * 4 + 2 + 1
        assert delta["out_bytes"] == 21 * 4 + 2
        assert delta["requests"] == 2
        assert delta["replies"] == 1
        assert delta["no_responders"] == 1
        assert delta["dropped_msgs"] == 0
        assert after["connections"] == 3
        assert after["subscriptions"] == 4
        assert after["server_name"] == "message-broker"
        assert after["http_port"] == http.port
        assert after["uptime"].endswith("s")

        connz = http.get_json("/connz?subs=1")
        by_name = {c["name"]: c for c in connz["connections"]}
        assert set(by_name) == {"sub-a", "sub-b", "pub"}
        assert by_name["sub-a"]["out_msgs"] == 11
        assert by_name["sub-b"]["out_msgs"] == 10
        assert by_name["sub-b"]["subscriptions_list"] == ["w.a", "w.b"]
        assert by_name["pub"]["type"] == "tcp"
        assert by_name["pub"]["ip"] == "127.0.0.1"
        assert by_name["pub"]["lang"] == "python"
        # connect, two subscribes, 11 publishes, the reply (and maybe a ping).
        assert by_name["pub"]["in_msgs"] >= 14
        first = http.get_json("/connz?sort=msgs_to&limit=1")
        assert [c["name"] for c in first["connections"]] == ["sub-a"]
        assert first["total"] == 3
        second = http.get_json("/connz?sort=msgs_to&limit=1&offset=1")
        assert [c["name"] for c in second["connections"]] == ["sub-b"]

        subsz = http.get_json("/subsz?test=w.a")
        assert subsz["num_subscriptions"] == 4
        assert sorted(s["client_id"] for s in subsz["subscriptions_list"]) == ["sub-a", "sub-b"]
        assert subsz["max_fanout"] >= 2


def test_bad_monitoring_queries_are_named(http: Http) -> None:
    bad = http.get("/connz?sort=colour")
    assert bad.status == 400
    assert "msgs_to" in bad.json()["error"]["message"]
    assert http.get("/connz?limit=0").status == 400
    assert http.get("/connz?limit=many").status == 400
    assert http.get("/connz?subs=perhaps").status == 400
    assert http.get("/subsz?test=a..b").status == 400
    assert http.get("/topics?limit=100000").status == 400


async def test_metrics_parse_with_the_prometheus_parser(
    web_broker: MessageBroker, http: Http
) -> None:
    async with client(web_broker, 'odd "name" \\ here') as odd:
        await odd.subscribe("m.#", lambda m: None)
        for n in range(5):
            await odd.publish("m.x", n)
        await odd.flush()
        response = http.get("/metrics")
        assert response.status == 200
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = response.body.decode()
        families = {family.name: family for family in text_string_to_metric_families(text)}
        for line in text.splitlines():
            if line.startswith("# TYPE ") and line.endswith(" counter"):
                assert line.split()[2].endswith("_total"), line
        assert "# HELP message_broker_messages_published_total" in text
        published = families["message_broker_messages_published"]
        assert published.type == "counter"
        assert published.samples[0].value >= 5
        clients = families["message_broker_client_delivered"]
        values = {s.labels["client_id"]: s.value for s in clients.samples}
        assert values['odd "name" \\ here'] >= 5
        assert families["message_broker_connections"].samples[0].value == 1


def test_metrics_label_series_are_bounded(web_broker: MessageBroker, http: Http) -> None:
    raw = []
    try:
        for i in range(105):
            connection = RawClient(web_broker.port)
            connection.call("connect", {"client_id": f"c{i:03}"})
            raw.append(connection)
        families = {
            f.name: f for f in text_string_to_metric_families(http.get("/metrics").body.decode())
        }
        samples = families["message_broker_client_pending_messages"].samples
        assert len(samples) == 100
        assert samples[-1].labels["client_id"] == "_other"
    finally:
        for connection in raw:
            connection.close()


async def test_a_long_poll_with_a_cursor_loses_nothing_between_polls(
    web_broker: MessageBroker, http: Http
) -> None:
    async with client(web_broker, "bursts") as pub:
        first = http.get("/api/messages/poll?pattern=burst.%23&timeout=0")
        assert first.status == 204
        cursor = int(first.headers["x-next-seq"])
        sent: list[int] = []
        seen: list[int] = []
        n = 0
        for burst in [1, 250, 7, 999, 40, 600]:
            for _ in range(burst):
                await pub.publish("noise.x", n)
                await pub.publish(f"burst.{n % 3}", n)
                sent.append(n)
                n += 1
            await pub.flush()
            # Read until this burst is in, a poll at a time, each after the cursor.
            for _ in range(100):
                if len(seen) == len(sent):
                    break
                polled = await asyncio.to_thread(
                    http.get,
                    f"/api/messages/poll?pattern=burst.%23&after={cursor}&timeout=5&limit=300",
                )
                assert polled.status == 200, polled.body
                body = polled.json()
                assert body["missed"] == 0
                seqs = [m["seq"] for m in body["messages"]]
                assert seqs == sorted(seqs) and all(s > cursor for s in seqs)
                assert all(m["topic"].startswith("burst.") for m in body["messages"])
                seen.extend(m["payload"] for m in body["messages"])
                cursor = body["next"]
        assert seen == sent


async def test_a_waiting_poll_returns_the_next_message_and_times_out_empty(
    web_broker: MessageBroker, http: Http
) -> None:
    empty = await asyncio.to_thread(http.get, "/api/messages/poll?pattern=later&timeout=0.2")
    assert empty.status == 204
    cursor = empty.headers["x-next-seq"]
    async with client(web_broker, "later") as pub:
        waiting = asyncio.ensure_future(
            asyncio.to_thread(
                http.get, f"/api/messages/poll?pattern=later&after={cursor}&timeout=10"
            )
        )
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await pub.publish("later", {"at": "once"})
        polled = await asyncio.wait_for(waiting, 10)
        assert time.monotonic() - started < 2
        assert polled.status == 200
        assert [m["payload"] for m in polled.json()["messages"]] == [{"at": "once"}]


async def test_a_poll_behind_the_log_says_how_many_it_missed(
    web_broker: MessageBroker, http: Http
) -> None:
    async with client(web_broker, "flood") as pub:
        for n in range(10_050):
            await pub.publish("flood", n)
        await pub.flush()
    body = http.get_json("/api/messages/poll?pattern=flood&after=0&limit=5")
    assert body["missed"] >= 50
    assert len(body["messages"]) == 5
    assert body["messages"][0]["seq"] == body["missed"] + 1


def test_an_unknown_path_lists_the_ones_served(http: Http) -> None:
    missing = http.get("/varzz")
    assert missing.status == 404
    assert "/connz" in missing.json()["error"]["message"]


def test_bad_polls_are_named(http: Http) -> None:
    assert http.get("/api/messages/poll?pattern=a..b").status == 400
    assert http.get("/api/messages/poll?timeout=600").status == 400
    assert http.get("/api/messages/poll?timeout=nan").status == 400
    negative = http.get("/api/messages/poll?after=-1")
    assert negative.status == 400
    assert "after" in negative.json()["error"]["message"]
    assert http.get("/api/messages/poll?limit=0").status == 400


async def test_the_last_message_of_a_topic(web_broker: MessageBroker, http: Http) -> None:
    async with client(web_broker, "lastly") as pub:
        await pub.publish("sensors.temp", {"c": 20})
        await pub.publish("sensors.temp", {"c": 21}, headers={"unit": "C"})
        await pub.flush()
    last = http.get_json("/api/messages/last?topic=sensors.temp")
    assert last["messages"] == 2
    assert last["message"]["payload"] == {"c": 21}
    assert last["message"]["sender"] == "lastly"
    assert last["message"]["headers"] == {"unit": "C"}
    assert http.get("/api/messages/last?topic=never.seen").status == 404
    assert http.get("/api/messages/last").status == 400
    assert http.get("/api/messages/last?topic=a..b").status == 400


async def test_publish_over_http_reaches_a_subscriber(
    web_broker: MessageBroker, http: Http
) -> None:
    async with client(web_broker, "listener") as listener:
        got: list[Any] = []
        await listener.subscribe("from.web", got.append)
        await listener.flush()
        answer = http.post_json(
            "/api/publish",
            {"topic": "from.web", "payload": {"hello": [1, 2]}, "headers": {"k": "v"}},
        )
        assert answer.status == 200, answer.body
        assert answer.json()["recipients"] == 1
        await eventually(lambda: len(got) == 1)
        assert got[0].payload == {"hello": [1, 2]}
        assert got[0].sender == "web"
        assert got[0].headers == {"k": "v"}
        assert got[0].id == answer.json()["message_id"]
        stored = http.post_json("/api/publish", {"topic": "from.web", "payload": 2, "qos": 1})
        assert stored.status == 200


def test_bad_http_publishes_get_clear_errors(http: Http) -> None:
    plain = http.request("POST", "/api/publish", body="{}", headers={"Content-Type": "text/plain"})
    assert plain.status == 415
    broken = http.request(
        "POST", "/api/publish", body="{", headers={"Content-Type": "application/json"}
    )
    assert broken.status == 400
    assert "not JSON" in broken.json()["error"]["message"]
    assert http.post_json("/api/publish", [1]).status == 400
    reserved = http.post_json("/api/publish", {"topic": "system.fake", "payload": 1})
    assert reserved.status == 400
    assert reserved.json()["error"]["code"] == ERROR_CODES["INVALID_PARAMS"]
    unknown = http.post_json("/api/publish", {"topic": "a", "payload": 1, "colour": "red"})
    assert unknown.status == 400
    assert "colour" in unknown.json()["error"]["message"]


async def test_the_topic_tree_counts_and_keeps_replies_out(
    web_broker: MessageBroker, http: Http
) -> None:
    async with client(web_broker, "tree") as c:
        await c.subscribe("svc.echo", lambda m: m.payload)
        for _ in range(3):
            await c.publish("plant.line1.temp", 20)
        await c.publish("plant.line2.temp", "x" * 500)
        assert await c.request("svc.echo", 1) == 1
        await c.flush()
    body = http.get_json("/topics?prefix=plant")
    assert body["topics"] == 2
    (plant,) = body["tree"]["children"]
    assert plant["name"] == "plant"
    assert (plant["messages"], plant["topics"]) == (4, 2)
    line1, line2 = plant["children"]
    assert line1["children"][0]["topic"]["messages"] == 3
    assert line1["children"][0]["topic"]["last_payload"] == "20"
    preview = line2["children"][0]["topic"]
    assert preview["last_payload_truncated"] is True
    assert len(preview["last_payload"]) == 200
    everything = json.dumps(http.get_json("/topics"))
    assert "svc" in everything
    assert "_internal" not in everything


async def test_a_websocket_speaks_the_same_protocol(web_broker: MessageBroker) -> None:
    url = f"ws://127.0.0.1:{web_broker.http_port}/ws"
    async with websockets.connect(url) as ws:
        await ws.send(
            json.dumps(
                {"jsonrpc": "2.0", "method": "connect", "params": {"client_id": "page"}, "id": 1}
            )
        )
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert answer["error"]["code"] == ERROR_CODES["UNAUTHORIZED"]
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    async with websockets.connect(url) as ws, client(web_broker, "python") as python:
        calls = [
            {
                "method": "connect",
                "params": {"client_id": "page", "token": web_broker.token},
                "id": 1,
            },
            {"method": "subscribe", "params": {"patterns": ["to.page"]}, "id": 2},
        ]
        for call in calls:
            await ws.send(json.dumps({"jsonrpc": "2.0", **call}))
            assert "result" in json.loads(await asyncio.wait_for(ws.recv(), 5))
        await python.subscribe("to.python", lambda m: {"echo": m.payload})
        await python.flush()
        await python.publish("to.page", {"n": 1})
        delivered = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert delivered["method"] == "message"
        assert delivered["params"]["payload"] == {"n": 1}
        assert delivered["params"]["sender"] == "python"
        request = {
            "method": "request",
            "params": {"topic": "to.python", "payload": 7, "timeout": 5},
            "id": 3,
        }
        await ws.send(json.dumps({"jsonrpc": "2.0", **request}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["result"] == {"echo": 7}
        connz = Http(web_broker.http_port, web_broker.token).get_json("/connz")
        page = next(c for c in connz["connections"] if c["name"] == "page")
        assert page["type"] == "websocket"


async def test_a_websocket_from_another_sites_page_is_refused(web_broker: MessageBroker) -> None:
    url = f"ws://127.0.0.1:{web_broker.http_port}/ws"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, origin=websockets.Origin("http://evil.example")):
            pass
    assert refused.value.response.status_code == 403


async def test_a_passive_tap_on_everything_leaves_requests_unanswered(
    web_broker: MessageBroker, http: Http
) -> None:
    """The monitor and a page's passive subscription to `#` see every message but are
    never responders: a request nobody answers fails at once."""
    url = f"ws://127.0.0.1:{web_broker.http_port}/ws"
    async with websockets.connect(url) as ws, client(web_broker, "asker") as asker:
        calls = [
            {
                "method": "connect",
                "params": {"client_id": "tap", "token": web_broker.token},
                "id": 1,
            },
            {"method": "subscribe", "params": {"patterns": ["#"], "passive": True}, "id": 2},
        ]
        for call in calls:
            await ws.send(json.dumps({"jsonrpc": "2.0", **call}))
            assert "result" in json.loads(await asyncio.wait_for(ws.recv(), 5))
        started = time.monotonic()
        with pytest.raises(NoRespondersError):
            await asyncio.wait_for(asker.request("empty.topic", 1, timeout=10), 10)
        assert time.monotonic() - started < 1
        # The tap saw it, and so did the monitor.
        for _ in range(20):
            seen = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if seen.get("params", {}).get("topic") == "empty.topic":
                break
        else:
            pytest.fail("the tap never saw the request")
        assert http.get_json("/api/messages/last?topic=empty.topic")["messages"] == 1


async def test_a_long_poll_ends_when_the_broker_stops(start_broker: StartBroker) -> None:
    broker = start_broker(http_port=0)
    assert broker.http_port is not None
    http = Http(broker.http_port, broker.token)
    waiting = asyncio.ensure_future(
        asyncio.to_thread(http.get, "/api/messages/poll?pattern=x&timeout=60")
    )
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await asyncio.to_thread(broker.stop_sync)
    assert time.monotonic() - started < 5
    assert (await asyncio.wait_for(waiting, 10)).status == 503


def test_http_port_is_checked(start_broker: StartBroker) -> None:
    with pytest.raises(ValueError, match="http_port"):
        start_broker(port=18555, http_port=18555)
    with pytest.raises(TypeError, match="http_port"):
        start_broker(http_port="8080")
