"""Routing against a real broker: fan-out, order, patterns, system topics, take-over,
and request/response."""

from __future__ import annotations

import logging
import time

from support.wire import RawClient, error_code


def connected(raw, name: str, *patterns: str) -> RawClient:
    client = raw()
    client.connect(name)
    if patterns:
        client.subscribe(*patterns)
    return client


def test_fan_out_to_20_subscribers(raw):
    subscribers = [connected(raw, f"sub{i}", "fan.*") for i in range(20)]
    pub = connected(raw, "pub")
    for n in range(50):
        pub.notify("publish", {"topic": "fan.out", "payload": n})
    for sub in subscribers:
        assert [sub.next_message()["payload"] for _ in range(50)] == list(range(50))


def test_order_per_publisher_is_kept(raw):
    sub = connected(raw, "sub", "seq.#")
    publishers = [connected(raw, f"pub{i}") for i in range(3)]
    count = 2000
    for n in range(count):
        for i, pub in enumerate(publishers):
            pub.notify("publish", {"topic": f"seq.{i}", "payload": n})
    seen: dict[str, list[int]] = {f"pub{i}": [] for i in range(3)}
    for _ in range(count * 3):
        msg = sub.next_message()
        seen[msg["sender"]].append(msg["payload"])
    for sender, numbers in seen.items():
        assert numbers == list(range(count)), sender


def test_delivered_once_when_several_patterns_match(raw):
    sub = connected(raw, "sub", "a.*", "a.+", "a.#", "#", "a.b")
    pub = connected(raw, "pub")
    assert pub.result("publish", {"topic": "a.b", "payload": 1})["recipients"] == 1
    pub.publish("a.c", 2)
    assert sub.next_message(topic="a.b")["payload"] == 1
    assert sub.next_message(topic="a.c")["payload"] == 2
    assert not [f for f in sub.pending if f.get("params", {}).get("topic", "").startswith("a.")]


def test_seed_pattern_table(raw):
    table = {
        "jobs.activated": (["jobs.activated"], ["jobs.created"]),
        "jobs.*": (["jobs.activated", "jobs.created"], ["jobs", "jobs.a.b"]),
        "jobs.+": (["jobs.123", "jobs.abc"], ["jobs.a.b"]),
        "scripts.#": (["scripts.saw1.started", "scripts.saw1.hotkey.pressed", "scripts"], ["x"]),
        "scripts.+.started": (["scripts.saw1.started"], ["scripts.saw1.stopped"]),
    }
    pub = connected(raw, "pub")
    for pattern, (matching, other) in table.items():
        sub = connected(raw, f"sub-{pattern}", pattern)
        for topic in matching + other:
            pub.notify("publish", {"topic": topic, "payload": topic})
        pub.publish("end.marker", None)
        sub.subscribe("end.marker")
        pub.publish("end.marker", None)
        got = []
        while (msg := sub.next_message())["topic"] != "end.marker":
            got.append(msg["payload"])
        assert got == matching, pattern


def test_hash_alone_sees_system_topics(raw):
    debug = connected(raw, "debug", "#")
    connected(raw, "newcomer")
    event = debug.next_message(topic="system.client.connected")
    assert event["payload"]["client_id"] == "newcomer"
    assert event["sender"] == "broker"


def test_reserved_topics_can_be_subscribed_not_published(raw):
    client = connected(raw, "c", "system.#", "_internal.#")
    assert error_code(client.call("publish", {"topic": "system.client.connected"})) == -32602
    assert error_code(client.call("publish", {"topic": "_internal.x"})) == -32602


def test_client_connected_and_disconnected_events(raw):
    watcher = connected(raw, "watcher", "system.client.*")
    polite = connected(raw, "polite")
    abrupt = connected(raw, "abrupt")
    polite.result("disconnect")
    abrupt.close()
    events = [watcher.next_message() for _ in range(4)]
    summary = [(e["topic"].rsplit(".", 1)[1], e["payload"]["client_id"]) for e in events]
    assert summary == [
        ("connected", "polite"),
        ("connected", "abrupt"),
        ("disconnected", "polite"),
        ("disconnected", "abrupt"),
    ]
    assert events[2]["payload"]["reason"] == "client disconnect"
    assert events[3]["payload"]["reason"] == "connection closed"


