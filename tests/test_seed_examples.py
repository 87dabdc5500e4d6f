"""Seed 000's Python examples, as written (default host and port)."""

import asyncio

import pytest

from message_broker import BrokerClient, MessageBroker


@pytest.fixture
async def broker():
    broker = MessageBroker()
    await broker.start()
    yield broker
    await broker.stop()


async def test_pub_sub(broker):
    client = BrokerClient("test")
    await client.connect()
    received = []
    await client.subscribe(["test.*"], lambda m: received.append(m))
    await client.publish("test.msg", {"data": "hello"})
    await asyncio.sleep(0.1)
    assert received[0].payload["data"] == "hello"


async def test_python_async_client_example(broker, capsys):
    running_scripts = {"saw1"}

    # The service side of the seed's Request/Response (RPC) example.
    service = BrokerClient("scripts_service")
    await service.connect()

    async def handle_request(msg):
        script_id = msg.payload.get("script_id", msg.payload.get("id"))
        return {"running": script_id in running_scripts}

    await service.subscribe(["scripts.status"], handle_request)

    # The seed's "Python Async Client" example.
    client = BrokerClient("my_app", host="localhost", port=15234)
    await client.connect()

    async def handler(msg):
        print(f"{msg.topic}: {msg.payload}")

    await client.subscribe(["jobs.*", "scripts.+"], handler)
    await client.publish("jobs.activated", {"job_id": "123"})
    response = await client.request("scripts.status", {"id": "saw1"}, timeout=5.0)
    assert response == {"running": True}
    response = await client.request("scripts.status", {"script_id": "saw1"}, timeout=5.0)
    assert response == {"running": True}

    # Debug tools: broker status through a request.
    status = await client.request("status", {})
    assert status["client_count"] == 2
    print(f"Clients: {status['client_count']}")

    await client.disconnect()
    await service.disconnect()
    out = capsys.readouterr().out
    assert "jobs.activated: {'job_id': '123'}" in out
    # The request on scripts.status also matched "scripts.+".
    assert "scripts.status: {'id': 'saw1'}" in out
    assert "Clients: 2" in out


async def test_client_properties(broker):
    client = BrokerClient("props")
    assert client.client_id == "props"
    assert client.is_connected is False
    assert await client.connect() is True
    assert client.is_connected is True
    assert await client.subscribe(["a.*"], print) == ["a.*"]
    assert await client.unsubscribe(["a.*"]) == ["a.*"]
    message_id = await client.publish("a.b", {"x": 1}, qos=0, ttl=0)
    assert isinstance(message_id, str) and message_id
    await client.disconnect()
    assert client.is_connected is False
