"""A first program: a broker in this process, and a client that subscribes, publishes
and asks a question.

    python examples/hello.py [--port PORT]

The default port 0 picks a free one, so it runs beside a broker you already have.
"""

from __future__ import annotations

import argparse
import asyncio

from message_broker import BrokerClient, BrokerConfig, Message, MessageBroker


async def main(port: int) -> None:
    async with MessageBroker(BrokerConfig(host="127.0.0.1", port=port)) as broker:
        assert broker.port is not None
        async with BrokerClient("hello", "127.0.0.1", broker.port) as client:
            greeted: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

            def on_greeting(msg: Message) -> None:
                if not greeted.done():
                    greeted.set_result(msg)

            await client.subscribe(["greetings.*"], on_greeting)
            # A subscriber answers a request by returning a value.
            await client.subscribe(["math.double"], lambda msg: msg.payload * 2)
            await client.publish("greetings.world", {"text": "hello"})
            message = await asyncio.wait_for(greeted, 5)
            print(f"{message.topic}: {message.payload}")
            print("21 doubled is", await client.request("math.double", 21, timeout=5))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: any free one)")
    asyncio.run(main(parser.parse_args().port))
