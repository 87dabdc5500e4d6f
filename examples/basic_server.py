"""Seed 000's "Basic Server", as written: a broker on localhost:15234 until Ctrl-C."""

import asyncio

from message_broker import BrokerConfig, MessageBroker


async def main():
    config = BrokerConfig(host="localhost", port=15234)
    broker = MessageBroker(config)
    await broker.start()
    try:
        while True:
            await asyncio.sleep(1)
    except KeyboardInterrupt:
        await broker.stop()


asyncio.run(main())
