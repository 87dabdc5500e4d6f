"""AHKBridge: scripts as child processes, relayed to the broker through their standard
streams. A Python stand-in child speaks the lines in most tests; real AutoHotkey in
the last ones."""

from __future__ import annotations

import asyncio
import shutil
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from message_broker import BrokerClient, BrokerConfig, Message, MessageBroker
from message_broker.ahk_bridge import AHKBridge

from support import SUPPORT, TESTS
from support.autohotkey import LIBRARY
from support.readme import readme_blocks

CHILD = SUPPORT / "bridge_child.py"
SCRIPTS = Path(__file__).parent / "ahk"
TEXT = 'Grüße "quoted" back\\slash 日本語 🎉\nnew line'


class Setup:
    def __init__(self, client: BrokerClient, bridge: AHKBridge) -> None:
        self.client = client
        self.bridge = bridge
        self.seen: asyncio.Queue[Message] = asyncio.Queue()
        self._other: list[Message] = []

    async def next_on(self, topic: str, timeout: float = 30) -> Message:
        """The next message on ``topic``. Messages on other topics are kept for later:
        the bridge and a script publish on connections of their own, so their messages
        may arrive in either order."""
        for index, message in enumerate(self._other):
            if message.topic == topic:
                return self._other.pop(index)
        while True:
            message = await asyncio.wait_for(self.seen.get(), timeout)
            if message.topic == topic:
                return message
            self._other.append(message)


@pytest.fixture
def require_token() -> bool:
    """Whether the broker of `setup` requires its token; a test parametrizes it."""
    return False


@pytest.fixture
async def setup(require_token: bool) -> AsyncIterator[Setup]:
    config = BrokerConfig(host="127.0.0.1", port=0, require_token=require_token)
    async with (
        MessageBroker(config) as broker,
        BrokerClient("ahk_bridge", host="127.0.0.1", port=broker.port or 0) as client,
    ):
        bridge = AHKBridge(broker_client=client, executable=[sys.executable], options=[])
        await bridge.start()
        setup = Setup(client, bridge)
        await client.subscribe(["scripts.#", "child.#", "bridged.#"], setup.seen.put_nowait)
        try:
            yield setup
        finally:
            # The bridge of the test: ahk_bridge replaces the first one.
            await setup.bridge.stop()


async def test_a_script_lives_talks_and_ends(setup: Setup) -> None:
    client, bridge = setup.client, setup.bridge
    await client.subscribe("py.svc", lambda msg: {"doubled": msg.payload["n"] * 2})
    script = await bridge.run_script(CHILD, "echo", "ärg 1", script_id="saw1")

    started = await setup.next_on("scripts.saw1.started")
    assert started.payload["pid"] == script.pid and started.sender == "ahk_bridge"
    ready = await setup.next_on("child.ready")
    assert ready.payload == {"args": ["ärg 1"]}
    assert ready.sender == "ahk_bridge/saw1", "each script has a connection of its own"

    status = await client.request("scripts.status", {"script_id": "saw1"})
    assert status["running"] is True and status["pid"] == script.pid
    assert (await client.request("scripts.status", {"script_id": "nope"}))["running"] is False

    payload = {"text": TEXT, "list": [1, 2.5, None, True], "big": 2**60}
    await client.publish("child.in", payload)
    out = await setup.next_on("child.out")
    assert out.payload["payload"] == payload and out.payload["sender"] == "ahk_bridge"
    assert await client.request("child.svc", {"q": TEXT}) == {"echo": {"q": TEXT}}

    # The script's own requests: answered, and no responders as an error line.
    await client.publish("child.in", "ask")
    asked = (await setup.next_on("child.out")).payload
    assert asked["answer"]["result"] == {"doubled": 4}
    assert asked["missing"]["error"]["code"] == -32003

    await client.publish("child.in", "quit")
    stopped = await setup.next_on("scripts.saw1.stopped")
    assert stopped.payload["exit_code"] == 0 and stopped.payload["pid"] == script.pid
    assert await script.wait(5) == 0
    status = await client.request("scripts.status", {"script_id": "saw1"})
    assert status["running"] is False and status["exit_code"] == 0
    everything = await client.request("scripts.status", {})
    assert [s["script_id"] for s in everything["scripts"]] == ["saw1"]


