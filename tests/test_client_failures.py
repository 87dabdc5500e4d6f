"""How BrokerClient fails: every error typed, at once, and saying why.

Request timeouts carry the broker's own message, oversized requests are refused at the
call, a responder's failure reaches its requester at once, a failed connect leaves a
client that can connect again, and the constructor refuses wrong arguments.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import socket
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import pytest

from message_broker import (
    ERROR_CODES,
    BrokerClient,
    BrokerConfig,
    ConnectionLostError,
    InvalidMessageError,
    Message,
    MessageBroker,
    NotConnectedError,
    OutgoingQueueFullError,
    RequestTimeoutError,
    ResponderError,
)

from support.readme import readme_blocks
from support.waiting import eventually
from support.wire import error_code


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def elapsed_since(started: float) -> float:
    return asyncio.get_running_loop().time() - started


def now() -> float:
    return asyncio.get_running_loop().time()


# -- request timeouts ---------------------------------------------------------------------


async def test_a_request_timeout_raises_the_brokers_own_message(make_client):
    silent = await make_client("silent")
    client = await make_client("client")
    arrived: list[Message] = []
    await silent.subscribe("slow.q", arrived.append)  # receives, never answers
    started = now()
    with pytest.raises(RequestTimeoutError) as caught:
        await client.request("slow.q", {}, timeout=1)
    # The broker's answer at 1 s, not the client's own after its grace period.
    assert elapsed_since(started) < 4
    error = caught.value
    assert "request timed out" in str(error) and "slow.q" in str(error), str(error)
    assert error.code == ERROR_CODES["TIMEOUT"]
    assert error.__context__ is None and error.__cause__ is None
    assert arrived


def connect_answer(call: dict[str, Any]) -> bytes:
    """A fake broker's framed answer accepting a client's `connect` call."""
    accepted = {
        "client_id": call["params"]["client_id"],
        "heartbeat_interval": 5.0,
        "heartbeat_timeout": 30.0,
        "max_message_size": 1 << 20,
    }
    body = json.dumps({"jsonrpc": "2.0", "result": accepted, "id": call["id"]})
    return len(body).to_bytes(4, "big") + body.encode()


@pytest.fixture
async def mute_broker() -> AsyncIterator[int]:
    """A server that accepts a client's connect and then never answers anything."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = int.from_bytes(await reader.readexactly(4), "big")
                call = json.loads(await reader.readexactly(length))
                if call.get("method") == "connect":
                    writer.write(connect_answer(call))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_broker_that_never_answers_a_request_gets_a_clear_timeout(mute_broker):
    client = BrokerClient("asker", host="127.0.0.1", port=mute_broker, heartbeat=False)
    assert await client.connect()
    try:
        with pytest.raises(RequestTimeoutError) as caught:
            await client.request("anything", {}, timeout=0.2)
        message = str(caught.value)
        assert message.startswith("no answer from the broker to the request on 'anything'")
        assert "0.2 s" in message, message
        assert caught.value.__context__ is None
    finally:
        await client.disconnect()


# -- requests over the size limit ---------------------------------------------------------


async def test_a_request_over_max_message_size_is_refused_at_once(start_broker):
    broker = start_broker(max_message_size=4096)
    service = BrokerClient("svc", host="127.0.0.1", port=broker.port)
    client = BrokerClient("client", host="127.0.0.1", port=broker.port)
    assert await service.connect() and await client.connect()
    await service.subscribe("echo", lambda msg: len(msg.payload))
    started = now()
    with pytest.raises(InvalidMessageError, match="max_message_size of 4096 bytes"):
        await client.request("echo", "x" * 5000, timeout=30)
    with pytest.raises(InvalidMessageError, match="max_message_size"):
        await client.request("echo", "x" * 1000, timeout=30, headers={"h": "y" * 3500})
    assert elapsed_since(started) < 2
    # The same payload is refused by publish too, and a request that fits goes through.
    with pytest.raises(InvalidMessageError, match="max_message_size"):
        await client.publish("echo", "x" * 5000)
    assert await client.request("echo", "x" * 1000) == 1000
    await client.disconnect()
    await service.disconnect()


# -- a responder's failure ----------------------------------------------------------------


