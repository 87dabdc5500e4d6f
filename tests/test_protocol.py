"""The wire protocol against a real broker: every method, every error code, batches and
notifications (JSON-RPC 2.0 to the letter), over TCP and over the Unix socket."""

from __future__ import annotations

import json
import time

import pytest

from message_broker import ERROR_CODES

from support.wire import RawClient, error_code


@pytest.fixture(params=["tcp", "unix"])
def transport(request: pytest.FixtureRequest) -> str:
    """Every test of this module runs over both transports: same framing, same session."""
    return str(request.param)


def test_connect_returns_session_details(raw):
    client = raw()
    result = client.connect("app1", client_type="python", version="1.0")
    assert result["client_id"] == "app1"
    assert result["heartbeat_interval"] == 5.0
    assert result["heartbeat_timeout"] == 30.0
    assert result["max_message_size"] == 1024 * 1024
    assert result["broker_version"]
    # Connecting again with the same id on the same connection is harmless.
    assert client.connect("app1")["client_id"] == "app1"
    # Another id on the same connection is refused.
    assert error_code(client.call("connect", {"client_id": "other"})) == -32602


def test_connect_without_client_id_gets_one(raw):
    client = raw()
    client_id = client.result("connect", {})["client_id"]
    assert client_id.startswith("anonymous-")
    status = client.result("status")
    assert client_id in [c["client_id"] for c in status["clients"]]


def test_anonymous_ids_never_take_over_a_named_client(raw):
    named = raw()
    named.connect("client-2")
    anonymous = raw()
    anonymous_id = anonymous.result("connect", {})["client_id"]
    assert anonymous_id != "client-2"
    assert named.result("ping")["pong"] is True
    assert named.result("status")["client_count"] == 2


@pytest.mark.parametrize(
    "params",
    [{"client_id": ""}, {"client_id": "x" * 257}, {"client_id": "a\nb"}, {"client_id": 5}],
)
def test_connect_rejects_bad_client_ids(raw, params):
    assert error_code(raw().call("connect", params)) == -32602


def test_ping_works_before_connect(raw):
    result = raw().result("ping")
    assert result["pong"] is True
    assert abs(result["time"] - time.time()) < 60


def test_subscribe_unsubscribe_publish_round_trip(raw):
    sub, pub = raw(), raw()
    sub.connect("sub")
    pub.connect("pub")
    assert sub.subscribe("jobs.*", "scripts.+") == ["jobs.*", "scripts.+"]

    message_id = pub.publish("jobs.activated", {"job_id": "123"})
    msg = sub.next_message()
    assert msg["topic"] == "jobs.activated"
    assert msg["payload"] == {"job_id": "123"}
    assert msg["sender"] == "pub"
    assert msg["id"] == message_id
    assert abs(msg["timestamp"] - time.time()) < 60

    result = sub.result("unsubscribe", {"patterns": ["jobs.*", "never.subscribed"]})
    assert result == {"unsubscribed": ["jobs.*"]}
    response = pub.call("publish", {"topic": "jobs.activated", "payload": 1})
    assert response["result"]["recipients"] == 0
    pub.publish("scripts.saw1", "still subscribed")
    assert sub.next_message()["payload"] == "still subscribed"


def test_publish_result_counts_recipients(raw):
    a, b, pub = raw(), raw(), raw()
    for client, name in ((a, "a"), (b, "b"), (pub, "pub")):
        client.connect(name)
    a.subscribe("t.#")
    b.subscribe("t.x")
    result = pub.result("publish", {"topic": "t.x", "payload": None})
    assert result["recipients"] == 2
    assert isinstance(result["message_id"], str)


def test_publish_without_payload_delivers_null(raw):
    sub, pub = raw(), raw()
    sub.connect("sub")
    pub.connect("pub")
    sub.subscribe("ev")
    pub.result("publish", {"topic": "ev"})
    assert sub.next_message()["payload"] is None


def test_ttl_is_carried_and_checked(raw):
    sub, pub = raw(), raw()
    sub.connect("sub")
    pub.connect("pub")
    sub.subscribe("ev")
    pub.publish("ev", 1, ttl=2.5)
    assert sub.next_message()["ttl"] == 2.5
    assert error_code(pub.call("publish", {"topic": "ev", "ttl": -1})) == -32602


