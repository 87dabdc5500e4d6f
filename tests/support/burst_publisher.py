"""Publishes N numbered messages as fast as it can, from its own process (so that its
work never competes with the process under test for the GIL).

    python -m support.burst_publisher PORT TOPIC COUNT [TEXT_SIZE]    (from tests/)

Each payload is ``{"n": n, "text": "xxx..."}``, with TEXT_SIZE characters of text
(60 unless told).
"""

import sys

from support.wire import RawClient


def main() -> None:
    port, topic, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    text = "x" * (int(sys.argv[4]) if len(sys.argv) > 4 else 60)
    with RawClient(port) as pub:
        pub.connect(f"burst-{topic}")
        batch = []
        for n in range(count):
            batch.append(
                {
                    "jsonrpc": "2.0",
                    "method": "publish",
                    "params": {"topic": topic, "payload": {"n": n, "text": text}},
                }
            )
            # A batch is one frame: well under the broker's max_message_size.
            if len(batch) == 500 or len(batch) * len(text) >= 512 * 1024:
                pub.send(batch)
                batch = []
        if batch:
            pub.send(batch)
        pub.result("ping", timeout=60)


if __name__ == "__main__":
    main()