async def test_a_crashing_script_is_reported_and_the_bridge_goes_on(setup: Setup) -> None:
    await setup.bridge.run_script(CHILD, "crash", script_id="crasher")
    assert (await setup.next_on("child.crashing")).payload == "now"
    stopped = (await setup.next_on("scripts.crasher.stopped")).payload
    assert stopped["exit_code"] == 3
    assert "boom: something went wrong" in stopped["stderr"]
    # The same id runs again once the first is gone.
    await setup.bridge.run_script(CHILD, "echo", script_id="crasher")
    assert (await setup.next_on("child.ready")).sender == "ahk_bridge/crasher"


async def test_garbage_is_reported_and_answered(setup: Setup) -> None:
    script = await setup.bridge.run_script(CHILD, "garbage")
    error = (await setup.next_on("scripts.bridge_child.error")).payload
    assert error["line"] == "hello, this is not JSON" and "not JSON" in error["error"]
    answers = (await setup.next_on("child.answers")).payload
    assert answers["invalid"]["error"]["code"] == -32600
    assert answers["unknown"]["error"]["code"] == -32601
    assert answers["bad_params"]["error"]["code"] == -32602
    assert answers["reserved"]["error"]["code"] == -32602
    assert "reserved" in answers["reserved"]["error"]["message"]
    assert await script.wait(10) == 0
    assert script.errors == 2


async def test_stopping_escalates_to_terminate(setup: Setup) -> None:
    script = await setup.bridge.run_script(CHILD, "stubborn", script_id="stubborn")
    await setup.next_on("child.ready")
    code = await setup.bridge.stop_script("stubborn", timeout=0.5)
    assert code != 0 and not script.running
    assert (await setup.next_on("scripts.stubborn.stopped")).payload["exit_code"] == code


async def test_bad_calls_are_refused_clearly(setup: Setup, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no script"):
        await setup.bridge.run_script(tmp_path / "missing.ahk")
    with pytest.raises(ValueError, match="topic segment"):
        await setup.bridge.run_script(CHILD, "echo", script_id="a.b")
    await setup.bridge.run_script(CHILD, "echo", script_id="twice")
    with pytest.raises(KeyError, match="no script 'other'"):
        await setup.bridge.stop_script("other")
    with pytest.raises(ValueError, match="already running"):
        await setup.bridge.run_script(CHILD, "echo", script_id="twice")


async def test_stop_ends_every_script(setup: Setup) -> None:
    scripts = [await setup.bridge.run_script(CHILD, "echo", script_id=f"s{n}") for n in range(3)]
    for _ in scripts:
        await setup.next_on("child.ready")
    # Each sees the end of its input and leaves on its own.
    await setup.bridge.stop()
    assert all(not s.running and s.exit_code == 0 for s in scripts)


async def test_a_script_that_stops_reading_is_a_slow_client_of_the_broker(
    tmp_path: Path,
) -> None:
    """The relay reads a script's connection only as fast as the script reads: the
    broker's bound for a slow client applies, and nothing is dropped in between."""
    config = BrokerConfig(host="127.0.0.1", port=0, max_queue_size=50)
    go = tmp_path / "go"
    async with (
        MessageBroker(config) as broker,
        BrokerClient("ahk_bridge", host="127.0.0.1", port=broker.port or 0) as client,
        AHKBridge(broker_client=client, executable=[sys.executable], options=[]) as bridge,
    ):
        setup = Setup(client, bridge)
        patterns = ["child.ready", "child.counted", "system.client.slow"]
        await client.subscribe(patterns, setup.seen.put_nowait)
        script = await bridge.run_script(CHILD, "stall", str(go), script_id="stall")
        await setup.next_on("child.ready")
        # 64 MiB, far more than the pipes and socket buffers between the broker and
        # the script hold, from another process: this one stays free to read.
        flood = 4000
        publisher = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "support.burst_publisher", str(broker.port)],
            *["child.flood", str(flood), "16384"],
            cwd=TESTS,
        )
        try:
            assert await asyncio.wait_for(publisher.wait(), 60) == 0
        finally:
            if publisher.returncode is None:
                publisher.kill()
                await publisher.wait()
        slow = (await setup.next_on("system.client.slow")).payload
        assert slow["client_id"] == "ahk_bridge/stall", slow
        status = await client.request("status", {})
        (stalled,) = [c for c in status["clients"] if c["client_id"] == "ahk_bridge/stall"]
        dropped = stalled["dropped"]
        assert 0 < dropped < flood
        go.touch()
        # child.end is itself dropped while the script's queue is full: sent until
        # the script has caught up and answers.
        for _ in range(60):
            await client.publish("child.end", None)
            try:
                counted = (await setup.next_on("child.counted", timeout=0.5)).payload
                break
            except asyncio.TimeoutError:
                continue
        else:
            raise AssertionError(f"no child.counted; stderr: {list(script.stderr)}")
        # Whatever the broker did not drop reached the script, in order.
        assert counted == {"count": flood - dropped, "in_order": True}, (counted, dropped)
        assert await script.wait(10) == 0