def test_qos_other_than_zero_or_one_is_refused_clearly(raw):
    client = raw()
    client.connect("c")
    for qos in (2, 255, -1, "1"):
        response = client.call("publish", {"topic": "ev", "payload": 1, "qos": qos})
        assert error_code(response) == -32602, response
        assert "qos" in response["error"]["message"]
    confirmed = client.call("publish", {"topic": "ev", "payload": 1, "qos": 1})
    assert confirmed["result"]["recipients"] == 0


def test_disconnect_answers_then_closes(raw):
    watcher, client = raw(), raw()
    watcher.connect("watcher")
    watcher.subscribe("system.client.disconnected")
    client.connect("leaving")
    assert client.result("disconnect") == {"disconnected": True}
    client.expect_closed()
    event = watcher.next_message()
    assert event["payload"] == {"client_id": "leaving", "reason": "client disconnect"}


def test_status_reports_clients_subscriptions_and_counters(raw, broker):
    a, b = raw(), raw()
    a.connect("a", client_type="ahk")
    b.connect("b")
    a.subscribe("jobs.*", "#")
    b.publish("jobs.x", 1)
    a.next_message()
    status = a.result("status")
    assert status["client_count"] == 2
    clients = {c["client_id"]: c for c in status["clients"]}
    assert clients["a"]["subscriptions"] == ["jobs.*", "#"]
    assert clients["a"]["client_type"] == "ahk"
    assert clients["b"]["subscriptions"] == []
    assert status["uptime"] >= 0
    assert status["worker_threads"] >= 1
    assert status["messages"]["published"] >= 1
    assert status["messages"]["delivered"] >= 1
    assert status["subscription_count"] == 2
    assert status["port"] == broker.port


# -- error codes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,params",
    [
        ("subscribe", {"patterns": ["a"]}),
        ("unsubscribe", {"patterns": ["a"]}),
        ("publish", {"topic": "a", "payload": 1}),
        ("request", {"topic": "a", "payload": 1}),
        ("status", None),
        ("disconnect", None),
    ],
)
def test_not_connected(raw, method, params):
    response = raw().call(method, params)
    assert error_code(response) == -32001
    assert "connect" in response["error"]["message"]
    assert response["error"]["data"]["name"] == "NOT_CONNECTED"


def test_parse_error_has_null_id_and_connection_survives(raw):
    client = raw()
    client.send_raw(client.frame(b'{"jsonrpc": "2.0", "method": "ping", "id": 1'))
    response = client.recv()
    assert error_code(response) == -32700
    assert response["id"] is None
    assert client.result("ping")["pong"] is True


def test_invalid_utf8_is_a_parse_error(raw):
    client = raw()
    client.send_raw(client.frame(b'{"jsonrpc":"2.0","method":"\xff\xfe","id":1}'))
    response = client.recv()
    assert error_code(response) == -32700
    assert "UTF-8" in response["error"]["message"]
    assert client.result("ping")["pong"] is True


@pytest.mark.parametrize(
    "request_obj,expected_id",
    [
        ({"method": "ping", "id": 1}, 1),
        ({"jsonrpc": "1.0", "method": "ping", "id": 2}, 2),
        ({"jsonrpc": "2.0", "id": 3}, 3),
        ({"jsonrpc": "2.0", "method": 42, "id": 4}, 4),
        ({"jsonrpc": "2.0", "method": "ping", "params": "x", "id": 5}, 5),
        ({"jsonrpc": "2.0", "method": "ping", "id": {"no": "objects"}}, None),
        (42, None),
        ("a string", None),
    ],
)
def test_invalid_request(raw, request_obj, expected_id):
    client = raw()
    client.send(request_obj)
    response = client.recv()
    assert error_code(response) == -32600
    assert response["id"] == expected_id


def test_method_not_found(raw):
    client = raw()
    client.connect("c")
    response = client.call("frobnicate")
    assert error_code(response) == -32601
    assert "frobnicate" in response["error"]["message"]
    # Also before connect: an unknown method is unknown, not "not connected".
    assert error_code(raw().call("frobnicate")) == -32601


@pytest.mark.parametrize(
    "method,params,needle",
    [
        ("publish", {"payload": 1}, "topic"),
        ("publish", {"topic": 5}, "invalid"),
        ("publish", {"topic": "a", "extra": 1}, "extra"),
        ("publish", {"topic": "a..b"}, "empty segment"),
        ("publish", {"topic": "jobs.*"}, "wildcard"),
        ("publish", {"topic": "system.broker.ready"}, "reserved"),
        ("publish", {"topic": "_internal.anything"}, "reserved"),
        ("publish", ["positional"], "named"),
        ("subscribe", {"patterns": "jobs.*"}, "invalid"),
        ("subscribe", {"patterns": ["#.a"]}, "last"),
        ("subscribe", {"patterns": ["a.b*"]}, "whole segment"),
        ("subscribe", {}, "patterns"),
        ("unsubscribe", {"patterns": [""]}, "empty"),
        ("request", {"topic": "a", "timeout": 0}, "timeout"),
        ("request", {"topic": "system.x"}, "reserved"),
    ],
)
def test_invalid_params(raw, method, params, needle):
    client = raw()
    client.connect("c")
    response = client.call(method, params)
    assert error_code(response) == -32602
    assert needle in response["error"]["message"], response


