"""Starting and stopping the processes of a benchmark run: the broker under test (ours
or nats-server) and the client roles. Every read from a process has a timeout, and a
`ProcessGroup` stops everything it started, also when the run fails or is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.common import RoleArgs

REPO_ROOT = Path(__file__).resolve().parent.parent
PEERS = ("ours", "nats")
STOP_GRACE = 10.0
"""Seconds a process gets to exit after SIGTERM before it is killed."""
START_TIMEOUT = 30.0
"""Seconds a broker gets to start listening."""


class BenchError(Exception):
    """A workload run failed; the message says where, for the report's failure rows."""


class Child:
    """A started process: its stdout is read line by line, its stderr goes to a file."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, stderr: Path) -> None:
        self.name = name
        self.process = process
        self.stderr = stderr

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr_tail(self, lines: int = 5) -> str:
        try:
            text = self.stderr.read_text(errors="replace").strip()
        except OSError:
            return ""
        return " | ".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> BenchError:
        tail = self.stderr_tail()
        return BenchError(f"{self.name}: {what}" + (f" (stderr: {tail})" if tail else ""))

    async def read_line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            raise self.failure(f"nothing on stdout within {timeout:g} s") from None
        if not line:
            await asyncio.sleep(0.1)  # let a crashed process finish writing its stderr
            raise self.failure(f"exited (code {self.process.returncode}) without answering")
        return line.decode(errors="replace").strip()

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """Waits for the role's next event, which must be `event`."""
        line = await self.read_line(timeout)
        try:
            message = json.loads(line)
        except ValueError:
            raise self.failure(f"unexpected output {line[:200]!r}") from None
        if message.get("event") == "error":
            raise self.failure(str(message.get("error")))
        if message.get("event") != event:
            raise self.failure(f"expected {event!r}, got {line[:200]!r}")
        return dict(message)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after `STOP_GRACE` seconds."""
        if self.process.returncode is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_GRACE)
        except asyncio.TimeoutError:
            self._signal(signal.SIGKILL)
            await self.process.wait()

    def _signal(self, number: int) -> None:
        # Not Process.terminate(): Popen.send_signal() polls first, which can reap a
        # child that has just exited before asyncio's child watcher does (which then
        # logs "Unknown child process"). A zombie keeps its pid until the watcher reaps it.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, number)


class ProcessGroup:
    """Starts processes (logs in `workdir`) and stops them all, newest first, on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []

    async def __aenter__(self) -> ProcessGroup:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_all()

    async def spawn(self, name: str, argv: list[str]) -> Child:
        slug = re.sub(r"\W+", "_", name)
        stderr_path = self.workdir / f"{len(self.children):02d}-{slug}.log"
        with stderr_path.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=REPO_ROOT,
            )
        child = Child(name, process, stderr_path)
        self.children.append(child)
        return child

    async def stop_all(self) -> None:
        """Stops every process, newest first. A cancelled run (a timeout, Ctrl-C) still
        waits for each to be gone, then is cancelled."""
        cancelled = False
        while self.children:
            stopping = asyncio.ensure_future(self.children.pop().stop())
            while not stopping.done():  # ends within STOP_GRACE and a kill
                try:
                    await asyncio.shield(stopping)
                except asyncio.CancelledError:
                    cancelled = True
        if cancelled:
            raise asyncio.CancelledError


@dataclass
class Server:
    """A running broker under test."""

    peer: str
    child: Child
    host: str
    port: int
    version: str

    @property
    def pid(self) -> int:
        return self.child.pid


async def start_server(
    group: ProcessGroup, peer: str, *, max_connections: int | None = None, durable: bool = False
) -> Server:
    """Starts a broker bound to 127.0.0.1 on a free port. `max_connections` raises our
    broker's limit (default 100); nats-server's default (64K) is already enough.
    `durable` gives it a store in the work directory: our `--data-dir`, JetStream's
    file storage (`-js -sd`)."""
    if peer == "ours":
        return await _start_ours(group, max_connections, durable)
    if peer == "nats":
        return await _start_nats(group, durable)
    raise ValueError(f"unknown peer {peer!r}")


BENCH_MAX_QUEUE_SIZE = 1_000_000
"""Our broker's `max_queue_size` in the benchmarks (see `_start_ours`)."""


async def _start_ours(group: ProcessGroup, max_connections: int | None, durable: bool) -> Server:
    argv = [sys.executable, "-m", "message_broker"]
    argv += ["--host", "127.0.0.1", "--port", "0", "--log-level", "warning"]
    if durable:
        argv += ["--data-dir", str(group.workdir / "data")]
    # A subscriber's backlog bounded by bytes only (64 MiB, our default), as
    # nats-server bounds it (max_pending, 64 MB): our default count bound (10,000
    # messages) would drop where NATS keeps.
    settings = [f"max_queue_size = {BENCH_MAX_QUEUE_SIZE}"]
    if max_connections is not None:
        settings.append(f"max_connections = {max_connections}")
    config = group.workdir / "broker.toml"
    config.write_text("\n".join(settings) + "\n")
    argv += ["--config", str(config)]
    child = await group.spawn("broker", argv)
    line = await child.read_line(START_TIMEOUT)
    match = re.fullmatch(r"message-broker (\S+) listening on (\S+):(\d+)", line)
    if match is None:
        raise BenchError(f"broker: unexpected first line {line!r}")
    return Server("ours", child, match[2], int(match[3]), match[1])


async def _start_nats(group: ProcessGroup, durable: bool) -> Server:
    executable = nats_server_path()
    if executable is None:
        raise BenchError("nats-server is not installed (apt-get install -y nats-server)")
    # JetStream only for the durable workload. Port -1 picks a free port, written to a ports file.
    argv = [executable, "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir", str(group.workdir)]
    if durable:
        argv += ["-js", "-sd", str(group.workdir / "jetstream")]
    child = await group.spawn("nats-server", argv)
    ports_file = group.workdir / f"nats-server_{child.pid}.ports"
    url = await _wait_for_ports_file(child, ports_file)
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    return Server("nats", child, host, int(port), nats_server_version(executable))


async def _wait_for_ports_file(child: Child, path: Path) -> str:
    """The client URL from nats-server's ports file, once the server has written it."""
    for _ in range(int(START_TIMEOUT / 0.05)):
        if child.process.returncode is not None:
            raise child.failure(f"exited with code {child.process.returncode}")
        try:
            return str(json.loads(path.read_text())["nats"][0])
        except (OSError, ValueError, KeyError, IndexError):  # not there or half written yet
            await asyncio.sleep(0.05)
    raise child.failure(f"wrote no ports file within {START_TIMEOUT:g} s")


def nats_server_path() -> str | None:
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if Path(p).exists()), None
    )


@functools.lru_cache
def nats_server_version(executable: str) -> str:
    output = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    return output.strip().rsplit("v", 1)[-1] or "unknown"


async def spawn_role(group: ProcessGroup, peer: str, role: str, args: RoleArgs, name: str) -> Child:
    """Starts a client role process (`python -m bench role PEER ROLE ARGS`)."""
    argv = [sys.executable, "-m", "bench", "role", peer, role, args.to_json()]
    return await group.spawn(name, argv)
