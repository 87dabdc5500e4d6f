from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# Qt must know it has no display before any QApplication exists.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from message_broker import BrokerConfig, MessageBroker

from support.wire import RawClient


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
def raw(broker: MessageBroker) -> Iterator[Callable[..., RawClient]]:
    """Opens raw connections to `broker`; closes them all afterwards."""
    clients: list[RawClient] = []

    def open_client(**kw: Any) -> RawClient:
        assert broker.port is not None
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