def test_invalid_subscribe_is_all_or_nothing(raw):
    client = raw()
    client.connect("c")
    assert error_code(client.call("subscribe", {"patterns": ["ok.*", "bad.#.x"]})) == -32602
    assert client.result("status")["clients"][0]["subscriptions"] == []


def test_error_table_is_complete():
    assert ERROR_CODES == {
        "PARSE_ERROR": -32700,
        "INVALID_REQUEST": -32600,
        "METHOD_NOT_FOUND": -32601,
        "INVALID_PARAMS": -32602,
        "INTERNAL_ERROR": -32603,
        "NOT_CONNECTED": -32001,
        "TIMEOUT": -32002,
        "NO_RESPONDERS": -32003,
        "MESSAGE_TOO_LARGE": -32004,
        "TOO_MANY_CONNECTIONS": -32005,
        "SESSION_TAKEN_OVER": -32006,
        "SHUTTING_DOWN": -32007,
        "HEARTBEAT_TIMEOUT": -32008,
        "READ_TIMEOUT": -32009,
        "TOO_MANY_REQUESTS": -32010,
        "QUEUE_FULL": -32011,
        "STORAGE_FAILED": -32012,
        "UNAUTHORIZED": -32013,
        "PERMISSION_DENIED": -32014,
        "RESPONDER_ERROR": -32015,
        "CHANNEL_FULL": -32016,
    }


# -- notifications and batches -----------------------------------------------------------


def test_notifications_get_no_response_even_on_error(raw):
    sub, pub = raw(), raw()
    sub.connect("sub")
    pub.connect("pub")
    sub.subscribe("ev")
    pub.notify("publish", {"topic": "ev", "payload": "via notification"})
    pub.notify("publish", {"topic": "system.nope"})  # an error, silently per JSON-RPC
    pub.notify("frobnicate")
    assert sub.next_message()["payload"] == "via notification"
    # The next frame pub receives is the response to this ping: nothing came before it.
    pub.send(pub.request_obj("ping", None, "marker"))
    assert pub.recv()["id"] == "marker"


def test_null_id_is_a_request(raw):
    client = raw()
    client.send({"jsonrpc": "2.0", "method": "ping", "id": None})
    response = client.recv()
    assert response["id"] is None
    assert response["result"]["pong"] is True


def test_string_ids_are_echoed(raw):
    client = raw()
    client.send({"jsonrpc": "2.0", "method": "ping", "id": "abc-1"})
    assert client.recv()["id"] == "abc-1"


def test_batch_answers_requests_only(raw):
    client = raw()
    client.send(
        [
            {"jsonrpc": "2.0", "method": "connect", "params": {"client_id": "b"}, "id": 1},
            {"jsonrpc": "2.0", "method": "subscribe", "params": {"patterns": ["x"]}},
            {"jsonrpc": "2.0", "method": "status", "id": 2},
            {"jsonrpc": "2.0", "method": "nope", "id": 3},
            5,
        ]
    )
    responses = client.recv()
    assert isinstance(responses, list)
    by_id = {r["id"]: r for r in responses}
    assert len(responses) == 4
    assert by_id[1]["result"]["client_id"] == "b"
    # The notification in the batch ran before the status request after it.
    assert by_id[2]["result"]["clients"][0]["subscriptions"] == ["x"]
    assert by_id[3]["error"]["code"] == -32601
    assert by_id[None]["error"]["code"] == -32600


def test_batch_of_notifications_gets_no_response(raw):
    client = raw()
    client.send([{"jsonrpc": "2.0", "method": "ping"}, {"jsonrpc": "2.0", "method": "ping"}])
    client.send(client.request_obj("ping", None, "after"))
    assert client.recv()["id"] == "after"


def test_empty_batch_is_invalid(raw):
    client = raw()
    client.send([])
    response = client.recv()
    assert isinstance(response, dict)
    assert error_code(response) == -32600
    assert response["id"] is None


