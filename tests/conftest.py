from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

# Qt must know it has no display before any QApplication exists.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# The suite's brokers, in this process and in the programs it starts, write their
# runtime files and sockets into a folder of the run's own, never the user's (and a
# short one: a socket path has at most 107 bytes). A token the user exported is not
# the suite's brokers' either.
_RUNTIME_ROOT = tempfile.mkdtemp(prefix="mb-")
os.environ["MESSAGE_BROKER_RUNTIME_DIR"] = os.path.join(_RUNTIME_ROOT, "run")
os.environ.pop("MESSAGE_BROKER_TOKEN", None)


import message_broker  # noqa: E402
from message_broker import BrokerClient, BrokerConfig, MessageBroker  # noqa: E402

from support.wire import RawClient  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    # An extension left by an older build (one per Python version, before the abi3
    # one) would be imported instead of the new one and fail in puzzling ways.
    package = os.path.dirname(message_broker.__file__)
    extensions = sorted(name for name in os.listdir(package) if name.startswith("_core."))
    extensions = [name for name in extensions if name.endswith((".so", ".pyd"))]
    if len(extensions) > 1:
        pytest.exit(
            f"{package} holds several builds of the extension: {extensions}; "
            "delete all but the newest (_core.abi3.*) and run the tests again",
            4,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_RUNTIME_ROOT, ignore_errors=True)


@pytest.fixture
def start_broker() -> Iterator[Callable[..., MessageBroker]]:
    """Starts brokers on 127.0.0.1 with an ephemeral port; stops them all afterwards."""
    started: list[MessageBroker] = []

    def start(**config: Any) -> MessageBroker:
        config.setdefault("host", "127.0.0.1")
        config.setdefault("port", 0)
        broker = MessageBroker(BrokerConfig(**config))
        broker.start_sync()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop_sync()


@pytest.fixture
def broker(start_broker: Callable[..., MessageBroker]) -> MessageBroker:
    return start_broker()


@pytest.fixture
async def make_client(
    broker: MessageBroker,
) -> AsyncIterator[Callable[..., Awaitable[BrokerClient]]]:
    """Connects asyncio clients to `broker`; disconnects them all afterwards."""
    clients: list[BrokerClient] = []

    async def make(client_id: str, **options: Any) -> BrokerClient:
        client = BrokerClient(client_id, host="127.0.0.1", port=broker.port, **options)
        assert await client.connect()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.disconnect()


@pytest.fixture
def transport() -> str:
    """How `raw` connects: "tcp", or "unix" for the broker's Unix socket. A module
    parametrizes it to run its tests over both."""
    return "tcp"


@pytest.fixture
def raw(broker: MessageBroker, transport: str) -> Iterator[Callable[..., RawClient]]:
    """Opens raw connections to `broker`; closes them all afterwards."""
    clients: list[RawClient] = []

    def open_client(**kw: Any) -> RawClient:
        assert broker.port is not None
        if transport == "unix":
            client = RawClient(unix=broker.local_socket, **kw)
        else:
            client = RawClient(broker.port, **kw)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


@pytest.fixture(scope="session")
def ahk() -> Iterator[Any]:
    """Real AutoHotkey v2 (under Wine where it must be); skipped, saying why, when this
    machine cannot run it, except in CI."""
    from support import autohotkey

    reason = autohotkey.missing()
    if reason is not None:
        # CI installs Wine (noxfile.py): there a missing AutoHotkey is a failure.
        if os.environ.get("CI"):
            pytest.fail(f"AutoHotkey cannot run: {reason}")
        pytest.skip(reason)
    with autohotkey.autohotkey() as runner:
        yield runner
