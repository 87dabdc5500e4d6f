"""The pytest plugin the package ships: its fixtures, in test runs of their own."""

from __future__ import annotations

import sys

import pytest

from message_broker import URL_ENV

from support import REPOSITORY
from support.readme import readme_blocks

pytest_plugins = ["pytester"]

# The plugin is loaded by name: it may not be installed as an entry point in this run
# (and when it is, loading it by name again is a no-op).
PLUGIN = ("-p", "message_broker.pytest_plugin")


@pytest.fixture
def pytester(pytester: pytest.Pytester) -> pytest.Pytester:
    """A test run of its own, configured for pytest-asyncio as its users configure it."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester


def test_the_plugin_is_declared_as_a_pytest11_entry_point():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - depends on the Python version
        import tomli as tomllib
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["entry-points"]["pytest11"] == {
        "message_broker.pytest_plugin": "message_broker.pytest_plugin"
    }


def test_the_fixtures_give_each_test_a_broker_and_connected_clients(pytester):
    pytester.makepyfile(
        """
        import asyncio
        import os
        import pytest
        from message_broker import BrokerClient, MessageBroker
        from message_broker.sync import SyncBrokerClient

        ports = []

        def test_broker(broker):
            assert isinstance(broker, MessageBroker) and broker.is_running
            assert broker.host == "127.0.0.1" and broker.port not in ports
            ports.append(broker.port)
            assert os.environ["MESSAGE_BROKER_URL"] == f"tcp://127.0.0.1:{broker.port}"

        def test_a_broker_per_test(broker):
            assert ports and broker.port not in ports

        @pytest.mark.asyncio
        async def test_broker_client(broker, broker_client):
            assert isinstance(broker_client, BrokerClient) and broker_client.is_connected
            inbox = await broker_client.subscribe("t.*")
            await broker_client.publish("t.x", 1)
            assert (await inbox.next_msg(timeout=5)).payload == 1
            assert [c["client_id"] for c in broker.status()["clients"]] == ["test-client"]

        def test_broker_sync_client(broker_sync_client):
            assert isinstance(broker_sync_client, SyncBrokerClient)
            assert broker_sync_client.request("status", {})["client_count"] == 1

        @pytest.mark.asyncio
        async def test_as_the_integration_test_of_the_spec_writes_it(broker):
            client = BrokerClient("test")
            await client.connect()
            received = []
            await client.subscribe(["test.*"], lambda m: received.append(m))
            await client.publish("test.msg", {"data": "hello"})
            for _ in range(200):
                if received:
                    break
                await asyncio.sleep(0.05)
            assert received[0].payload["data"] == "hello"
            await client.disconnect()
        """
    )
    result = pytester.runpytest(*PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)


def test_the_broker_stops_and_the_variable_goes_after_the_test(pytester, monkeypatch):
    monkeypatch.delenv(URL_ENV, raising=False)
    pytester.makepyfile(
        """
        import os

        seen = []

        def test_uses_it(broker):
            seen.append(broker)

        def test_afterwards():
            assert not seen[0].is_running
            assert "MESSAGE_BROKER_URL" not in os.environ
        """
    )
    result = pytester.runpytest(*PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_fixtures_are_listed_and_the_plugin_can_be_turned_off(pytester):
    pytester.makepyfile("def test_nothing():\n    pass\n")
    listed = pytester.runpytest(*PLUGIN, "--fixtures", "-p", "no:cacheprovider")
    for fixture in ("broker", "broker_config", "broker_client", "broker_sync_client"):
        listed.stdout.re_match_lines([rf"^{fixture} -- .*message_broker.pytest_plugin.*"])
    pytester.makepyfile(test_uses="def test_uses(broker):\n    pass\n")
    off = pytester.runpytest("-p", "no:message_broker.pytest_plugin", "-p", "no:cacheprovider")
    off.assert_outcomes(passed=1, errors=1)
    off.stdout.fnmatch_lines(["*fixture 'broker' not found*"])


def test_the_readme_example_runs_as_written(pytester):
    test_app, conftest = readme_blocks("### Testing your app with pytest", "python")
    pytester.makepyfile(test_app=test_app)
    pytester.makeconftest(conftest)
    result = pytester.runpytest(*PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
