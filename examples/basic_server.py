"""A broker on localhost until Ctrl-C (the basic server of the Python API, made to stop cleanly).

python examples/basic_server.py [--port PORT]      (default 15234; 0 for any free one)
"""

import argparse
import asyncio
import contextlib

from message_broker import BrokerConfig, MessageBroker


async def main(port: int) -> None:
    config = BrokerConfig(host="localhost", port=port)
    broker = MessageBroker(config)
    await broker.start()
    print(f"listening on localhost:{broker.port}; Ctrl-C stops", flush=True)
    try:
        while True:
            await asyncio.sleep(1)
    finally:
        # Ctrl-C arrives here as the cancellation of main() (asyncio.run, Python 3.11
        # and later) or as KeyboardInterrupt (3.10): either way the broker stops
        # gracefully, telling its clients.
        await broker.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Runs a broker on localhost until Ctrl-C.")
    parser.add_argument("--port", type=int, default=15234, help="TCP port (default 15234)")
    args = parser.parse_args()
    # Stopped on purpose: nothing to report.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.port))
