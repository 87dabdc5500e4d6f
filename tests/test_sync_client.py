"""SyncBrokerClient: the broker without asyncio, from several threads at once."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading

import pytest

from message_broker import URL_ENV, Message, NoRespondersError, NotConnectedError
from message_broker.sync import SyncBrokerClient

from support.readme import readme_blocks

WAIT = 10


@pytest.fixture
def make(broker):
    clients: list[SyncBrokerClient] = []

    def make_client(client_id: str, **options) -> SyncBrokerClient:
        client = SyncBrokerClient(client_id, "127.0.0.1", broker.port, **options)
        assert client.connect()
        clients.append(client)
        return client

    yield make_client
    for client in clients:
        client.disconnect()


def client_threads(client_id: str) -> list[str]:
    return sorted(
        t.name for t in threading.enumerate() if t.name.startswith(f"message-broker-{client_id}")
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_publish_subscribe_and_request_without_asyncio(make):
    client = make("c")
    responder = make("responder")
    responder.subscribe("math.double", lambda msg: msg.payload * 2)
    assert client.request("math.double", 21, timeout=5) == 42
    got: list[Message] = []
    arrived = threading.Event()
    client.subscribe("jobs.*", lambda msg: (got.append(msg), arrived.set()))
    message_id = responder.publish("jobs.done", {"n": 1}, headers={"trace": "1"})
    assert arrived.wait(WAIT)
    assert (got[0].id, got[0].payload, got[0].headers) == (message_id, {"n": 1}, {"trace": "1"})
    assert client.is_connected and client.url.startswith("tcp://127.0.0.1:")
    with pytest.raises(NoRespondersError):
        client.request("nobody.home", {}, timeout=5)
    assert repr(client) == f"<SyncBrokerClient 'c' {client.url} connected>"


def test_callbacks_run_in_order_on_the_clients_callback_thread(make):
    client = make("c")
    seen: list[tuple[int, str]] = []
    done = threading.Event()

    def record(msg: Message) -> None:
        seen.append((msg.payload, threading.current_thread().name))
        if msg.payload == 499:
            done.set()

    client.subscribe("jobs.*", record)
    for n in range(500):
        client.publish("jobs.n", n)
    assert done.wait(WAIT)
    assert [n for n, _ in seen] == list(range(500))
    assert {name for _, name in seen} == {"message-broker-c-callbacks"}
    assert client_threads("c") == ["message-broker-c", "message-broker-c-callbacks"]


def test_a_callback_may_request_and_its_return_value_answers(make):
    service = make("service")
    other = make("other")
    other.subscribe("math.double", lambda msg: msg.payload * 2)
    # The callback waits for another client's answer while the connection goes on.
    service.subscribe("math.quadruple", lambda msg: service.request("math.double", msg.payload * 2))
    assert other.request("math.quadruple", 5, timeout=5) == 20


def test_several_threads_publish_at_once_each_in_order(make):
    receiver = make("receiver")
    publisher = make("publisher")
    per_thread: dict[int, list[int]] = {t: [] for t in range(4)}
    done = threading.Event()
    total = [0]

    def record(msg: Message) -> None:
        per_thread[msg.payload["t"]].append(msg.payload["n"])
        total[0] += 1
        if total[0] == 4 * 300:
            done.set()

    receiver.subscribe("load.*", record)

    def publish(thread: int) -> None:
        for n in range(300):
            publisher.publish("load.x", {"t": thread, "n": n}, qos=1 if n % 50 == 0 else 0)

    threads = [threading.Thread(target=publish, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert done.wait(WAIT)
    assert all(received == list(range(300)) for received in per_thread.values())


def test_queue_callbacks_acknowledge_or_give_back(make, broker):
    consumer = make("consumer")
    publisher = make("publisher")
    attempts: list[int] = []
    done = threading.Event()

    def flaky(msg: Message) -> None:
        attempts.append(msg.delivery_count)
        if msg.delivery_count == 1:
            raise RuntimeError("first try fails")
        done.set()

    consumer.subscribe("work.*", flaky, queue="work")
    publisher.publish("work.a", 1)
    assert done.wait(WAIT)
    assert attempts == [1, 2], "given back when it raised, acknowledged when it returned"


def test_coroutine_callbacks_are_refused():
    client = SyncBrokerClient("c", "127.0.0.1", free_port())

    async def handler(msg: Message) -> None:
        await asyncio.sleep(0)

    with pytest.raises(NotConnectedError, match="connect"):
        client.subscribe("jobs.*", lambda _: None)
    with pytest.raises(TypeError, match="plain functions"):
        client.subscribe("jobs.*", handler)
    with pytest.raises(TypeError, match="on_error must be callable"):
        SyncBrokerClient("c", on_error="not callable")


def test_no_broker_no_threads_left():
    port = free_port()
    client = SyncBrokerClient("lonely", "127.0.0.1", port, connect_retries=0)
    assert client.connect() is False
    assert client_threads("lonely") == []
    with pytest.raises(NotConnectedError, match="cannot connect"), client:
        pass
    assert client_threads("lonely") == []
    with pytest.raises(NotConnectedError):
        client.publish("t", 1)


def test_context_manager_and_disconnect_from_a_callback(broker):
    with SyncBrokerClient("c", "127.0.0.1", broker.port) as client:
        gone = threading.Event()

        def leave(_: Message) -> None:
            client.disconnect()
            gone.set()

        client.subscribe("leave", leave)
        client.publish("leave")
        assert gone.wait(WAIT)
        assert not client.is_connected
    assert client_threads("c") == []
    # The client connects again afterwards.
    assert client.connect()
    client.disconnect()


def test_callback_errors_are_logged_and_delivery_goes_on(make, caplog):
    client = make("c")
    got: list[int] = []
    done = threading.Event()

    def sometimes(msg: Message) -> None:
        if msg.payload == 0:
            raise ValueError("boom")
        got.append(msg.payload)
        done.set()

    client.subscribe("jobs.*", sometimes)
    client.publish("jobs.n", 0)
    client.publish("jobs.n", 1)
    assert done.wait(WAIT)
    assert got == [1]
    failures = [r for r in caplog.records if "sometimes" in r.getMessage()]
    assert len(failures) == 1 and isinstance(failures[0].exc_info[1], ValueError)


def test_the_readme_example_runs_as_written(broker):
    (example,) = readme_blocks("### The synchronous client", "python")
    env = {**os.environ, URL_ENV: f"127.0.0.1:{broker.port}"}
    result = subprocess.run(
        [sys.executable, "-c", example], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["42", "{'id': 1}"]
