"""Where clients connect (a URL, host:port, MESSAGE_BROKER_URL) and the connection event
callbacks of the asyncio and synchronous clients (the Qt client's signals and its use
of MESSAGE_BROKER_URL are tested in test_qt_client.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

import pytest

from message_broker import (
    URL_ENV,
    AuthenticationError,
    BrokerClient,
    BrokerConfig,
    BrokerError,
    MessageBroker,
    NotConnectedError,
    PermissionDeniedError,
    broker_url,
)
from message_broker.sync import SyncBrokerClient

from support.waiting import eventually


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- where a client connects ------------------------------------------------------------


def test_broker_url_says_where_a_client_connects(monkeypatch):
    monkeypatch.delenv(URL_ENV, raising=False)
    assert broker_url() == "tcp://localhost:15234"
    assert broker_url(port=1) == "tcp://localhost:1"
    assert broker_url(host="10.0.0.2") == "tcp://10.0.0.2:15234"
    assert broker_url("broker.lan:9") == "tcp://broker.lan:9"
    assert broker_url("[::1]:9") == "tcp://[::1]:9"
    assert broker_url("unix:///run/b.sock") == "unix:///run/b.sock"
    monkeypatch.setenv(URL_ENV, "192.168.1.5:4000")
    assert broker_url() == "tcp://192.168.1.5:4000"
    assert broker_url(port=1) == "tcp://localhost:1", "an address given wins over the variable"
    assert broker_url("x:2") == "tcp://x:2"
    monkeypatch.setenv(URL_ENV, "  ")
    assert broker_url() == "tcp://localhost:15234", "an empty variable is no address"
    for bad, needle in [
        ("host:0", "port"),
        ("host:70000", "port"),
        ("::1:9", "brackets"),
        ("http://x:1", "scheme"),
        ("just-a-name", "host:port"),
    ]:
        with pytest.raises(ValueError, match=needle):
            broker_url(bad)
    monkeypatch.setenv(URL_ENV, "nowhere")
    with pytest.raises(ValueError, match=f"^{URL_ENV}: "):
        broker_url()
    with pytest.raises(ValueError, match=f"^{URL_ENV}: "):
        BrokerClient("app")


async def test_a_client_given_no_address_uses_message_broker_url(broker, monkeypatch):
    monkeypatch.setenv(URL_ENV, f"127.0.0.1:{broker.port}")
    client = BrokerClient("app")
    assert client.url == f"tcp://127.0.0.1:{broker.port}"
    assert await client.connect()
    await client.disconnect()
    # An address given in code wins over the variable.
    assert BrokerClient("app", port=1).url == "tcp://localhost:1"
    assert BrokerClient("app", host="127.0.0.2").url == "tcp://127.0.0.2:15234"


async def test_host_port_urls_connect(broker, monkeypatch):
    monkeypatch.delenv(URL_ENV, raising=False)
    async with BrokerClient("app", url=f"127.0.0.1:{broker.port}") as client:
        assert await client.request("status", {}, timeout=5)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="the local socket is a Unix socket")
def test_the_synchronous_client_uses_message_broker_url_too(start_broker, monkeypatch):
    broker = start_broker()
    monkeypatch.setenv(URL_ENV, f"unix://{broker.local_socket}")
    with SyncBrokerClient("app") as client:
        assert client.url == f"unix://{broker.local_socket}"
        assert client.request("status", {}, timeout=5)["client_count"] == 1


# -- connection event callbacks ---------------------------------------------------------


async def test_connection_events_reach_sync_and_async_callbacks():
    first = MessageBroker(BrokerConfig(host="127.0.0.1", port=0))
    port = first.start_sync()
    events: list[str] = []

    async def reconnected() -> None:
        await asyncio.sleep(0)
        events.append("reconnected")

    client = BrokerClient(
        "c",
        "127.0.0.1",
        port,
        reconnect_delay=0.05,
        on_connected=lambda: events.append("connected"),
        on_disconnected=lambda reason: events.append(f"disconnected: {reason}"),
        on_reconnected=reconnected,
    )
    assert await client.connect()
    assert events == ["connected"]
    first.stop_sync()
    await eventually(lambda: len(events) == 2)
    second = MessageBroker(BrokerConfig(host="127.0.0.1", port=port))
    second.start_sync()
    try:
        await eventually(lambda: "reconnected" in events)
        await client.disconnect()
        assert events[0] == "connected"
        assert events[1].startswith("disconnected: ")
        assert events[2:] == ["reconnected", "disconnected: client disconnect"]
    finally:
        second.stop_sync()


async def test_on_error_hears_what_no_call_raises(start_broker):
    errors: list[BrokerError] = []
    nobody = BrokerClient("c", "127.0.0.1", free_port(), connect_retries=0, on_error=errors.append)
    assert not await nobody.connect()
    assert len(errors) == 1 and isinstance(errors[0], NotConnectedError)
    assert "cannot connect to the broker at tcp://127.0.0.1:" in str(errors[0])

    guarded = start_broker(require_token=True)
    wrong = BrokerClient(
        "c", "127.0.0.1", guarded.port, token="wrong", connect_retries=0, on_error=errors.append
    )
    assert not await wrong.connect()
    assert isinstance(errors[-1], AuthenticationError)

    ruled = start_broker(permissions=[{"client": "quiet", "publish": {"allow": []}}])
    quiet = BrokerClient("quiet", "127.0.0.1", ruled.port, on_error=errors.append)
    assert await quiet.connect()
    await quiet.publish("anything", 1)  # qos=0: nobody waits for the refusal
    await eventually(lambda: isinstance(errors[-1], PermissionDeniedError))
    await quiet.disconnect()


async def test_a_failing_event_callback_is_logged_and_the_client_goes_on(broker, caplog):
    def broken() -> None:
        raise RuntimeError("broken callback")

    async def broken_later(reason: str) -> None:
        raise RuntimeError("broken coroutine")

    client = BrokerClient(
        "c", "127.0.0.1", broker.port, on_connected=broken, on_disconnected=broken_later
    )
    with caplog.at_level(logging.ERROR, logger="message_broker.client"):
        assert await client.connect()
        assert await client.request("status", {}, timeout=5)
        await client.disconnect()
        await eventually(lambda: len(caplog.records) == 2)
    assert [r.getMessage() for r in caplog.records] == [
        "the on_connected callback of client c failed",
        "the on_disconnected callback of client c failed",
    ]
    with pytest.raises(TypeError, match="on_connected must be callable"):
        BrokerClient("c", on_connected=42)


def test_the_synchronous_clients_events_run_on_its_callback_thread(broker):
    seen: list[tuple[str, str]] = []
    disconnected = threading.Event()

    def record(event: str):
        def hook(*_: object) -> None:
            seen.append((event, threading.current_thread().name))
            if event == "disconnected":
                disconnected.set()

        return hook

    client = SyncBrokerClient(
        "s",
        "127.0.0.1",
        broker.port,
        on_connected=record("connected"),
        on_disconnected=record("disconnected"),
    )
    assert client.connect()
    client.disconnect()
    assert disconnected.wait(10)
    assert seen == [
        ("connected", "message-broker-s-callbacks"),
        ("disconnected", "message-broker-s-callbacks"),
    ]
