"""The broker as a separate process (`python -m message_broker`), for tests that kill,
restart or measure it."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

from message_broker import BrokerClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrokerProcess:
    """`python -m message_broker` on a fixed port and data_dir, killed and restarted."""

    def __init__(self, port: int, data_dir: Path, log: Path, config: Path | None = None) -> None:
        self.port, self.data_dir, self.log = port, data_dir, log
        self.args = [
            sys.executable,
            "-m",
            "message_broker",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            *(["--config", str(config)] if config else []),
            "--log-level",
            "WARNING",
        ]
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.args, stdout=asyncio.subprocess.PIPE, stderr=log
            )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        assert b"listening" in line, (line, self.log.read_text())
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.process.wait(), 10)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except asyncio.TimeoutError:
                await self.kill()


def reconnecting_client(client_id: str, port: int) -> BrokerClient:
    """A client that rides out broker restarts quickly."""
    return BrokerClient(
        client_id,
        host="127.0.0.1",
        port=port,
        reconnect_delay=0.02,
        max_reconnect_delay=0.2,
        connect_retries=50,
    )
