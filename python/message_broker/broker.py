"""``MessageBroker``: the broker server, hosted in this process.

The server runs on the extension's own threads, so it needs no asyncio loop: it can
be awaited from asyncio, used as a plain context manager, or started from a Qt app.
"""

from __future__ import annotations

import json
import logging
import weakref
from types import TracebackType
from typing import TYPE_CHECKING

from message_broker import _core
from message_broker.config import BrokerConfig

if TYPE_CHECKING:
    from message_broker._core import Status

_logger = logging.getLogger("message_broker")

# Brokers still running when the interpreter exits are stopped gracefully, so their
# clients hear system.broker.shutdown (an asyncio program interrupted by Ctrl-C never
# reaches its own `await broker.stop()`).
_running: weakref.WeakSet[MessageBroker] = weakref.WeakSet()


def stop_running_brokers() -> None:
    """Stops every broker of this process that is still running (an ``atexit`` hook)."""
    for broker in list(_running):
        broker.stop_sync("broker process exiting")


class MessageBroker:
    """A message broker listening on ``config.host:config.port``.

    >>> async with MessageBroker(BrokerConfig(port=0)) as broker:
    ...     print(broker.port)
    """

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config if config is not None else BrokerConfig()
        self._server = _core.Broker(self.config)

    @property
    def port(self) -> int | None:
        """The port the broker listens on while running (the real one when 0 was asked for)."""
        return self._server.port

    @property
    def host(self) -> str:
        """The address the broker is bound to while running, else the configured host."""
        return self._server.bound_host or self.config.host

    @property
    def is_running(self) -> bool:
        """True from a successful start until the broker has stopped."""
        return self._server.is_running

    @property
    def token(self) -> str | None:
        """The token of this start while running: TCP clients send it when the broker
        requires it (``BrokerClient(..., token=broker.token)``)."""
        return self._server.token

    @property
    def runtime_file(self) -> str | None:
        """The runtime file while running: readable by this user alone, it tells this
        user's programs the port, token and local socket. Removed at a clean stop."""
        return self._server.runtime_file

    @property
    def local_socket(self) -> str | None:
        """The Unix socket (a named pipe on Windows) while running, when one is open:
        ``BrokerClient(..., url=f"unix://{broker.local_socket}")``."""
        return self._server.local_socket

    @property
    def http_port(self) -> int | None:
        """The HTTP listener's port on 127.0.0.1 while running, when ``http_port`` is
        configured: the explorer page, monitoring, HTTP access and ``/ws``."""
        return self._server.http_port

    @property
    def http_url(self) -> str | None:
        """The explorer page's address with the token (in the fragment, which the
        browser never sends), for this user's browser: open it to see the broker."""
        port = self.http_port
        if port is None:
            return None
        return f"http://127.0.0.1:{port}/#token={self.token}"

    def start_sync(self) -> int:
        """Starts listening without asyncio; returns the bound port."""
        _core.set_log_level(_logger.getEffectiveLevel())
        port = self._server.start()
        _running.add(self)
        return port

    def stop_sync(self, reason: str = "broker stopped") -> None:
        """Stops gracefully, without asyncio: subscribers of ``system.broker.shutdown``
        hear ``reason``, queued messages are flushed, and every connection is closed
        before this returns."""
        _running.discard(self)
        self._server.stop(reason)

    async def start(self) -> None:
        """Starts listening, without blocking the event loop: binding (and opening the
        store of a ``data_dir``) happens on a worker thread. Raises ``OSError`` when the
        address is in use."""
        # Imported here, where a loop runs already: the broker command runs without
        # asyncio, and is smaller for it.
        import asyncio

        await asyncio.to_thread(self.start_sync)

    async def stop(self, reason: str = "broker stopped") -> None:
        """Stops gracefully (see :meth:`stop_sync`) without blocking the event loop."""
        import asyncio

        await asyncio.to_thread(self.stop_sync, reason)

    def status(self) -> Status:
        """The broker's status: clients, subscriptions, queues, counters, uptime (the
        keys are listed in ``message_broker._core.Status``)."""
        status: Status = json.loads(self._server.status_json())
        return status

    async def __aenter__(self) -> MessageBroker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __enter__(self) -> MessageBroker:
        self.start_sync()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_sync()

    def __repr__(self) -> str:
        state = f"listening on {self.host}:{self.port}" if self.is_running else "stopped"
        return f"<MessageBroker {state}>"
