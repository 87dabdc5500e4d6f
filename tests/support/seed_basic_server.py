"""Seed 000's "Basic Server", as written: a broker on localhost:15234 until Ctrl-C.

The tests run it to show that the library serves the seed's program unchanged (on
Ctrl-C, Python 3.11's asyncio cancels ``main()`` instead of raising
``KeyboardInterrupt`` in it, so this program ends with a traceback; the broker still
stops gracefully at interpreter exit). ``examples/basic_server.py`` is the program to
copy.
"""

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
