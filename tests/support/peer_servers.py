"""Real NATS and MQTT servers for the bridge tests: started on free 127.0.0.1 ports,
waited for (bounded), and always stopped. A server can be killed and started again
on the same port (and, for JetStream, the same store)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from support.peers import require_program

STARTUP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{what} exited with {process.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"{what} did not listen on {port} within {STARTUP_TIMEOUT} s")


class _Server:
    """A program run in the background, its output in a log file."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None
        self.port = free_port()

    def _command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        assert self.process is None, f"{self.name} is already running"
        log = open(self.folder / f"{self.name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait_for_port(self.port, self.process, self.name)

    def kill(self) -> None:
        """Ends the server at once, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NatsServer(_Server):
    """nats-server with its monitoring port and, with `jetstream`, a store of its own."""

    def __init__(self, folder: Path, *, jetstream: bool = False, name: str = "nats-server") -> None:
        super().__init__(folder, name)
        self.program = require_program("nats-server")
        self.monitor_port = free_port()
        self.jetstream = jetstream
        self.store = folder / f"{name}-store"

    def _command(self) -> list[str]:
        command = [
            self.program,
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
        ]
        if self.jetstream:
            command += ["-js", "-sd", str(self.store)]
        return command

    def start(self) -> None:
        super().start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                self.monitor("healthz")
                return
            except OSError:
                assert time.monotonic() < deadline, "nats-server's monitoring did not answer"
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def monitor(self, path: str) -> Any:
        """A monitoring endpoint's JSON (`varz`, `connz?subs=1`, ...)."""
        address = f"http://127.0.0.1:{self.monitor_port}/{path}"
        with urllib.request.urlopen(address, timeout=5) as response:
            return json.loads(response.read())

    def connection(self, name: str) -> dict[str, Any]:
        """The one connection of that client name, with its subscriptions."""
        found = [c for c in self.monitor("connz?subs=1")["connections"] if c.get("name") == name]
        assert len(found) == 1, f"connections named {name!r}: {found}"
        return found[0]


class Mosquitto(_Server):
    """mosquitto with a minimal config: one listener on 127.0.0.1, anonymous clients."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, "mosquitto")
        self.program = require_program("mosquitto")
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n",
            encoding="utf-8",
        )

    def _command(self) -> list[str]:
        return [self.program, "-c", os.fspath(self.config)]

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"
