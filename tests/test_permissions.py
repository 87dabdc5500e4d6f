"""Topic permissions: per-client rules in the pattern syntax, deny wins, replies to a
request always allowed, and a refused call delivers nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from message_broker import (
    ERROR_CODES,
    BrokerClient,
    BrokerConfig,
    MessageBroker,
    PermissionDeniedError,
)

from support.waiting import eventually
from support.wire import RawClient, error_code

DENIED = ERROR_CODES["PERMISSION_DENIED"]

RULES = [
    # Sensors publish readings under their own name, and nothing secret.
    {
        "client": "sensor-*",
        "publish": {"allow": ["sensors.{client}.#"], "deny": ["sensors.*.calibration"]},
        "subscribe": {"allow": ["commands.{client}.#"]},
    },
    # A second rule for one sensor: its broad allow never undoes the deny above.
    {"client": "sensor-1", "publish": {"allow": ["#"]}},
    # Services answer requests but publish nothing themselves.
    {"client": "svc-*", "publish": {"allow": []}, "subscribe": {"deny": ["secrets.#"]}},
]


@pytest.fixture
def ruled(start_broker) -> MessageBroker:
    return start_broker(permissions=RULES)


def connected(broker: MessageBroker, client_id: str) -> RawClient:
    client = RawClient(broker.port)
    client.connect(client_id)
    return client


def test_a_sensor_publishes_where_its_rule_allows_and_nowhere_else(ruled):
    with connected(ruled, "watcher") as watcher, connected(ruled, "sensor-7") as sensor:
        watcher.subscribe("#")
        assert sensor.result("publish", {"topic": "sensors.sensor-7.temp", "payload": 21})
        refused = sensor.call("publish", {"topic": "sensors.sensor-8.temp", "payload": 0})
        assert error_code(refused) == DENIED
        assert "sensor-7" in refused["error"]["message"]
        assert "sensors.sensor-8.temp" in refused["error"]["message"]
        assert error_code(sensor.call("publish", {"topic": "lights.on"})) == DENIED
        assert error_code(sensor.call("request", {"topic": "lights.on"})) == DENIED
        sensor.result("publish", {"topic": "sensors.sensor-7.marker", "payload": "end"})
        seen = [watcher.next_message()["topic"] for _ in range(2)]
        assert seen == ["sensors.sensor-7.temp", "sensors.sensor-7.marker"]


def test_deny_wins_over_an_allow_of_another_rule(ruled):
    with connected(ruled, "watcher") as watcher, connected(ruled, "sensor-1") as sensor:
        watcher.subscribe("#")
        # sensor-1's own rule allows everything, but the sensor rule's deny still holds.
        refused = sensor.call("publish", {"topic": "sensors.sensor-1.calibration", "payload": 1})
        assert error_code(refused) == DENIED
        assert "sensors.*.calibration" in refused["error"]["message"]
        sensor.result("publish", {"topic": "anything.else", "payload": "allowed"})
        assert watcher.next_message()["topic"] == "anything.else"


def test_subscriptions_must_be_covered_by_an_allow_and_touch_no_deny(ruled):
    with connected(ruled, "sensor-3") as sensor, connected(ruled, "svc-a") as service:
        sensor.result("subscribe", {"patterns": ["commands.sensor-3.#"]})
        for pattern in ["commands.#", "commands.*.reset", "#"]:
            assert error_code(sensor.call("subscribe", {"patterns": [pattern]})) == DENIED
        # All or nothing: the allowed pattern of a refused call is not subscribed.
        call = {"patterns": ["jobs.*", "secrets.keys"]}
        assert error_code(service.call("subscribe", call)) == DENIED
        assert error_code(service.call("subscribe", {"patterns": ["#"]})) == DENIED
        service.result("subscribe", {"patterns": ["jobs.*"]})
        clients = {c["client_id"]: c for c in ruled.status()["clients"]}
        assert clients["svc-a"]["subscriptions"] == ["jobs.*"]
        assert clients["sensor-3"]["subscriptions"] == ["commands.sensor-3.#"]


async def test_a_service_under_a_deny_all_publish_rule_still_answers_requests(ruled):
    port = ruled.port
    assert port is not None
    async with (
        BrokerClient("svc-adder", "127.0.0.1", port) as service,
        BrokerClient("caller", "127.0.0.1", port) as caller,
    ):
        await service.subscribe(["math.add"], lambda msg: sum(msg.payload))
        assert await caller.request("math.add", [2, 3], timeout=5) == 5
        with pytest.raises(PermissionDeniedError, match="svc-adder"):
            await service.request("math.add", [1, 1], timeout=5)
        # A fire-and-forget publish refused is reported, not lost in silence.
        failures: list[BaseException] = []
        service_publish = service.publish("math.result", 5, qos=1)
        try:
            await asyncio.wait_for(service_publish, 5)
        except PermissionDeniedError as error:
            failures.append(error)
        assert len(failures) == 1


def test_a_dead_letter_topic_the_rules_refuse_refuses_the_queue(ruled):
    with connected(ruled, "sensor-4") as sensor:
        queue = {"patterns": ["commands.sensor-4.run"], "queue": "runs"}
        refused = sensor.call("subscribe", {**queue, "dead_letter_topic": "alarms.all"})
        assert error_code(refused) == DENIED
        assert "alarms.all" in refused["error"]["message"]
        allowed = {**queue, "dead_letter_topic": "sensors.sensor-4.dead"}
        assert sensor.result("subscribe", allowed)


def test_a_will_the_rules_refuse_refuses_the_connect(ruled):
    with RawClient(ruled.port) as sensor:
        will = {"topic": "alarms.sensor-9", "payload": "gone"}
        refused = sensor.call("connect", {"client_id": "sensor-9", "will": will})
        assert error_code(refused) == DENIED
        assert "sensor-9" not in {c["client_id"] for c in ruled.status()["clients"]}
        will = {"topic": "sensors.sensor-9.status", "payload": "gone"}
        assert sensor.result("connect", {"client_id": "sensor-9", "will": will})


def test_with_rules_a_client_id_is_one_topic_segment(ruled, broker):
    with RawClient(ruled.port) as client:
        refused = client.call("connect", {"client_id": "sensor-1.evil"})
        assert error_code(refused) == ERROR_CODES["INVALID_PARAMS"]
        assert "'.'" in refused["error"]["message"]
    with RawClient(ruled.port) as client:
        for pattern_like in ("sensor-*", "sensor-#", "sensor-+"):
            refused = client.call("connect", {"client_id": pattern_like})
            assert error_code(refused) == ERROR_CODES["INVALID_PARAMS"], pattern_like
    # Without rules an id is just a name, as it always was.
    with RawClient(broker.port) as client:
        assert client.result("connect", {"client_id": "app.ui*"})["client_id"] == "app.ui*"


def test_clients_no_rule_names_are_unrestricted(ruled):
    with connected(ruled, "dashboard") as dashboard:
        dashboard.subscribe("#")
        dashboard.result("publish", {"topic": "sensors.sensor-1.calibration", "payload": 1})
        assert dashboard.next_message()["topic"] == "sensors.sensor-1.calibration"
    assert ruled.status()["security"]["permission_rules"] == len(RULES)


def test_bad_rules_are_refused_at_start_naming_them():
    for rules, needle in [
        ([{"client": "", "publish": {"allow": ["a"]}}], "client"),
        ([{"client": "x", "publish": {"allow": ["a.#.b"]}}], "a.#.b"),
        ([{"client": "x", "publish": {"allow": ["x{client}"]}}], "{client}"),
        ([{"client": "x", "publsh": {"allow": ["a"]}}], "publsh"),
    ]:
        with pytest.raises(ValueError, match="permissions") as refused:
            MessageBroker(BrokerConfig(port=0, permissions=rules))
        assert needle in str(refused.value)


def test_rules_come_from_a_toml_file(tmp_path: Path):
    config = tmp_path / "broker.toml"
    config.write_text(
        "[broker]\nport = 0\n\n"
        '[[permissions]]\nclient = "sensor-*"\n'
        'publish = { allow = ["sensors.{client}.#"] }\n'
        'subscribe = { deny = ["#"] }\n'
    )
    loaded = BrokerConfig.from_file(config)
    rule = {
        "client": "sensor-*",
        "publish": {"allow": ["sensors.{client}.#"]},
        "subscribe": {"deny": ["#"]},
    }
    assert loaded.permissions == [rule]
    with (
        MessageBroker(loaded.replace(host="127.0.0.1")) as broker,
        connected(broker, "sensor-2") as sensor,
    ):
        assert error_code(sensor.call("subscribe", {"patterns": ["a"]})) == DENIED


async def test_eventually_is_bounded():
    # The helper this module relies on gives up rather than hanging.
    with pytest.raises(AssertionError):
        await eventually(lambda: False, timeout=0.2)


def test_joining_a_queue_needs_leave_to_receive_all_it_is_bound_to(ruled):
    with connected(ruled, "owner") as owner, connected(ruled, "svc-spy") as spy:
        owner.result("subscribe", {"patterns": ["secrets.keys"], "queue": "vault"})
        # The spy asks only for an allowed pattern, but the queue delivers secrets.
        refused = spy.call("subscribe", {"patterns": ["jobs.x"], "queue": "vault"})
        assert error_code(refused) == DENIED
        assert "secrets.keys" in refused["error"]["message"]
        refused = spy.call("subscribe", {"patterns": [], "queue": "vault"})
        assert error_code(refused) == DENIED


def test_a_binding_an_existing_consumer_may_not_receive_is_refused(ruled):
    with connected(ruled, "sensor-6") as worker, connected(ruled, "owner") as owner:
        queue = {
            "patterns": ["commands.sensor-6.run"],
            "queue": "work",
            "dead_letter_topic": "sensors.sensor-6.dead",
        }
        worker.result("subscribe", queue)
        refused = owner.call("subscribe", {"patterns": ["secrets.#"], "queue": "work"})
        assert error_code(refused) == DENIED
        assert "consumer" in refused["error"]["message"]
        status = {q["name"]: q for q in ruled.status()["queues"]}
        assert status["work"]["patterns"] == ["commands.sensor-6.run"]


def test_the_default_dead_letter_topic_obeys_the_publish_rules_too(ruled):
    with connected(ruled, "sensor-5") as sensor:
        queue = {"patterns": ["commands.sensor-5.run"], "queue": "runs"}
        refused = sensor.call("subscribe", queue)
        assert error_code(refused) == DENIED
        assert "dead_letter.runs" in refused["error"]["message"]


def test_no_client_can_make_the_broker_dead_letter_onto_system_topics(broker):
    with connected(broker, "anyone") as client:
        queue = {"patterns": ["a"], "queue": "q", "dead_letter_topic": "system.broker.shutdown"}
        refused = client.call("subscribe", queue)
        assert error_code(refused) == ERROR_CODES["INVALID_PARAMS"]
        assert "reserved" in refused["error"]["message"]


def test_deleting_a_queue_needs_leave_to_receive_what_it_holds(ruled):
    with connected(ruled, "owner") as owner, connected(ruled, "svc-spy") as spy:
        owner.result("subscribe", {"patterns": ["secrets.keys"], "queue": "vault", "durable": True})
        assert error_code(spy.call("delete_queue", {"name": "vault"})) == DENIED
        assert owner.result("delete_queue", {"name": "vault"})["deleted"] is True