def test_batch_with_request_waits_for_the_reply(raw):
    responder, client = raw(), raw()
    responder.connect("svc")
    responder.subscribe("svc.echo")
    client.connect("c")
    client.send(
        [
            {"jsonrpc": "2.0", "method": "ping", "id": "p"},
            {
                "jsonrpc": "2.0",
                "method": "request",
                "params": {"topic": "svc.echo", "payload": 7},
                "id": "r",
            },
        ]
    )
    request = responder.next_message()
    responder.publish(request["reply_to"], {"echo": request["payload"]})
    responses = {r["id"]: r for r in client.recv()}
    assert responses["p"]["result"]["pong"] is True
    assert responses["r"]["result"] == {"echo": 7}


def test_batch_with_disconnect_answers_everything_and_closes(raw):
    silent, client = raw(), raw()
    silent.connect("silent")
    silent.subscribe("svc.slow")
    client.connect("batcher")
    client.send(
        [
            {
                "jsonrpc": "2.0",
                "method": "request",
                "params": {"topic": "svc.slow", "timeout": 30},
                "id": 10,
            },
            {"jsonrpc": "2.0", "method": "disconnect", "id": 11},
            {"jsonrpc": "2.0", "method": "publish", "params": {"topic": "svc.slow"}, "id": 12},
        ]
    )
    started = time.monotonic()
    frames = client.expect_closed()
    assert time.monotonic() - started < 1.5
    responses = {r["id"]: r for r in frames[0]}
    assert error_code(responses[10]) == -32001
    assert responses[11]["result"] == {"disconnected": True}
    assert error_code(responses[12]) == -32001
    # The publish after disconnect was not carried out: after the request, the next
    # message the subscriber sees is a marker published later by someone else.
    assert silent.next_message()["reply_to"]
    with raw() as marker:
        marker.connect("marker")
        marker.publish("svc.slow", "marker")
    assert silent.next_message()["payload"] == "marker"


# -- newline-delimited JSON -------------------------------------------------------------------


def test_newline_delimited_json_mode(raw):
    sub = raw(lines=True)
    pub = raw()
    sub.connect("lines")
    pub.connect("frames")
    sub.subscribe("t")
    # A pretty-printed payload: its line breaks must not break the line framing.
    body = (
        b'{"jsonrpc":"2.0","method":"publish",'
        b'"params":{"topic":"t","payload":{\n"a": [1,\n 2]}},"id":9}'
    )
    pub.send_raw(pub.frame(body))
    assert pub.wait_response(9)["result"]["recipients"] == 1
    assert sub.next_message()["payload"] == {"a": [1, 2]}
    sub.send_raw(b"this is not json\n")
    assert error_code(sub.recv()) == -32700
    sub.send_raw(
        b'[{"jsonrpc":"2.0","method":"ping","id":1},{"jsonrpc":"2.0","method":"ping","id":2}]\r\n'
    )
    assert [r["id"] for r in sub.recv()] == [1, 2]


def test_unicode_and_escapes_round_trip(raw):
    sub, pub = raw(), raw()
    sub.connect("sub")
    pub.connect("pub")
    sub.subscribe("i18n.*")
    payload = {
        "text": 'Grüße, 日本語, emoji 🎉, quote " backslash \\ newline \n tab \t',
        "nested": {"list": [1, 2.5, None, True, {"deep": ["x"]}]},
        "big": 2**53 + 1,
    }
    pub.publish("i18n.test", payload)
    msg = sub.next_message()
    assert msg["payload"] == payload
    assert json.dumps(msg["payload"]) == json.dumps(payload)


def test_too_many_requests_in_flight(start_broker):
    broker = start_broker(max_message_size=4 * 1024 * 1024)
    silent, client = RawClient(broker.port), RawClient(broker.port)
    silent.connect("silent")
    silent.subscribe("svc.slow")
    client.connect("eager")
    batch = [
        {
            "jsonrpc": "2.0",
            "method": "request",
            "params": {"topic": "svc.slow", "payload": n, "timeout": 60},
            "id": n,
        }
        for n in range(10_000)
    ]
    client.send(batch)
    # Every request of the batch now waits; one more is refused at once.
    response = client.call("request", {"topic": "svc.slow", "payload": "one too many"})
    assert error_code(response) == -32010
    assert "10000 requests" in response["error"]["message"]
    assert client.result("ping")["pong"] is True
    silent.close()
    client.close()


