"""BrokerChannelLayer across processes: one Django project (tests/django_app) served by
Daphne and by uvicorn at once, each on a port of its own on 127.0.0.1, both on one
broker. A message a client sends on one server reaches a client of the other, and a
third process's async_to_sync(group_send) reaches both."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from message_broker import MessageBroker

from support import TESTS

PATIENCE = 20.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def project_env(broker: MessageBroker) -> dict[str, str]:
    import message_broker

    paths = [str(TESTS), str(Path(message_broker.__file__).parent.parent)]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "DJANGO_SETTINGS_MODULE": "django_app.settings",
        "MESSAGE_BROKER_PORT": str(broker.port),
    }


@contextlib.contextmanager
def serving(command: list[str], port: int, env: dict[str, str], log: Path) -> Iterator[None]:
    """Runs a server until the block ends; waits until it accepts connections."""
    with log.open("w") as output:
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + PATIENCE
        while True:
            assert server.poll() is None, f"{command[2]} exited: {log.read_text()}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            assert time.monotonic() < deadline, f"{command[2]} did not listen: {log.read_text()}"
            time.sleep(0.1)
        yield
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


async def next_event(client: ClientConnection) -> dict:
    return json.loads(await asyncio.wait_for(client.recv(), PATIENCE))


async def test_daphne_and_uvicorn_share_groups_and_channels_through_the_broker(broker, tmp_path):
    env = project_env(broker)
    daphne_port, uvicorn_port = free_port(), free_port()
    application = "django_app.asgi:application"
    daphne = [
        sys.executable,
        "-m",
        "daphne",
        "-b",
        "127.0.0.1",
        "-p",
        str(daphne_port),
        application,
    ]
    uvicorn = [
        sys.executable,
        "-m",
        "uvicorn",
        application,
        "--host",
        "127.0.0.1",
        "--port",
        str(uvicorn_port),
        "--lifespan",
        "off",
    ]
    with (
        serving(daphne, daphne_port, env, tmp_path / "daphne.log"),
        serving(uvicorn, uvicorn_port, env, tmp_path / "uvicorn.log"),
    ):
        async with (
            connect(f"ws://127.0.0.1:{daphne_port}/ws/") as on_daphne,
            connect(f"ws://127.0.0.1:{uvicorn_port}/ws/") as on_uvicorn,
        ):
            daphne_channel = (await next_event(on_daphne))["joined"]
            uvicorn_channel = (await next_event(on_uvicorn))["joined"]
            assert daphne_channel.split("!")[0] != uvicorn_channel.split("!")[0], "two processes"

            await on_daphne.send("say hello from daphne")
            assert await next_event(on_uvicorn) == {"text": "hello from daphne"}
            assert await next_event(on_daphne) == {"text": "hello from daphne"}

            await on_uvicorn.send(f"to {daphne_channel} only for the daphne client")
            assert await next_event(on_daphne) == {"text": "only for the daphne client"}

            third = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "django_app.group_send", "from a third process"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert third.returncode == 0, third.stdout + third.stderr
            assert await next_event(on_daphne) == {"text": "from a third process"}
            # The direct message went to the daphne client alone: the uvicorn client's
            # next event is the group's.
            assert await next_event(on_uvicorn) == {"text": "from a third process"}
