"""A client in its own process, for tests that kill it.

python tests/support/delivery_child.py hold PORT QUEUE   consume QUEUE and never acknowledge
python tests/support/delivery_child.py will PORT clean|crash
"""

from __future__ import annotations

import asyncio
import sys

from message_broker import BrokerClient, Message


async def hold(port: int, queue: str) -> None:
    client = BrokerClient("holder", host="127.0.0.1", port=port)
    assert await client.connect()

    async def never_done(message: Message) -> None:
        print(f"got {message.payload}", flush=True)
        await asyncio.Event().wait()

    await client.subscribe("work.*", never_done, queue=queue, durable=True, prefetch=10)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def will(port: int, mode: str) -> None:
    client = BrokerClient("willy", host="127.0.0.1", port=port)
    last_will = {"topic": "clients.willy.status", "payload": {"online": False}, "retain": True}
    assert await client.connect(will=last_will)
    await client.publish("clients.willy.status", {"online": True}, retain=True)
    print("ready", flush=True)
    if mode == "clean":
        await client.disconnect()
        print("done", flush=True)
        return
    await asyncio.Event().wait()


if __name__ == "__main__":
    command, port, arg = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    asyncio.run(hold(port, arg) if command == "hold" else will(port, arg))