def test_take_over_closes_the_old_connection(raw):
    watcher = connected(raw, "watcher", "system.client.*")
    old = connected(raw, "app", "jobs.*")
    new = raw()
    new.connect("app")
    frames = old.expect_closed()
    assert [error_code(f) for f in frames] == [-32006]
    assert frames[0]["id"] is None
    events = [watcher.next_message() for _ in range(3)]
    assert [(e["topic"], e["payload"].get("reason")) for e in events] == [
        ("system.client.connected", None),
        ("system.client.disconnected", "taken over"),
        ("system.client.connected", None),
    ]
    # The new connection starts clean: the old one's subscriptions are gone.
    pub = connected(raw, "pub")
    assert pub.result("publish", {"topic": "jobs.x"})["recipients"] == 0
    new.subscribe("jobs.*")
    pub.publish("jobs.x", "for the new one")
    assert new.next_message()["payload"] == "for the new one"
    assert [c["client_id"] for c in new.result("status")["clients"]].count("app") == 1


def test_broker_ready_is_published_on_start(start_broker, caplog):
    with caplog.at_level(logging.INFO, logger="message_broker"):
        broker = start_broker(log_messages=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            "system.broker.ready" in r.getMessage() for r in caplog.records
        ):
            time.sleep(0.01)
    ready = [r for r in caplog.records if "system.broker.ready" in r.getMessage()]
    assert ready, [r.getMessage() for r in caplog.records]
    assert ready[0].name == "message_broker.messages"
    assert f'"port":{broker.port}' in ready[0].getMessage()


def test_shutdown_is_announced_before_connections_close(start_broker):
    broker = start_broker()
    client = RawClient(broker.port)
    client.connect("c")
    client.subscribe("system.broker.shutdown")
    broker.stop_sync("maintenance")
    frames = client.expect_closed()
    assert frames[0]["params"]["topic"] == "system.broker.shutdown"
    assert frames[0]["params"]["payload"] == {"reason": "maintenance"}
    assert error_code(frames[1]) == -32007
    client.close()


# -- request / response ------------------------------------------------------------------


def test_request_reply(raw):
    service = connected(raw, "svc", "scripts.status")
    client = connected(raw, "client")
    client.send(
        client.request_obj(
            "request", {"topic": "scripts.status", "payload": {"id": "saw1"}, "timeout": 5}, 1
        )
    )
    request = service.next_message()
    assert request["payload"] == {"id": "saw1"}
    assert request["sender"] == "client"
    assert request["reply_to"].startswith("_internal.reply.")
    reply = service.result("publish", {"topic": request["reply_to"], "payload": {"running": True}})
    assert reply["recipients"] == 1
    assert client.wait_response(1)["result"] == {"running": True}
    # A second answer to the same request is counted as late and dropped.
    late = service.result("publish", {"topic": request["reply_to"], "payload": 2})
    assert late["recipients"] == 0
    assert client.result("status")["messages"]["late_replies"] == 1


def test_a_guessed_reply_address_cannot_answer_a_request(raw):
    service, intruder, client = raw(), raw(), raw()
    service.connect("svc")
    service.subscribe("svc.q")
    intruder.connect("intruder")
    client.connect("client")
    client.send(client.request_obj("request", {"topic": "svc.q", "payload": 1}, 1))
    reply_to = service.next_message()["reply_to"]
    guessed = reply_to.rsplit(".", 1)[0]  # the sequence number without the token
    assert intruder.result("publish", {"topic": guessed, "payload": "forged"})["recipients"] == 0
    assert service.result("publish", {"topic": reply_to, "payload": "real"})["recipients"] == 1
    assert client.wait_response(1)["result"] == "real"


def test_request_with_no_responders_fails_at_once(raw):
    client = connected(raw, "client")
    started = time.monotonic()
    response = client.call("request", {"topic": "nobody.home", "payload": 1, "timeout": 60})
    assert error_code(response) == -32003
    assert "no responders" in response["error"]["message"]
    # Far below the 60 s timeout: the broker did not wait for a reply.
    assert time.monotonic() - started < 30


def test_request_timeout(raw):
    connected(raw, "silent", "svc.slow")
    client = connected(raw, "client")
    response = client.call("request", {"topic": "svc.slow", "payload": 1, "timeout": 0.2})
    assert error_code(response) == -32002
    assert "timed out" in response["error"]["message"]
    assert client.result("status")["messages"]["timeouts"] == 1


def test_requests_are_answered_concurrently(raw):
    service = connected(raw, "svc", "svc.*")
    client = connected(raw, "client")
    for i in range(5):
        client.send(client.request_obj("request", {"topic": f"svc.{i}", "payload": i}, f"r{i}"))
    requests = [service.next_message() for _ in range(5)]
    # Answer in reverse order: each response finds its own request.
    for request in reversed(requests):
        service.publish(request["reply_to"], request["payload"] * 10)
    for i in range(5):
        assert client.wait_response(f"r{i}")["result"] == i * 10
    # The requester kept working while requests were pending.
    assert client.result("ping")["pong"] is True


def test_request_on_status_is_answered_by_the_broker(raw):
    client = connected(raw, "client")
    status = client.result("request", {"topic": "status", "payload": {}})
    assert status["client_count"] == 1