def test_waiting_requests_do_not_hold_a_closed_connection(raw):
    silent, watcher, client = raw(), raw(), raw()
    silent.connect("silent")
    silent.subscribe("svc.slow")
    watcher.connect("watcher")
    watcher.subscribe("system.client.disconnected")
    client.connect("leaving")
    client.notify("request", {"topic": "svc.slow", "payload": 1, "timeout": 3600})
    client.send(client.request_obj("request", {"topic": "svc.slow", "timeout": 3600}, 1))
    client.result("disconnect")
    client.expect_closed(timeout=1.5)
    assert watcher.next_message()["payload"]["client_id"] == "leaving"
    # The abandoned requests no longer wait: a reply to them is a late reply.
    requests = [silent.next_message() for _ in range(2)]
    late = silent.result("publish", {"topic": requests[0]["reply_to"], "payload": 1})
    assert late["recipients"] == 0


def test_a_refused_publish_notification_is_reported(raw):
    client = raw()
    client.connect("notifier")
    client.notify("publish", {"topic": "system.x", "payload": 1, "message_id": "m-1"})
    client.notify("publish", {"topic": "system.x", "payload": 2})  # no id: nothing to name
    notice = client.recv()
    assert notice["method"] == "publish_failed"
    assert "id" not in notice
    assert notice["params"]["message_id"] == "m-1"
    assert notice["params"]["code"] == -32602
    assert "reserved" in notice["params"]["message"]
    client.send(client.request_obj("ping", None, "after"))
    assert client.recv()["id"] == "after", "nothing else was sent"


def test_headers_are_delivered_as_sent_through_fan_out_queues_and_retained(raw):
    sub = raw()
    sub.connect("sub")
    sub.subscribe("doc.*")
    worker = raw()
    worker.connect("worker")
    worker.result("subscribe", {"patterns": ["doc.#"], "queue": "docs"})
    pub = raw()
    pub.connect("pub")
    headers = {"trace-id": "4bf92f35", "content-type": "text/markdown", "empty": ""}
    params = {"topic": "doc.new", "payload": "# hi", "headers": headers, "retain": True}
    pub.result("publish", params)
    assert sub.next_message(topic="doc.new")["headers"] == headers
    assert worker.next_message(topic="doc.new")["headers"] == headers
    late = raw()
    late.connect("late")
    late.subscribe("doc.#")
    retained = late.next_message(topic="doc.new")
    assert (retained["retained"], retained["headers"]) == (True, headers)
    # No headers, or empty ones, and the delivery carries none.
    pub.result("publish", {"topic": "doc.plain", "payload": 1, "headers": {}})
    assert "headers" not in sub.next_message(topic="doc.plain")


@pytest.mark.parametrize(
    "headers",
    [{"n": 1}, ["a"], "text", {"": "x"}, {"k": "x" * 4097}, {f"h{n}": "v" for n in range(65)}],
)
def test_bad_headers_are_refused(raw, headers):
    pub = raw()
    pub.connect("pub")
    response = pub.call("publish", {"topic": "t", "payload": 1, "headers": headers})
    assert error_code(response) == -32602, response


def test_passive_subscribers_never_count_as_responders(raw):
    logger = raw()
    logger.connect("logger")
    logger.result("subscribe", {"patterns": ["svc.#"], "passive": True})
    asker = raw()
    asker.connect("asker")
    assert error_code(asker.call("request", {"topic": "svc.add", "payload": [1, 2]})) == -32003
    assert logger.next_message(topic="svc.add")["payload"] == [1, 2]
    # A responder makes the same request answerable; the passive one still sees it.
    service = raw()
    service.connect("service")
    service.subscribe("svc.add")
    asker.send(asker.request_obj("request", {"topic": "svc.add", "payload": [3, 4]}, id=7))
    question = service.next_message(topic="svc.add")
    service.publish(question["reply_to"], 7)
    assert asker.wait_response(7)["result"] == 7
    assert logger.next_message(topic="svc.add")["payload"] == [3, 4]


def test_no_local_subscriptions_skip_their_own_publishes(raw):
    me = raw()
    me.connect("me")
    me.result("subscribe", {"patterns": ["chat.*"], "no_local": True})
    other = raw()
    other.connect("other")
    assert me.result("publish", {"topic": "chat.room", "payload": "mine"})["recipients"] == 0
    other.publish("chat.room", "marker")
    assert me.next_message(topic="chat.room")["payload"] == "marker"


def test_flags_belong_to_plain_subscriptions(raw):
    client = raw()
    client.connect("c")
    response = client.call("subscribe", {"patterns": ["a"], "queue": "q", "no_local": True})
    assert error_code(response) == -32602
