"""The relay behind ``message_broker.ahk_bridge.AHKBridge`` (whose docstring says what
it does for scripts): one child process's pipes and its broker connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Coroutine
from typing import Any, cast

_CHUNK = 64 * 1024
_STDERR_LINE_MAX = 64 * 1024


class ScriptRelay(asyncio.SubprocessProtocol):
    """One script's pipes joined to its connection: its standard output to the
    connection line by line, the connection to its standard input as it comes; its
    standard error kept. Each side is read only as fast as the other takes it."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_line: int,
        report: Callable[[str, bytes], None],
        keep_stderr: Callable[[str], None],
    ) -> None:
        """``reader`` and ``writer``: the script's connection, connected already.
        ``max_line``: the broker's ``max_message_size``; longer lines go on unread.
        ``report(problem, line)`` hears of a line that is not a call;
        ``keep_stderr(line)`` gets each line of standard error."""
        self.exited = asyncio.Event()
        self.output_ended = asyncio.Event()
        self._reader, self._writer = reader, writer
        self._max_line = max_line
        self._report = report
        self._keep_stderr = keep_stderr
        self._transport: asyncio.SubprocessTransport | None = None
        self._line = bytearray()
        """The start of a line the script is still writing."""
        self._passing = False
        """Inside a line too long to check: it goes on as it comes."""
        self._error_line = bytearray()
        self._input_ready = asyncio.Event()
        self._input_ready.set()
        self._output_paused = False
        self._connection_ending = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def returncode(self) -> int | None:
        return self._transport.get_returncode() if self._transport else None

    def end_connection(self) -> None:
        """Ends the script's connection from its side: the broker still sends what it
        has for the script (answers on their way included), then closes, and with
        that the script's input ends."""
        if not self._connection_ending:
            self._connection_ending = True
            self._writer.write_eof()

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._require_transport().terminate()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._require_transport().kill()

    async def close(self, timeout: float) -> None:
        """Lets go of the script's pipes (a helper it started may hold their other
        ends) and closes its connection once what it wrote has gone out (at most
        ``timeout`` seconds)."""
        for task in self._tasks:
            task.cancel()
        stdin = self._stdin()
        if stdin is not None and not stdin.is_closing():
            stdin.abort()  # what the broker sent and the script never read
        self._require_transport().close()
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), timeout)
        except (ConnectionError, asyncio.TimeoutError):
            self._writer.transport.abort()

    # -- asyncio.SubprocessProtocol -----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.SubprocessTransport, transport)
        self._spawn(self._to_script())

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self._from_script(data)
        else:
            self._from_stderr(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 0:
            self._input_ready.set()  # a copy waiting for room finds the input closed
        elif fd == 1:
            if self._line or self._passing:
                self._from_script(b"\n")  # a last line without its newline is a line
            self.output_ended.set()
        elif self._error_line:
            self._from_stderr(b"\n")

    def process_exited(self) -> None:
        self.exited.set()

    def pause_writing(self) -> None:
        self._input_ready.clear()

    def resume_writing(self) -> None:
        self._input_ready.set()

    # -- the script to the broker -------------------------------------------------------
    def _from_script(self, data: bytes) -> None:
        out = bytearray()
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            piece, start = data[start : end + 1], end + 1
            if self._passing:
                out += piece
                self._passing = False
                continue
            line = bytes(self._line + piece) if self._line else piece
            self._line.clear()
            if self._should_forward(line):
                out += line
        rest = data[start:]
        if self._passing:
            out += rest
        elif rest:
            self._line += rest
            if len(self._line) > self._max_line:
                out += self._line
                self._line.clear()
                self._passing = True
        if out:
            self._send(out)

    def _should_forward(self, line: bytes) -> bool:
        if line.isspace():
            return False
        try:
            incoming = json.loads(line.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            self._report(f"not JSON ({error})", line)
            return False
        except (ValueError, RecursionError):
            # Valid JSON Python cannot hold (an integer past its digit limit, deep
            # nesting): the broker reads it, so it goes through unchecked.
            return True
        calls = incoming if isinstance(incoming, list) and incoming else [incoming]
        if not all(isinstance(c, dict) and isinstance(c.get("method"), str) for c in calls):
            self._report("not a JSON-RPC call", line)
        return True

    def _send(self, data: bytearray) -> None:
        # Gone when either side ended it; the script's input ends with it.
        if self._connection_ending or self._writer.is_closing():
            return
        self._writer.write(data)
        socket = self._writer.transport
        if socket.get_write_buffer_size() > socket.get_write_buffer_limits()[1]:
            stdout = self._stdout()
            if not self._output_paused and stdout is not None:
                self._output_paused = True
                stdout.pause_reading()
                self._spawn(self._resume_output(stdout))

    async def _resume_output(self, stdout: asyncio.ReadTransport) -> None:
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()
        self._output_paused = False
        if not stdout.is_closing():
            stdout.resume_reading()

    # -- the broker to the script -------------------------------------------------------
    async def _to_script(self) -> None:
        """Copies what the broker sends to the script's input, as fast as the script
        reads it. When the connection ends, so does the input."""
        stdin = self._stdin()
        assert stdin is not None
        try:
            while data := await self._reader.read(_CHUNK):
                await self._input_ready.wait()
                if stdin.is_closing():
                    return
                stdin.write(data)
        except ConnectionError:
            pass
        finally:
            if not stdin.is_closing():
                stdin.close()

    # -- standard error -----------------------------------------------------------------
    def _from_stderr(self, data: bytes) -> None:
        self._error_line += data
        lines = self._error_line.split(b"\n")
        self._error_line = lines.pop()
        if len(self._error_line) > _STDERR_LINE_MAX:
            lines.append(self._error_line)
            self._error_line = bytearray()
        for raw in lines:
            if text := raw.decode("utf-8", "replace").rstrip():
                self._keep_stderr(text)

    # -----------------------------------------------------------------------------------
    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _require_transport(self) -> asyncio.SubprocessTransport:
        assert self._transport is not None, "used before the process started"
        return self._transport

    def _stdin(self) -> asyncio.WriteTransport | None:
        return cast(
            "asyncio.WriteTransport | None", self._require_transport().get_pipe_transport(0)
        )

    def _stdout(self) -> asyncio.ReadTransport | None:
        return cast("asyncio.ReadTransport | None", self._require_transport().get_pipe_transport(1))