async def test_a_responder_that_raises_fails_the_request_at_once(make_client):
    service = await make_client("svc")
    client = await make_client("client")

    def divide(msg: Message) -> float:
        return msg.payload["a"] / msg.payload["b"]

    async def lookup(msg: Message) -> str:
        await asyncio.sleep(0)
        raise KeyError(msg.payload)

    await service.subscribe("math.divide", divide)
    await service.subscribe("db.lookup", lookup)
    assert await client.request("math.divide", {"a": 6, "b": 3}) == 2
    started = now()
    with pytest.raises(ResponderError) as caught:
        await client.request("math.divide", {"a": 1, "b": 0}, timeout=30)
    error = caught.value
    assert (error.code, error.error_type, error.responder) == (-32015, "ZeroDivisionError", "svc")
    assert error.error_message == "division by zero"
    assert str(error) == 'the responder "svc" failed: ZeroDivisionError: division by zero'
    with pytest.raises(ResponderError) as caught:
        await client.request("db.lookup", "nobody", timeout=30)
    assert (caught.value.error_type, caught.value.error_message) == ("KeyError", "'nobody'")
    assert elapsed_since(started) < 10
    # The responder goes on answering.
    assert await client.request("math.divide", {"a": 1, "b": 4}) == 0.25


async def test_a_failure_in_a_queue_group_is_answered_and_not_redelivered(make_client, broker):
    workers = [await make_client(f"worker{n}") for n in range(2)]
    client = await make_client("client")
    calls: list[str] = []

    def work(msg: Message) -> str:
        calls.append(msg.payload)
        if msg.payload == "bad":
            raise ValueError("cannot do that")
        return msg.payload.upper()

    for worker in workers:
        await worker.subscribe("jobs.run", work, queue="runners")
    with pytest.raises(ResponderError, match="cannot do that"):
        await client.request("jobs.run", "bad", timeout=30)
    assert await client.request("jobs.run", "good", timeout=30) == "GOOD"
    await eventually(lambda: queue_status(broker, "runners")["acked"] == 2)
    queue = queue_status(broker, "runners")
    assert (queue["redelivered"], queue["depth"], queue["in_flight"]) == (0, 0, 0)
    assert calls == ["bad", "good"]


def queue_status(broker: MessageBroker, name: str) -> dict[str, Any]:
    (queue,) = [q for q in broker.status()["queues"] if q["name"] == name]
    return queue


async def test_a_passive_or_outvoted_failure_does_not_answer(make_client):
    monitor = await make_client("monitor")
    service = await make_client("svc")
    client = await make_client("client")

    def broken(msg: Message) -> None:
        raise RuntimeError("the monitor is broken")

    await monitor.subscribe("svc.#", broken, passive=True)
    await service.subscribe("svc.hello", broken)
    await service.subscribe("svc.hello", lambda msg: f"hello {msg.payload}")
    # The passive monitor never answers; of the service's two callbacks, the one that
    # answers wins over the one that raised on the same delivery.
    assert await client.request("svc.hello", "you", timeout=30) == "hello you"


async def test_respond_answers_explicitly_once(make_client):
    service = await make_client("svc")
    client = await make_client("client")
    refusals: list[Exception] = []

    def answer_none(msg: Message) -> str:
        assert not msg.responded
        msg.respond(None)
        assert msg.responded
        try:
            msg.respond("again")
        except RuntimeError as error:
            refusals.append(error)
        return "ignored: answered already"

    async def answer_early(msg: Message) -> str:
        msg.respond({"early": True})
        await asyncio.sleep(0)
        return "late"

    def answer_unencodable(msg: Message) -> str:
        try:
            msg.respond({1, 2})
        except InvalidMessageError as error:
            refusals.append(error)
        return "fallback"

    await service.subscribe("svc.none", answer_none)
    await service.subscribe("svc.early", answer_early)
    await service.subscribe("svc.set", answer_unencodable)
    assert await client.request("svc.none", {}) is None
    assert await client.request("svc.early", {}) == {"early": True}
    assert await client.request("svc.set", {}) == "fallback"
    assert "answered already" in str(refusals[0])
    assert isinstance(refusals[1], InvalidMessageError)


async def test_respond_to_a_message_that_is_not_a_request_raises(make_client):
    client = await make_client("c")
    refusals: list[Exception] = []

    def respond(msg: Message) -> None:
        try:
            msg.respond(1)
        except RuntimeError as error:
            refusals.append(error)

    await client.subscribe("plain", respond)
    await client.publish("plain", "no reply_to")
    await eventually(lambda: refusals)
    assert "not a request" in str(refusals[0])
    made_by_hand = Message("t", 1, "me", "id-1", reply_to="_internal.reply.1.ab")
    with pytest.raises(RuntimeError, match="not delivered by a client"):
        made_by_hand.respond(2)