@pytest.mark.parametrize("require_token", [True])
async def test_scripts_connect_to_a_broker_that_requires_its_token(setup: Setup) -> None:
    """With no configuration: the bridge sends the token its client finds."""
    await setup.bridge.run_script(CHILD, "echo", script_id="tokened")
    assert (await setup.next_on("child.ready")).sender == "ahk_bridge/tokened"


async def test_scripts_connect_with_the_token_given_to_the_bridge_client(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = BrokerConfig(host="127.0.0.1", port=0, require_token=True)
    async with MessageBroker(config) as broker:
        # Nothing to find: the token given to the client is the only one.
        monkeypatch.setenv("MESSAGE_BROKER_RUNTIME_DIR", str(tmp_path))
        port = broker.port or 0
        async with (
            BrokerClient("ahk_bridge", host="127.0.0.1", port=port, token=broker.token) as client,
            AHKBridge(broker_client=client, executable=[sys.executable], options=[]) as bridge,
        ):
            setup = Setup(client, bridge)
            await client.subscribe("child.ready", setup.seen.put_nowait)
            await bridge.run_script(CHILD, "echo", script_id="given")
            assert (await setup.next_on("child.ready")).sender == "ahk_bridge/given"


@pytest.mark.skipif(sys.platform == "win32", reason="the local socket is a Unix socket")
async def test_scripts_connect_over_the_local_socket_when_the_bridge_client_does() -> None:
    config = BrokerConfig(host="127.0.0.1", port=0, require_token=True)
    async with (
        MessageBroker(config) as broker,
        BrokerClient("ahk_bridge", url=f"unix://{broker.local_socket}") as client,
        AHKBridge(broker_client=client, executable=[sys.executable], options=[]) as bridge,
    ):
        setup = Setup(client, bridge)
        await client.subscribe("child.ready", setup.seen.put_nowait)
        await bridge.run_script(CHILD, "echo", script_id="local")
        assert (await setup.next_on("child.ready")).sender == "ahk_bridge/local"


# -- real AutoHotkey ---------------------------------------------------------------------


@pytest.fixture
async def ahk_bridge(setup: Setup, ahk: Any, monkeypatch: pytest.MonkeyPatch) -> Setup:
    """The bridge, running real AutoHotkey (under Wine here, in the test's Wine prefix
    and display)."""
    for name, value in ahk.env.items():
        monkeypatch.setenv(name, value)
    await setup.bridge.stop()
    setup.bridge = AHKBridge(broker_client=setup.client, executable=ahk.launcher)
    await setup.bridge.start()
    return setup


async def test_real_autohotkey_under_the_bridge(ahk_bridge: Setup) -> None:
    setup = ahk_bridge
    script = await setup.bridge.run_script(SCRIPTS / "bridged.ahk", "ärg")
    started = await setup.next_on("scripts.bridged.started")
    assert started.payload["pid"] == script.pid
    ready = await setup.next_on("bridged.ready")
    assert ready.payload == {"args": ["ärg"]} and ready.sender == "ahk_bridge/bridged"
    assert (await setup.client.request("scripts.status", {"script_id": "bridged"}))["running"]

    await setup.client.publish("bridged.in", {"text": TEXT})
    assert (await setup.next_on("bridged.out")).payload == {
        "text": TEXT,
        "length": len(TEXT.encode("utf-16-le")) // 2,
    }
    assert await setup.client.request("bridged.svc", {"n": 20}) == {"doubled": 40}
    error = (await setup.next_on("scripts.bridged.error")).payload
    assert error["line"] == "a line that is not JSON"
    stopped = (await setup.next_on("scripts.bridged.stopped")).payload
    assert stopped["exit_code"] == 0

    broken = await setup.bridge.run_script(SCRIPTS / "broken.ahk")
    stopped = (await setup.next_on("scripts.broken.stopped")).payload
    assert stopped["exit_code"] == 2 and stopped["pid"] == broken.pid
    assert "Missing" in stopped["stderr"], stopped


@pytest.mark.parametrize("require_token", [True])
async def test_real_autohotkey_under_the_bridge_of_a_broker_that_requires_its_token(
    ahk_bridge: Setup,
) -> None:
    setup = ahk_bridge
    await setup.bridge.run_script(SCRIPTS / "bridged.ahk")
    assert (await setup.next_on("bridged.ready")).sender == "ahk_bridge/bridged"
    await setup.client.publish("bridged.in", {"text": TEXT})
    assert (await setup.next_on("bridged.out")).payload["text"] == TEXT
    assert await setup.client.request("bridged.svc", {"n": 1}) == {"doubled": 2}
    assert (await setup.next_on("scripts.bridged.stopped")).payload["exit_code"] == 0


async def queue_status(client: BrokerClient, name: str) -> dict[str, Any]:
    queues = (await client.request("status", {}))["queues"]
    return next(queue for queue in queues if queue["name"] == name)


async def test_a_bridged_script_confirms_publishes_and_settles_deliveries(
    ahk_bridge: Setup,
) -> None:
    setup, client = ahk_bridge, ahk_bridge.client
    # A durable queue that stores the script's qos=1 message, and a full one that
    # refuses it.
    stored: asyncio.Queue[Message] = asyncio.Queue()
    await client.subscribe(
        "bridged.stored", stored.put_nowait, queue="bridged_stored", durable=True
    )
    await client.subscribe(
        "bridged.full", lambda msg: None, queue="bridged_full", durable=True, max_length=1
    )
    await client.unsubscribe(queue="bridged_full")
    await client.publish("bridged.full", "filler", qos=1)

    script = await setup.bridge.run_script(SCRIPTS / "bridged_queue.ahk")
    ready = (await setup.next_on("bridged.ready")).payload
    assert ready["refused"] == -32011, ready
    assert ready["huge"] == -32004, "passed on to the broker, which refuses it"
    kept = await asyncio.wait_for(stored.get(), 30)
    assert kept.id == ready["stored"] and kept.payload == {"n": 1}

    # Given back once (nack), then acknowledged: settled on the broker.
    await client.publish("bridged.work", {"item": 1}, qos=1)
    acked = (await setup.next_on("bridged.acked")).payload
    assert acked == {
        "payload": {"item": 1},
        "queue": "bridged_work",
        "counts": [1, 2],
        "redelivered": 1,
        "settled": [1, 1],
    }
    work = await queue_status(client, "bridged_work")
    assert (work["acked"], work["redelivered"], work["in_flight"], work["depth"]) == (1, 1, 0, 0)

    # Never settled: in flight while the script runs, back in the queue once it ends.
    await client.publish("bridged.work", {"item": 2}, qos=1)
    assert (await setup.next_on("bridged.holding")).payload == {"payload": {"item": 2}}
    assert (await queue_status(client, "bridged_work"))["in_flight"] == 1
    await client.publish("bridged.quit", {})
    stopped = (await setup.next_on("scripts.bridged_queue.stopped")).payload
    assert stopped["exit_code"] == 0, stopped
    assert not script.running
    redelivered: asyncio.Queue[Message] = asyncio.Queue()
    async with BrokerClient("worker", host=client.host, port=client.port) as worker:
        await worker.subscribe(
            "bridged.work", redelivered.put_nowait, queue="bridged_work", durable=True
        )
        again = await asyncio.wait_for(redelivered.get(), 10)
    assert again.payload == {"item": 2} and again.delivery_count == 2


async def test_the_readme_bridged_example_works_as_written(
    ahk_bridge: Setup, tmp_path: Path
) -> None:
    setup = ahk_bridge
    snippet = readme_blocks("### AHKBridge: scripts run by a Python program")[0]
    shutil.copy(LIBRARY, tmp_path)
    (tmp_path / "watcher.ahk").write_text(textwrap.dedent(snippet), encoding="utf-8")
    await setup.client.subscribe("jobs.seen", setup.seen.put_nowait)
    script = await setup.bridge.run_script(tmp_path / "watcher.ahk")
    # Published until the script has subscribed and answers.
    for _ in range(60):
        message_id = await setup.client.publish("jobs.created", {"n": 1})
        try:
            seen = await setup.next_on("jobs.seen", timeout=0.5)
            break
        except asyncio.TimeoutError:
            continue
    else:
        raise AssertionError(f"no jobs.seen; stderr: {list(script.stderr)}")
    assert seen.sender == "ahk_bridge/watcher"
    assert seen.payload["id"] == message_id or seen.payload["id"].startswith(
        message_id.rsplit("-", 1)[0]
    )
    await setup.bridge.stop_script("watcher", timeout=2)
    assert not script.running
    stopped = await setup.next_on("scripts.watcher.stopped")
    assert stopped.payload["exit_code"] == script.exit_code


async def test_the_readme_queue_example_works_as_written(ahk_bridge: Setup, tmp_path: Path) -> None:
    setup = ahk_bridge
    snippet = readme_blocks("### AHKBridge: scripts run by a Python program")[1]
    shutil.copy(LIBRARY, tmp_path)
    (tmp_path / "orders.ahk").write_text(textwrap.dedent(snippet), encoding="utf-8")
    await setup.client.subscribe("shipping.requested", setup.seen.put_nowait)
    script = await setup.bridge.run_script(tmp_path / "orders.ahk")
    # The queue exists once the script has subscribed: published until it answers.
    for n in range(60):
        await setup.client.publish("orders.new", {"id": n}, qos=1)
        try:
            shipping = await setup.next_on("shipping.requested", timeout=0.5)
            break
        except asyncio.TimeoutError:
            continue
    else:
        raise AssertionError(f"no shipping.requested; stderr: {list(script.stderr)}")
    assert shipping.sender == "ahk_bridge/orders" and shipping.payload == {"order": n}
    # The script handles one order at a time: once the next one is through, the
    # first one's acknowledgement has reached the broker.
    await setup.client.publish("orders.new", {"id": "next"}, qos=1)
    assert (await setup.next_on("shipping.requested")).payload == {"order": "next"}
    orders = await queue_status(setup.client, "orders")
    assert orders["acked"] >= 1 and orders["acked"] + orders["in_flight"] == 2, orders
    assert orders["depth"] == 0, orders
    await setup.bridge.stop_script("orders", timeout=2)
    assert not script.running
