"""Uses a Channels layer, forks, and uses the same layer object in the child, as a
server that forks its workers would: prints ``parent-ok``, ``child-ok`` (from the
child) and ``child-exit-<code>``. Run as ``python -m support.channels_fork_child PORT``."""

from __future__ import annotations

import asyncio
import os
import sys
import traceback

from message_broker.channels_layer import BrokerChannelLayer


def main() -> None:
    port = int(sys.argv[1])
    layer = BrokerChannelLayer(host="127.0.0.1", port=port, prefix=f"fork-{os.getpid()}")

    async def round_trip(tag: str) -> None:
        channel = await layer.new_channel()
        await layer.group_add("everyone", channel)
        await layer.group_send("everyone", {"type": tag})
        message = await asyncio.wait_for(layer.receive(channel), 10)
        assert message == {"type": tag}, message
        await layer.group_discard("everyone", channel)

    asyncio.run(round_trip("parent"))
    print("parent-ok", flush=True)
    parent_prefix = layer.client_prefix
    pid = os.fork()
    if pid == 0:
        try:
            asyncio.run(round_trip("child"))
            assert layer.client_prefix != parent_prefix, "the child has channels of its own"
            print("child-ok", flush=True)
        except BaseException:
            traceback.print_exc()
            sys.stdout.flush()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print(f"child-exit-{os.waitstatus_to_exitcode(status)}", flush=True)
    asyncio.run(layer.flush())


if __name__ == "__main__":
    main()