async def test_a_long_failure_message_is_cut(make_client):
    service = await make_client("svc")
    client = await make_client("client")

    def fail(msg: Message) -> None:
        raise ValueError("é" * 10_000)

    await service.subscribe("svc.verbose", fail)
    with pytest.raises(ResponderError) as caught:
        await client.request("svc.verbose", {})
    assert 0 < len(caught.value.error_message.encode()) <= 4096
    assert set(caught.value.error_message) == {"é"}


async def test_the_readme_responder_error_example_runs_as_written(make_client, capsys):
    (snippet,) = [
        block
        for block in readme_blocks("## The Python client", "python")
        if "ResponderError" in block
    ]
    namespace = {"service": await make_client("svc"), "client": await make_client("client")}
    code = compile(
        textwrap.dedent(snippet), "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    )
    await eval(code, namespace)
    assert capsys.readouterr().out == "ZeroDivisionError division by zero\n"


def test_an_error_reply_on_the_wire(raw):
    responder, requester = raw(), raw()
    responder.connect("svc")
    requester.connect("asker")
    responder.subscribe("svc.*")
    requester.send(requester.request_obj("request", {"topic": "svc.x", "timeout": 30}, "q1"))
    reply_to = responder.next_message()["reply_to"]
    refused = responder.call(
        "publish", {"topic": "svc.y", "error": {"type": "ValueError", "message": "no"}}
    )
    assert error_code(refused) == -32602 and "reply_to" in refused["error"]["message"]
    both = {"topic": reply_to, "payload": 1, "error": {"type": "E", "message": "m"}}
    assert error_code(responder.call("publish", both)) == -32602
    responder.result(
        "publish", {"topic": reply_to, "error": {"type": "ValueError", "message": "bad input"}}
    )
    response = requester.wait_response("q1")
    assert response["error"]["code"] == -32015
    assert response["error"]["data"] == {
        "name": "RESPONDER_ERROR",
        "type": "ValueError",
        "message": "bad input",
        "responder": "svc",
    }


# -- connecting ---------------------------------------------------------------------------


async def test_after_a_failed_connect_the_client_says_why_and_connects_again(caplog):
    port = free_port()
    client = BrokerClient("early", host="127.0.0.1", port=port, connect_retries=0)
    with caplog.at_level(logging.WARNING, logger="message_broker.client"):
        assert await client.connect() is False
        with pytest.raises(NotConnectedError) as caught:
            await client.publish("t", 1)
        assert "cannot connect" in str(caught.value), str(caught.value)
        assert "call connect() again" in str(caught.value)
        assert await client.connect() is False
    failures = [r for r in caplog.records if "could not connect" in r.getMessage()]
    assert len(failures) == 2, "the second connect() tried again"
    broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=port))
    broker.start_sync()
    try:
        assert await client.connect() is True
        await client.publish("t", 1)
        await client.disconnect()
    finally:
        await broker.stop()


async def test_connect_can_wait_for_a_broker_that_starts_later():
    port = free_port()
    # Without wait, this client would give up at its first refused attempt.
    client = BrokerClient(
        "patient", host="127.0.0.1", port=port, connect_retries=0, reconnect_delay=0.05
    )
    connecting = asyncio.ensure_future(client.connect(wait=20))
    await asyncio.sleep(0.5)  # the broker comes after several refused attempts
    broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=port))
    broker.start_sync()
    try:
        assert await asyncio.wait_for(connecting, 20) is True
        await client.disconnect()
    finally:
        await broker.stop()


async def test_connect_wait_gives_up_when_the_time_is_up():
    client = BrokerClient("impatient", host="127.0.0.1", port=free_port(), connect_retries=0)
    started = now()
    assert await client.connect(wait=1) is False
    assert 0.9 <= elapsed_since(started) < 5
    with pytest.raises(ValueError, match="wait"):
        await client.connect(wait=0)
    with pytest.raises(TypeError, match="wait"):
        await client.connect(wait="5")  # type: ignore[arg-type]


async def test_async_with_says_why_it_cannot_connect():
    client = BrokerClient("ctx", host="127.0.0.1", port=free_port(), connect_retries=0)
    with pytest.raises(NotConnectedError, match=r"cannot connect to the broker at .*: cannot"):
        async with client:
            pass


