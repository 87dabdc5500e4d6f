"""``AHKBridge``: runs AutoHotkey scripts (or any program) as child processes and
connects each to the broker through its standard input and output.

A script writes one JSON-RPC 2.0 message per line on its standard output (``publish``,
``subscribe``, ``unsubscribe``, ``request``, ``ping``, ``disconnect``, as on a broker
connection, without ``connect``) and reads the answers and ``message`` notifications,
one per line, on its standard input. ``clients/ahk/MessageBroker.ahk`` has a
``BridgedBroker`` class that speaks this. Each script gets a connection of its own,
named ``<bridge client id>/<script id>``, so its subscriptions end with it.

The bridge publishes ``scripts.<id>.started`` (``pid``) and ``scripts.<id>.stopped``
(``pid``, ``exit_code``), reports lines that are not JSON-RPC on
``scripts.<id>.error``, and answers requests on ``scripts.status``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
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

from message_broker.client import BrokerClient
from message_broker.errors import BrokerError, InvalidMessageError
from message_broker.message import Message

__all__ = ["AHKBridge", "BridgedScript", "find_autohotkey"]

logger = logging.getLogger("message_broker.ahk_bridge")

AHK_ENV = "MESSAGE_BROKER_AHK"
"""Environment variable naming the AutoHotkey command (``wine /path/AutoHotkey64.exe``
on Linux, say)."""

STATUS_TOPIC = "scripts.status"
_SCRIPT_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_INVALID_REQUEST, _METHOD_NOT_FOUND, _INVALID_PARAMS = -32600, -32601, -32602
_INTERNAL_ERROR = -32603
_STDERR_LINES = 20
# What may wait in a script's standard input before deliveries to it are dropped
# (and counted): a script that never reads must not grow the bridge without bound.
_MAX_STDIN_BUFFER = 4 * 1024 * 1024


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

    def __init__(self, script_id: str, path: str, args: Sequence[str]) -> None:
        self.script_id = script_id
        self.path = path
        self.args = list(args)
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.started_at = time.time()
        self.stopped_at: float | None = None
        self.errors = 0
        """Lines it wrote that were not JSON-RPC."""
        self.dropped = 0
        """Deliveries dropped because it did not read its standard input."""
        self.stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._process: asyncio.subprocess.Process | None = None
        self._client: BrokerClient | None = None
        self._exited: asyncio.Event = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def running(self) -> bool:
        return self._process is not None and self.exit_code is None

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        """Runs one of this script's tasks; they are cancelled when it ends."""
        task = asyncio.ensure_future(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self, timeout: float | None = None) -> int:
        """Waits for the script to end; returns its exit code."""
        await asyncio.wait_for(self._exited.wait(), timeout)
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
            "dropped": self.dropped,
        }

    def __repr__(self) -> str:
        state = "running" if self.running else f"exit code {self.exit_code}"
        return f"<BridgedScript {self.script_id!r} pid={self.pid} {state}>"


