"""A raw-socket client for tests: speaks the wire protocol by hand, so the tests check
the broker against the protocol, not against our own client library."""

from __future__ import annotations

import itertools
import json
import socket
import struct
import time
from typing import Any

DEFAULT_TIMEOUT = 5.0


class Closed(Exception):
    """The broker closed the connection."""


class RawClient:
    """One connection speaking length-prefixed (default) or newline-delimited JSON:
    TCP to ``host:port``, or the broker's Unix socket at ``unix``."""

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        unix: str | None = None,
        lines: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if unix is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(unix)
        else:
            assert port is not None, "a TCP client needs a port"
            self.sock = socket.create_connection((host, port), timeout=timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.lines = lines
        self.timeout = timeout
        self._buf = b""
        self._ids = itertools.count(1)
        self.pending: list[dict[str, Any]] = []
        """Frames received while waiting for something else, in arrival order."""

    # -- bytes -------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self, body: bytes) -> bytes:
        if self.lines:
            return body + b"\n"
        return struct.pack(">I", len(body)) + body

    def send(self, obj: Any) -> None:
        self.send_raw(self.frame(json.dumps(obj).encode()))

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no frame from the broker in time")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Closed("connection closed by the broker")
        self._buf += chunk

    def recv_frame(self, timeout: float | None = None) -> dict[str, Any] | list[Any]:
        """The next frame from the socket (not from `pending`)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        if self.lines:
            while b"\n" not in self._buf:
                self._fill(deadline)
            line, self._buf = self._buf.split(b"\n", 1)
            return json.loads(line)
        while len(self._buf) < 4:
            self._fill(deadline)
        (length,) = struct.unpack(">I", self._buf[:4])
        while len(self._buf) < 4 + length:
            self._fill(deadline)
        body, self._buf = self._buf[4 : 4 + length], self._buf[4 + length :]
        return json.loads(body)

    def recv(self, timeout: float | None = None) -> Any:
        """The next frame, taking buffered ones first."""
        if self.pending:
            return self.pending.pop(0)
        return self.recv_frame(timeout)

    # -- JSON-RPC ----------------------------------------------------------------------
    def request_obj(self, method: str, params: Any = None, id: Any = None) -> dict[str, Any]:
        obj: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
        if params is not None:
            obj["params"] = params
        return obj

    def call(self, method: str, params: Any = None, *, timeout: float | None = None) -> dict:
        """Sends a request and returns its response (result or error), keeping any
        notifications that arrive first in `pending`."""
        id = next(self._ids)
        self.send(self.request_obj(method, params, id))
        return self.wait_response(id, timeout)

    def wait_response(self, id: Any, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        for i, frame in enumerate(self.pending):
            if isinstance(frame, dict) and "method" not in frame and frame.get("id") == id:
                return self.pending.pop(i)
        while True:
            frame = self.recv_frame(max(deadline - time.monotonic(), 0.001))
            if isinstance(frame, dict) and "method" not in frame and frame.get("id") == id:
                return frame
            self.pending.append(frame)

    def result(self, method: str, params: Any = None, **kw: Any) -> Any:
        response = self.call(method, params, **kw)
        assert "error" not in response, response
        return response["result"]

    def notify(self, method: str, params: Any = None) -> None:
        obj: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            obj["params"] = params
        self.send(obj)

    def connect(self, client_id: str, **params: Any) -> dict:
        return self.result("connect", {"client_id": client_id, **params})

    def subscribe(self, *patterns: str) -> list[str]:
        return self.result("subscribe", {"patterns": list(patterns)})["subscribed"]

    def publish(self, topic: str, payload: Any = None, **params: Any) -> str:
        return self.result("publish", {"topic": topic, "payload": payload, **params})["message_id"]

    def next_message(self, timeout: float | None = None, topic: str | None = None) -> dict:
        """Params of the next delivered message (optionally the next on `topic`),
        skipping responses and other notifications."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for i, frame in enumerate(self.pending):
                if _is_message(frame, topic):
                    return self.pending.pop(i)["params"]
            frame = self.recv_frame(max(deadline - time.monotonic(), 0.001))
            if _is_message(frame, topic):
                return frame["params"]
            self.pending.append(frame)

    def expect_closed(self, timeout: float | None = None) -> list[Any]:
        """Reads until the broker closes the connection; returns what came before."""
        frames = list(self.pending)
        self.pending.clear()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while True:
                frames.append(self.recv_frame(max(deadline - time.monotonic(), 0.001)))
        except (Closed, ConnectionResetError):
            return frames

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_message(frame: Any, topic: str | None) -> bool:
    return (
        isinstance(frame, dict)
        and frame.get("method") == "message"
        and (topic is None or frame["params"]["topic"] == topic)
    )


def error_code(response: dict) -> int:
    assert "error" in response, f"expected an error, got {response}"
    return response["error"]["code"]
