"""Fixtures for testing applications that use the broker, with pytest.

Installed with the package as a pytest plugin (the ``pytest11`` entry point
``message_broker.pytest_plugin``), so the fixtures are there in every test run:

- ``broker``: a :class:`~message_broker.MessageBroker` started for the test on
  127.0.0.1 with a free port, stopped after it. While it runs, ``MESSAGE_BROKER_URL``
  names it, so clients made without ``url``, ``host`` or ``port`` (as an application
  makes them) connect to it.
- ``broker_config``: the :class:`~message_broker.BrokerConfig` that ``broker`` starts
  with; override it in a ``conftest.py`` to test with other settings (keep
  ``port=0``).
- ``broker_client``: a connected asyncio :class:`~message_broker.BrokerClient` of that
  broker (client id ``test-client``), disconnected after the test. It needs
  pytest-asyncio.
- ``broker_sync_client``: the same as a connected
  :class:`~message_broker.sync.SyncBrokerClient`, for tests without asyncio.

Loading the plugin defines these fixtures and nothing else: no hooks, no options,
and nothing is started until a test asks for a fixture. Turn it off with
``-p no:message_broker.pytest_plugin``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from message_broker.broker import MessageBroker
from message_broker.client import URL_ENV, BrokerClient
from message_broker.config import BrokerConfig
from message_broker.sync import SyncBrokerClient

try:
    import pytest_asyncio

    HAS_PYTEST_ASYNCIO = True
except ImportError:  # pragma: no cover - depends on the environment
    HAS_PYTEST_ASYNCIO = False

__all__ = ["broker", "broker_client", "broker_config", "broker_sync_client"]

CLIENT_ID = "test-client"


@pytest.fixture
def broker_config() -> BrokerConfig:
    """The settings of the ``broker`` fixture: 127.0.0.1, a free port."""
    return BrokerConfig(host="127.0.0.1", port=0)


@pytest.fixture
def broker(broker_config: BrokerConfig, monkeypatch: pytest.MonkeyPatch) -> Iterator[MessageBroker]:
    """A broker of this test's own on a free port; ``MESSAGE_BROKER_URL`` names it
    until it stops."""
    started = MessageBroker(broker_config)
    started.start_sync()
    try:
        monkeypatch.setenv(URL_ENV, _url_of(started))
        yield started
    finally:
        started.stop_sync()


def _url_of(broker: MessageBroker) -> str:
    host = broker.host if broker.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"tcp://{host}:{broker.port}"


@pytest.fixture
def broker_sync_client(broker: MessageBroker) -> Iterator[SyncBrokerClient]:
    """A connected synchronous client of ``broker``."""
    with SyncBrokerClient(CLIENT_ID, url=_url_of(broker)) as client:
        yield client


if HAS_PYTEST_ASYNCIO:

    @pytest_asyncio.fixture
    async def broker_client(broker: MessageBroker) -> AsyncIterator[BrokerClient]:
        """A connected asyncio client of ``broker``, on the test's event loop."""
        async with BrokerClient(CLIENT_ID, url=_url_of(broker)) as client:
            yield client

else:  # pragma: no cover - depends on the environment

    @pytest.fixture
    def broker_client() -> None:
        """Needs pytest-asyncio, which is not installed."""
        pytest.fail("the broker_client fixture needs pytest-asyncio: pip install pytest-asyncio")