class AHKBridge:
    """Runs scripts and relays between their standard streams and the broker.

    >>> bridge = AHKBridge(broker_client=client)
    >>> await bridge.start()
    >>> await bridge.run_script("scripts/hotkeys.ahk")
    >>> await bridge.stop()

    ``executable`` is the command that runs a script (a string is split like a shell
    would), by default :func:`find_autohotkey`'s; ``options`` go between it and the
    script (``/ErrorStdOut`` makes AutoHotkey report a script that cannot load on
    standard error instead of in a dialog).
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
        ``ValueError`` for a bad or running id and ``FileNotFoundError`` for a missing
        script or AutoHotkey."""
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
        script = BridgedScript(script_id, path, args)
        client = BrokerClient(
            f"{self._client.client_id}/{script_id}",
            host=self._client.host,
            port=self._client.port,
            client_type="bridged-script",
        )
        if not await client.connect():
            raise ConnectionError(f"script {script_id!r}: cannot connect to the broker")
        script._client = client
        try:
            process = await asyncio.create_subprocess_exec(
                *executable,
                *self._options,
                _script_path(path, executable),
                *args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                limit=1024 * 1024 + 4096,
            )
        except BaseException:
            await client.disconnect()
            raise
        script._process, script.pid = process, process.pid
        self._scripts[script_id] = script
        logger.info("script %s started (pid %s): %s", script_id, process.pid, path)
        await self._lifecycle(script, "started", path=path, args=list(args))
        relay = _Relay(self, script, process, client)
        for job in (relay.read_stdout(), relay.read_stderr(), self._watch(script, process)):
            script._spawn(job)
        return script

    async def stop_script(self, script_id: str, timeout: float | None = None) -> int:
        """Ends a script: closes its input, then terminates it, then kills it, waiting
        ``timeout`` (default ``stop_timeout``) between steps. Returns its exit code."""
        script = self._scripts.get(script_id)
        if script is None:
            raise KeyError(f"no script {script_id!r} was run by this bridge")
        process = script._process
        if process is None or not script.running:
            return script.exit_code if script.exit_code is not None else -1
        timeout = self._stop_timeout if timeout is None else timeout
        for step in ("close", "terminate", "kill"):
            if step == "close" and process.stdin is not None:
                process.stdin.close()
            elif step == "terminate":
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
            elif step == "kill":
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            with contextlib.suppress(asyncio.TimeoutError):
                return await script.wait(timeout)
        return await script.wait()

    async def _watch(self, script: BridgedScript, process: asyncio.subprocess.Process) -> None:
        # Not process.wait(): that also waits for the end of the output, which a helper
        # process the script started (Wine starts some) may keep open.
        while process.returncode is None:
            await asyncio.sleep(0.05)
        # What the script wrote just before it ended is still worth relaying.
        await asyncio.sleep(0.1)
        for task in list(script._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        script.exit_code, script.stopped_at = process.returncode, time.time()
        # Its pipes may still be held open by a helper (see above): close our ends.
        transport = getattr(process, "_transport", None)
        if transport is not None:
            transport.close()
        if script._client is not None:
            await script._client.disconnect()
        log = logger.info if process.returncode == 0 else logger.warning
        log(
            "script %s (pid %s) ended with exit code %s",
            script.script_id,
            script.pid,
            script.exit_code,
        )
        await self._lifecycle(
            script, "stopped", exit_code=script.exit_code, stderr="\n".join(script.stderr)
        )
        script._exited.set()

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


class _Relay:
    """One script's lines, both ways."""

    def __init__(
        self,
        bridge: AHKBridge,
        script: BridgedScript,
        process: asyncio.subprocess.Process,
        client: BrokerClient,
    ) -> None:
        self.bridge = bridge
        self.script = script
        self.process = process
        self.client = client
        self.subscribed: set[str] = set()

    # -- from the script ------------------------------------------------------------------
    async def read_stdout(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # longer than the limit: skip to its end
                await self._report("a line longer than 1 MiB", b"")
                with contextlib.suppress(ValueError, asyncio.LimitOverrunError):
                    await stream.readuntil(b"\n")
                continue
            if not line:
                return
            if line.strip():
                await self._handle_line(line)

    async def read_stderr(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        async for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.script.stderr.append(line)
                logger.warning("script %s: %s", self.script.script_id, line)

    async def _handle_line(self, line: bytes) -> None:
        try:
            incoming = json.loads(line)
        except ValueError as error:
            await self._report(f"not JSON ({error})", line)
            return
        if isinstance(incoming, list) and incoming:
            answers = [a for a in [await self._handle_call(c) for c in incoming] if a is not None]
            if answers:
                self._write(answers)
            return
        answer = await self._handle_call(incoming)
        if answer is not None:
            self._write(answer)

    async def _handle_call(self, call: Any) -> dict[str, Any] | None:
        if not isinstance(call, dict) or not isinstance(call.get("method"), str):
            await self._report("not a JSON-RPC call", json.dumps(call).encode())
            return _error(None, _INVALID_REQUEST, "expected an object with a method")
        call_id, method, wants_answer = call.get("id"), call["method"], "id" in call
        params = call.get("params", {})
        if method == "request" and wants_answer and isinstance(params, dict):
            # Requests wait for a reply: the script's other calls go on meanwhile.
            self.script._spawn(self._request(call_id, params))
            return None
        try:
            if not isinstance(params, dict):
                raise _CallError(_INVALID_PARAMS, "params must be an object")
            answer = {
                "jsonrpc": "2.0",
                "result": await self._perform(method, params),
                "id": call_id,
            }
        except _CallError as error:
            answer = _error(call_id, error.code, str(error))
        except BrokerError as error:
            code = error.code if error.code is not None else _INTERNAL_ERROR
            answer = _error(call_id, code, str(error))
        # A notification gets no answer, not even an error.
        return answer if wants_answer else None

    async def _perform(self, method: str, params: dict[str, Any]) -> Any:
        if method == "publish":
            topic = _param(params, "topic", str)
            ttl = params.get("ttl", 0)
            try:
                message_id = await self.client.publish(topic, params.get("payload"), ttl=ttl)
            except InvalidMessageError as error:
                raise _CallError(_INVALID_PARAMS, str(error)) from None
            return {"message_id": message_id}
        if method in ("subscribe", "unsubscribe"):
            patterns = _param(params, "patterns", list)
            try:
                if method == "subscribe":
                    subscribed = await self.client.subscribe(patterns, self._deliver)
                    self.subscribed.update(subscribed)
                    return {"subscribed": subscribed}
                removed = await self.client.unsubscribe(patterns)
            except (InvalidMessageError, TypeError) as error:
                raise _CallError(_INVALID_PARAMS, str(error)) from None
            self.subscribed.difference_update(removed)
            return {"unsubscribed": removed}
        if method == "ping":
            return {"pong": True}
        if method == "disconnect":
            if self.subscribed:
                await self.client.unsubscribe(sorted(self.subscribed))
                self.subscribed.clear()
            return {"disconnected": True}
        if method == "connect":
            return {"client_id": self.client.client_id}
        raise _CallError(_METHOD_NOT_FOUND, f"unknown method {method!r}")

    async def _request(self, call_id: Any, params: dict[str, Any]) -> None:
        try:
            topic = _param(params, "topic", str)
            timeout = params.get("timeout", 5.0)
            result = await self.client.request(topic, params.get("payload"), timeout=timeout)
        except _CallError as error:
            self._write(_error(call_id, error.code, str(error)))
        except (BrokerError, ValueError) as error:
            code = getattr(error, "code", None) or _INVALID_PARAMS
            self._write(_error(call_id, code, str(error)))
        else:
            self._write({"jsonrpc": "2.0", "result": result, "id": call_id})

    async def _report(self, problem: str, line: bytes) -> None:
        self.script.errors += 1
        text = line.decode("utf-8", "replace").rstrip()
        logger.warning("script %s wrote %s: %.200s", self.script.script_id, problem, text)
        payload = {"script_id": self.script.script_id, "error": problem, "line": text[:1000]}
        try:
            await self.bridge._client.publish(f"scripts.{self.script.script_id}.error", payload)
        except BrokerError as error:
            logger.warning("could not report it: %s", error)

    # -- to the script --------------------------------------------------------------------
    def _deliver(self, message: Message) -> None:
        params: dict[str, Any] = {
            "topic": message.topic,
            "payload": message.payload,
            "sender": message.sender,
            "id": message.id,
            "timestamp": message.timestamp,
        }
        if message.reply_to is not None:
            params["reply_to"] = message.reply_to
        stdin = self.process.stdin
        if stdin is not None and stdin.transport.get_write_buffer_size() > _MAX_STDIN_BUFFER:
            self.script.dropped += 1
            if self.script.dropped == 1 or self.script.dropped % 1000 == 0:
                logger.warning(
                    "script %s does not read its input: %d messages dropped",
                    self.script.script_id,
                    self.script.dropped,
                )
            return
        self._write({"jsonrpc": "2.0", "method": "message", "params": params})

    def _write(self, message: Any) -> None:
        stdin = self.process.stdin
        if stdin is None or stdin.is_closing():
            return
        line = json.dumps(message, ensure_ascii=False, separators=(",", ":")) + "\n"
        with contextlib.suppress(ConnectionError):
            stdin.write(line.encode("utf-8"))


class _CallError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _param(params: dict[str, Any], name: str, kind: type) -> Any:
    value = params.get(name)
    if not isinstance(value, kind):
        raise _CallError(_INVALID_PARAMS, f"{name} must be a {kind.__name__}, got {value!r}")
    return value


def _error(call_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": call_id}
