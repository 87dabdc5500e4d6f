"""``AHKBridge``: runs AutoHotkey scripts (or any program) as child processes and
joins each one's standard streams to a broker connection of its own.

The bridge opens a connection per script in the broker's line mode, the way its
client connects (TCP with the token that client sends, or the local socket), sends
``connect`` for it (client id ``<bridge client id>/<script id>``, so its subscriptions,
queue deliveries and will end with it), then relays: each line the script writes on
standard output goes to the connection, and what the broker sends goes to the
script's standard input, unchanged. A script therefore speaks the whole protocol of
the README (``publish`` with ``qos=1``, queue subscriptions, ``ack``/``nack``,
``request``, ``status``...), one JSON-RPC message per line, except ``connect``, which
the bridge has made. ``clients/ahk/MessageBroker.ahk`` has a ``BridgedBroker`` class
that speaks it.

Each side is read only as fast as the other takes it: when a script stops reading its
input, the relay stops reading its connection and the broker's bounds for a slow
client apply (messages for it dropped and counted in the broker's ``status``,
``system.client.slow``); when the broker stops reading, the relay stops reading the
script, whose writes then wait.

The relay looks at each line on its way, for one thing the bridge has always done: a
line that is not JSON is reported on ``scripts.<id>.error`` and counted in the script's
``errors``, and goes no further (the broker would answer ``-32700`` with no id, which
no script waits for); a JSON line that is not a call is reported and counted too, and
goes on for the broker's ``-32600`` answer. That costs one ``json.loads`` per line;
nothing is re-encoded. A line longer than the broker's ``max_message_size`` goes on
unread, as it comes, for the broker's ``-32004`` answer.

The bridge itself publishes ``scripts.<id>.started`` (``pid``) and
``scripts.<id>.stopped`` (``pid``, ``exit_code``, the last lines of standard error),
and answers requests on ``scripts.status``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from message_broker import _core
from message_broker._script_relay import ScriptRelay
from message_broker.client import BrokerClient
from message_broker.errors import BrokerError
from message_broker.message import Message

__all__ = ["AHKBridge", "BridgedScript", "find_autohotkey"]

logger = logging.getLogger("message_broker.ahk_bridge")

AHK_ENV = "MESSAGE_BROKER_AHK"
"""Environment variable naming the AutoHotkey command (``wine /path/AutoHotkey64.exe``
on Linux, say)."""

STATUS_TOPIC = "scripts.status"
_SCRIPT_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_STDERR_LINES = 20
# A script's output ends with it, unless a helper process it started (Wine starts
# some) inherited the pipe: then the bridge waits this long for its last lines.
_OUTPUT_GRACE = 1.0
_CONNECT_TIMEOUT = 10.0


def find_autohotkey() -> list[str] | None:
    """The command that runs AutoHotkey v2 here: ``$MESSAGE_BROKER_AHK``, else an
    AutoHotkey executable on ``PATH`` or from the ``ahk-binary`` package (under
    ``wine`` outside Windows). None when there is none."""
    if os.environ.get(AHK_ENV):
        return shlex.split(os.environ[AHK_ENV], posix=sys.platform != "win32")
    names = ("AutoHotkey64.exe", "AutoHotkeyV2.exe", "AutoHotkey.exe")
    found = next((path for name in names if (path := shutil.which(name))), None)
    if found is None:
        for folder in (Path(sys.prefix) / "Scripts", Path(sys.prefix) / "bin"):
            if (folder / "AutoHotkeyV2.exe").is_file():
                found = str(folder / "AutoHotkeyV2.exe")
                break
    if found is None:
        return None
    if sys.platform == "win32":
        return [found]
    wine = shutil.which("wine")
    return [wine, found] if wine else None


class BridgedScript:
    """A script the bridge started: its id, process, and what became of it."""

    def __init__(self, script_id: str, path: str, args: Sequence[str], ended: asyncio.Event):
        self.script_id = script_id
        self.path = path
        self.args = list(args)
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.started_at = time.time()
        self.stopped_at: float | None = None
        self.errors = 0
        """Lines it wrote that were not JSON-RPC calls."""
        self.stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._ended = ended

    @property
    def running(self) -> bool:
        return self.pid is not None and self.exit_code is None

    async def wait(self, timeout: float | None = None) -> int:
        """Waits for the script to end (and the bridge to be done with it); returns its
        exit code."""
        await asyncio.wait_for(self._ended.wait(), timeout)
        assert self.exit_code is not None
        return self.exit_code

    def status(self) -> dict[str, Any]:
        return {
            "script_id": self.script_id,
            "running": self.running,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "path": self.path,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "errors": self.errors,
        }

    def __repr__(self) -> str:
        state = "running" if self.running else f"exit code {self.exit_code}"
        return f"<BridgedScript {self.script_id!r} pid={self.pid} {state}>"


class AHKBridge:
    """Runs scripts and joins their standard streams to broker connections.

    >>> bridge = AHKBridge(broker_client=client)
    >>> await bridge.start()
    >>> await bridge.run_script("scripts/hotkeys.ahk")
    >>> await bridge.stop()

    ``executable`` is the command that runs a script (a string is split like a shell
    would), by default :func:`find_autohotkey`'s; ``options`` go between it and the
    script (``/ErrorStdOut`` makes AutoHotkey report a script that cannot load on
    standard error instead of in a dialog). Scripts connect to the broker that
    ``broker_client`` connects to; the bridge's own messages go through it.
    """

    def __init__(
        self,
        broker_client: BrokerClient,
        *,
        executable: str | Sequence[str] | None = None,
        options: Sequence[str] = ("/ErrorStdOut=UTF-8",),
        stop_timeout: float = 5.0,
    ) -> None:
        self._client = broker_client
        if isinstance(executable, str):
            executable = shlex.split(executable, posix=sys.platform != "win32")
        self._executable = list(executable) if executable is not None else None
        self._options = list(options)
        self._stop_timeout = stop_timeout
        self._scripts: dict[str, BridgedScript] = {}
        self._relays: dict[str, ScriptRelay] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False

    @property
    def scripts(self) -> dict[str, BridgedScript]:
        """Every script run so far, by id (finished ones until their id is reused)."""
        return dict(self._scripts)

    async def start(self) -> None:
        """Starts answering ``scripts.status`` requests."""
        if not self._started:
            await self._client.subscribe(STATUS_TOPIC, self._answer_status)
            self._started = True

    async def stop(self) -> None:
        """Stops every running script, then stops answering."""
        await asyncio.gather(
            *(self.stop_script(s.script_id) for s in self._scripts.values() if s.running)
        )
        # What is left are the reports of the scripts' last lines: they are quick.
        await asyncio.gather(*self._tasks)
        if self._started:
            self._started = False
            with contextlib.suppress(BrokerError):
                await self._client.unsubscribe(STATUS_TOPIC)

    async def __aenter__(self) -> AHKBridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def status(self, script_id: str | None = None) -> dict[str, Any]:
        """What ``scripts.status`` answers: one script's state (``running`` is False
        for an unknown id), or all of them without ``script_id``."""
        if script_id is None:
            scripts = [s.status() for s in self._scripts.values()]
            return {"running": any(s["running"] for s in scripts), "scripts": scripts}
        script = self._scripts.get(script_id)
        if script is None:
            return {"script_id": script_id, "running": False, "known": False}
        return {**script.status(), "known": True}

    async def run_script(
        self, path: str | os.PathLike[str], *args: str, script_id: str | None = None
    ) -> BridgedScript:
        """Starts a script; returns once it runs and ``scripts.<id>.started`` is out.

        ``script_id`` defaults to the file name without extension; it names the
        script's topics and may hold letters, digits, ``_`` and ``-``. Raises
        ``ValueError`` for a bad or running id, ``FileNotFoundError`` for a missing
        script or AutoHotkey, and ``ConnectionError`` when the broker refuses the
        script's connection."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no script at {path!r}")
        script_id = script_id if script_id is not None else Path(path).stem
        if not _SCRIPT_ID.match(script_id):
            raise ValueError(
                f"script id {script_id!r}: use 1 to 64 letters, digits, '_' or '-' "
                "(it becomes a topic segment)"
            )
        if script_id in self._scripts and self._scripts[script_id].running:
            raise ValueError(f"script {script_id!r} is already running")
        executable = self._executable or find_autohotkey()
        if not executable:
            raise FileNotFoundError(
                f"AutoHotkey not found: install it, or set {AHK_ENV} or AHKBridge(executable=...)"
            )
        ended = asyncio.Event()
        script = BridgedScript(script_id, path, args, ended)
        reader, writer, max_line = await self._connect(script_id)

        report = functools.partial(self._report, script)
        keep_stderr = functools.partial(self._keep_stderr, script)
        try:
            transport, relay = await asyncio.get_running_loop().subprocess_exec(
                lambda: ScriptRelay(reader, writer, max_line, report, keep_stderr),
                *executable,
                *self._options,
                _script_path(path, executable),
                *args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except BaseException:
            writer.close()
            raise
        script.pid = transport.get_pid()
        self._scripts[script_id], self._relays[script_id] = script, relay
        logger.info("script %s started (pid %s): %s", script_id, script.pid, path)
        await self._lifecycle(script, "started", path=path, args=list(args))
        self._spawn(self._watch(script, relay, ended))
        return script

    async def stop_script(self, script_id: str, timeout: float | None = None) -> int:
        """Ends a script: ends its connection (the broker sends what it has for the
        script, then closes, which closes the script's input), then terminates it,
        then kills it, waiting ``timeout`` (default ``stop_timeout``) between steps.
        Returns its exit code."""
        script = self._scripts.get(script_id)
        if script is None:
            raise KeyError(f"no script {script_id!r} was run by this bridge")
        relay = self._relays.get(script_id)
        if relay is None or not script.running:
            return script.exit_code if script.exit_code is not None else -1
        timeout = self._stop_timeout if timeout is None else timeout
        for step in (relay.end_connection, relay.terminate, relay.kill):
            step()
            with contextlib.suppress(asyncio.TimeoutError):
                return await script.wait(timeout)
        return await script.wait()

    async def _connect(
        self, script_id: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
        """A line-mode connection to the broker, connected as the script, and the
        broker's ``max_message_size``."""
        client_id = f"{self._client.client_id}/{script_id}"
        params = {"client_id": client_id, "client_type": "bridged-script"}
        call = {"jsonrpc": "2.0", "method": "connect", "params": params, "id": 1}
        writer, answer = None, None
        try:
            reader, writer, token = await asyncio.wait_for(self._open(), _CONNECT_TIMEOUT)
            if token is not None:
                params["token"] = token
            writer.write(json.dumps(call).encode() + b"\n")
            answer = json.loads(await asyncio.wait_for(reader.readline(), _CONNECT_TIMEOUT))
            return reader, writer, int(answer["result"]["max_message_size"])
        except (OSError, ValueError, LookupError, TypeError, asyncio.TimeoutError) as error:
            if writer is not None:
                writer.close()
            why = answer["error"] if isinstance(answer, dict) and "error" in answer else error
            raise ConnectionError(f"script {script_id!r}: not connected: {why!r}") from None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str | None]:
        """A connection to the broker of the bridge's client, the way that client
        connects, and the token to send there: the client's own, else the one it would
        find (None over the local socket, which needs none)."""
        if self._client.url.startswith("unix://"):
            reader, writer = await asyncio.open_unix_connection(self._client.host)
            return reader, writer, None
        host, port = self._client.host, self._client.port
        token = self._client._token or os.environ.get(_core.TOKEN_ENV) or None
        if token is None and (local := _core.find_local_broker(host, port)) is not None:
            # The runtime file's token goes only to the address the broker wrote there.
            host, token = local
        reader, writer = await asyncio.open_connection(host, port)
        return reader, writer, token

    async def _watch(self, script: BridgedScript, relay: ScriptRelay, ended: asyncio.Event) -> None:
        await relay.exited.wait()
        # What the script wrote just before it ended is still worth relaying.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(relay.output_ended.wait(), _OUTPUT_GRACE)
        script.exit_code, script.stopped_at = relay.returncode, time.time()
        await relay.close(self._stop_timeout)
        if self._relays.get(script.script_id) is relay:
            del self._relays[script.script_id]
        log = logger.info if script.exit_code == 0 else logger.warning
        log(
            "script %s (pid %s) ended: exit code %s", script.script_id, script.pid, script.exit_code
        )
        await self._lifecycle(
            script, "stopped", exit_code=script.exit_code, stderr="\n".join(script.stderr)
        )
        ended.set()

    def _report(self, script: BridgedScript, problem: str, line: bytes) -> None:
        script.errors += 1
        text = line.decode("utf-8", "replace").rstrip()
        logger.warning("script %s wrote %s: %.200s", script.script_id, problem, text)
        self._spawn(self._lifecycle(script, "error", error=problem, line=text[:1000]))

    def _keep_stderr(self, script: BridgedScript, line: str) -> None:
        script.stderr.append(line)
        logger.warning("script %s: %s", script.script_id, line)

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _lifecycle(self, script: BridgedScript, event: str, **details: Any) -> None:
        payload = {"script_id": script.script_id, "pid": script.pid, **details}
        try:
            await self._client.publish(f"scripts.{script.script_id}.{event}", payload)
        except BrokerError as error:
            logger.warning("could not publish scripts.%s.%s: %s", script.script_id, event, error)

    def _answer_status(self, message: Message) -> dict[str, Any] | None:
        if message.reply_to is None:
            return None
        payload = message.payload if isinstance(message.payload, dict) else {}
        script_id = payload.get("script_id")
        if script_id is not None and not isinstance(script_id, str):
            return {"error": f"script_id must be a string, got {script_id!r}"}
        return self.status(script_id)


def _script_path(path: str, executable: Sequence[str]) -> str:
    """AutoHotkey under Wine takes a Windows path: Wine maps Z: to /. (A path starting
    with / would also read as a switch.)"""
    if sys.platform != "win32" and Path(executable[0]).name.startswith("wine"):
        return "Z:" + str(Path(path).resolve()).replace("/", "\\")
    return path