async def test_a_client_taken_over_says_so(make_client, caplog):
    first = await make_client("same-id")
    silent = await make_client("silent")
    arrived: list[Message] = []
    await silent.subscribe("slow", arrived.append)
    pending = asyncio.ensure_future(first.request("slow", {}, timeout=30))
    await eventually(lambda: arrived)
    with caplog.at_level(logging.INFO, logger="message_broker.client"):
        second = await make_client("same-id")
        with pytest.raises(ConnectionLostError, match="taken over by another connection"):
            await pending
        await eventually(lambda: not first.is_connected)
    with pytest.raises(NotConnectedError, match="taken over by another connection with this"):
        await first.publish("t", 1)
    reasons = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert any("taken over by another connection with this client_id" in r for r in reasons)
    assert second.is_connected


# -- constructor arguments ----------------------------------------------------------------

BAD_ARGUMENTS = [
    ({"port": "41234"}, TypeError, "port"),
    ({"port": True}, TypeError, "port"),
    ({"port": 1.5}, TypeError, "port"),
    ({"port": 0}, ValueError, "port"),
    ({"port": 70000}, ValueError, "port"),
    ({"host": None}, TypeError, "host"),
    ({"host": ""}, ValueError, "host"),
    ({"host": "tcp://localhost:1"}, ValueError, "url="),
    ({"host": "local host"}, ValueError, "host"),
    ({"url": 5}, TypeError, "url"),
    ({"token": 5}, TypeError, "token"),
    ({"token": ""}, ValueError, "token"),
    ({"client_type": None}, TypeError, "client_type"),
    ({"connect_timeout": 0}, ValueError, "connect_timeout"),
    ({"connect_timeout": -1}, ValueError, "connect_timeout"),
    ({"connect_timeout": float("nan")}, ValueError, "connect_timeout"),
    ({"connect_timeout": "5"}, TypeError, "connect_timeout"),
    ({"connect_retries": -1}, ValueError, "connect_retries"),
    ({"connect_retries": True}, TypeError, "connect_retries"),
    ({"reconnect": "yes"}, TypeError, "reconnect"),
    ({"reconnect_delay": 0}, ValueError, "reconnect_delay"),
    ({"max_reconnect_delay": -0.5}, ValueError, "max_reconnect_delay"),
    ({"heartbeat": 1}, TypeError, "heartbeat"),
    ({"max_pending": 0}, ValueError, "max_pending"),
    ({"max_pending": "many"}, TypeError, "max_pending"),
]


@pytest.mark.parametrize("arguments, error, named", BAD_ARGUMENTS)
def test_constructor_arguments_are_checked_at_once(arguments, error, named):
    with pytest.raises(error, match=named):
        BrokerClient("app", **arguments)


def test_good_constructor_arguments_are_accepted():
    client = BrokerClient("app", "127.0.0.1", 41234, connect_timeout=0.5, reconnect_delay=1)
    assert client.url == "tcp://127.0.0.1:41234"
    assert BrokerClient("app", url="unix:///tmp/broker.sock", token=None).url.startswith("unix")


@pytest.fixture
async def deaf_broker() -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A server that accepts a client's connect and then stops reading, so that what
    the client writes piles up in the socket and then in its outgoing queue; it hangs
    up when the event is set."""
    stop = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length = int.from_bytes(await reader.readexactly(4), "big")
        writer.write(connect_answer(json.loads(await reader.readexactly(length))))
        await stop.wait()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], stop
    finally:
        stop.set()
        server.close()
        await server.wait_closed()


async def test_publish_nowait_says_when_the_outgoing_queue_is_full(deaf_broker):
    port, hang_up = deaf_broker
    client = BrokerClient("flood", host="127.0.0.1", port=port, max_pending=4)
    assert await client.connect()
    try:
        payload = "x" * 100_000
        queued = 0
        # The kernel grows a socket's buffers as they fill, which makes room in the
        # queue again for a while: fill it until no room comes within 0.2 s.
        for _ in range(50):
            with pytest.raises(OutgoingQueueFullError, match="outgoing queue is full") as caught:
                # The socket's buffers hold a few MB; 1,000 messages are 100 MB.
                for _ in range(1000):
                    client.publish_nowait("flood", payload)
                    queued += 1
            assert isinstance(caught.value, BlockingIOError)
            await asyncio.sleep(0.2)
            try:
                client.publish_nowait("flood", payload)
            except OutgoingQueueFullError:
                break
            queued += 1
        else:
            pytest.fail("the outgoing queue never stayed full")
        assert queued >= 4
        # publish() waits for room instead: here, none comes.
        waiting = asyncio.ensure_future(client.publish("flood", payload))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        waiting.cancel()
    finally:
        hang_up.set()  # else disconnect() would wait for the queue to drain
        await client.disconnect()
