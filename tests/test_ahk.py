"""clients/ahk/MessageBroker.ahk, run by real AutoHotkey v2 (under Wine on Linux)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import struct
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from message_broker import BrokerClient, BrokerConfig, BrokerError, Message, MessageBroker

from support.autohotkey import LIBRARY
from support.readme import readme_blocks

SCRIPTS = Path(__file__).parent / "ahk"
TEXT = 'Grüße "quoted" back\\slash 日本語 🎉\nnew line\ttab'


class Script:
    """A running AutoHotkey script whose output lines are collected."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        assert process.stdout is not None
        self._reader = asyncio.ensure_future(self._read(process.stdout))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            self.lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))

    async def exit_code(self, timeout: float = 30) -> int:
        # Not process.wait(): it also waits for the end of the output, which a helper
        # process Wine starts may hold open after the script is gone.
        deadline = asyncio.get_running_loop().time() + timeout
        while self.process.returncode is None:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the script is still running; it said {self.lines}")
            await asyncio.sleep(0.05)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reader), 2)
        return self.process.returncode

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._reader.cancel()
        transport = getattr(self.process, "_transport", None)
        if transport is not None:
            transport.close()


@pytest.fixture
async def run_script(ahk: Any) -> AsyncIterator[Any]:
    started: list[Script] = []

    async def run(
        script: str | Path, *args: str, env: Mapping[str, str | None] | None = None
    ) -> Script:
        """Starts ``script``; ``env`` changes its environment (None removes a variable)."""
        environment = dict(ahk.env)
        for name, value in (env or {}).items():
            if value is None:
                environment.pop(name, None)
            else:
                environment[name] = value
        process = await asyncio.create_subprocess_exec(
            *ahk.command(SCRIPTS / script, *args),
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        started.append(Script(process))
        return started[-1]

    yield run
    for script in started:
        await script.stop()


async def next_on(queue: asyncio.Queue[Message], topic: str, script: Script) -> Message:
    while True:
        try:
            message = await asyncio.wait_for(queue.get(), 30)
        except asyncio.TimeoutError:
            raise AssertionError(f"nothing on {topic}; the script said {script.lines}") from None
        if message.topic == topic:
            return message


async def test_a_script_subscribes_publishes_requests_and_answers(run_script: Any) -> None:
    config = BrokerConfig(host="127.0.0.1", port=0)
    async with (
        MessageBroker(config) as broker,
        BrokerClient("py", host="127.0.0.1", port=broker.port or 0) as client,
    ):
        seen: asyncio.Queue[Message] = asyncio.Queue()
        await client.subscribe("ahk.#", seen.put_nowait)
        await client.subscribe("py.double", lambda msg: {"n": msg.payload["n"] * 2})
        script = await run_script("roundtrip.ahk", str(broker.port))

        ready = await next_on(seen, "ahk.ready", script)
        assert ready.sender == "ahk_roundtrip"
        assert ready.payload["version"].startswith("2.")

        payload = {"text": TEXT, "nested": [1, {"k": "v"}], "n": 1.5, "t": True, "nul": None}
        await client.publish("ahk.in", payload)
        echo = (await next_on(seen, "ahk.out", script)).payload
        # AutoHotkey has no booleans or null: true arrives as 1 and null as "".
        assert echo["echo"] == {**payload, "t": 1, "nul": ""}
        assert echo["text"] == TEXT
        assert echo["length"] == len(TEXT.encode("utf-16-le")) // 2, "UTF-16 code units"
        assert echo["sender"] == "py" and echo["nested"] == "v"

        # A callback's return value answers a request.
        assert await client.request("ahk.svc.double", {"n": 4}) == {
            "doubled": 8,
            "topic": "ahk.svc.double",
        }
        # From inside a callback: a request of its own, no responders, a refusal.
        try:
            answer = await client.request("ahk.ask", {}, timeout=20)
        except BrokerError as error:
            raise AssertionError(f"{error}; the script said {script.lines}") from None
        assert answer["answer"] == {"n": 42}
        assert answer["missing"].startswith("-32003: no responders")
        assert answer["refused"] == -32602
        assert answer["gone"] == ["ahk.svc.*"]
        status = await client.request("status", {})
        (script_client,) = [c for c in status["clients"] if c["client_id"] == "ahk_roundtrip"]
        assert sorted(script_client["subscriptions"]) == ["ahk.ask", "ahk.in", "ahk.quit"]

        await client.publish("ahk.quit", {})
        assert await script.exit_code() == 0, script.lines
        assert script.lines[0].startswith("ping ")
        assert script.lines[-1] == "bye"


async def test_a_script_that_only_listens_hears_every_message(run_script: Any) -> None:
    """Messages that arrive while the script is still reading the ones before: each
    must wake it, though it calls the broker (and so reads) only when told to stop."""
    config = BrokerConfig(host="127.0.0.1", port=0)
    async with (
        MessageBroker(config) as broker,
        BrokerClient("py", host="127.0.0.1", port=broker.port or 0) as client,
    ):
        seen: asyncio.Queue[Message] = asyncio.Queue()
        await client.subscribe("listen.*", seen.put_nowait)
        script = await run_script("listener.ahk", str(broker.port))
        await next_on(seen, "listen.ready", script)
        # Irregular gaps of 0-3 ms: some messages come alone, some just as the script
        # has read the last one, some in bunches.
        gaps = random.Random(19)
        sent = 600
        for _ in range(sent):
            await client.publish("listen.tick", {})
            await asyncio.sleep(gaps.choice((0, 0, 0.001, 0.002, 0.003)))
        await client.publish("listen.done", {})
        total = await next_on(seen, "listen.total", script)
        assert total.payload == sent
        assert await script.exit_code() == 0, script.lines


def frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, ensure_ascii=False).encode()
    return struct.pack(">I", len(body)) + body


def note(topic: str, text: str) -> bytes:
    params = {"topic": topic, "payload": {"text": text}, "sender": "fake", "id": topic}
    return frame({"jsonrpc": "2.0", "method": "message", "params": params})


async def test_frames_split_across_reads_and_packed_into_one(run_script: Any) -> None:
    """A stand-in broker cuts frames at awkward places (inside the header, inside a
    multi-byte character) and packs several frames into one write."""
    finished: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def receive() -> dict[str, Any]:
            while True:
                (size,) = struct.unpack(">I", await reader.readexactly(4))
                message = json.loads(await reader.readexactly(size))
                if "id" in message:  # heartbeats are notifications
                    return message

        async def send_in_pieces(data: bytes, *cuts: int) -> None:
            start = 0
            for cut in (*cuts, len(data)):
                writer.write(data[start:cut])
                await writer.drain()
                start = cut
                await asyncio.sleep(0.15)

        try:
            connect = await receive()
            assert connect["method"] == "connect"
            assert connect["params"]["client_id"] == "ahk_frames"
            result = {"client_id": "ahk_frames", "heartbeat_interval": 60}
            await send_in_pieces(frame({"jsonrpc": "2.0", "result": result, "id": 1}), 1, 3, 9)
            subscribe = await receive()
            assert subscribe["params"] == {"patterns": ["t.#"]}
            reply = frame({"jsonrpc": "2.0", "result": {"subscribed": ["t.#"]}, "id": 2})
            writer.write(reply + note("t.one", "eins") + note("t.two", "zwei"))
            await writer.drain()
            third, fourth = note("t.three", "drei"), note("t.four", "vier 🎉 Grüße")
            cut = len(third) + fourth.index("🎉".encode()) + 2  # inside the emoji
            await send_in_pieces(third + fourth, cut)
            published = await receive()
            writer.write(frame({"jsonrpc": "2.0", "result": {"message_id": "x"}, "id": 3}))
            bye = await receive()
            writer.write(frame({"jsonrpc": "2.0", "result": {"disconnected": True}, "id": 4}))
            await writer.drain()
            finished.set_result((published, bye))
        except Exception as error:  # reported by the test below
            if not finished.done():
                finished.set_exception(error)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        script = await run_script("frames.ahk", str(port))
        try:
            published, bye = await asyncio.wait_for(finished, 60)
        except asyncio.TimeoutError:
            raise AssertionError(f"the script said {script.lines}") from None
        assert published["method"] == "publish"
        assert published["params"]["topic"] == "t.done"
        assert published["params"]["payload"] == {
            "received": [
                {"topic": "t.one", "text": "eins"},
                {"topic": "t.two", "text": "zwei"},
                {"topic": "t.three", "text": "drei"},
                {"topic": "t.four", "text": "vier 🎉 Grüße"},
            ]
        }
        assert bye["method"] == "disconnect"
        assert await script.exit_code() == 0, script.lines


async def test_the_readme_example_works_as_written(run_script: Any, tmp_path: Path) -> None:
    """Copied next to MessageBroker.ahk, as the README says."""
    shutil.copy(LIBRARY, tmp_path)
    example = tmp_path / "hotkeys.ahk"
    config = BrokerConfig(host="127.0.0.1", port=0)
    async with (
        MessageBroker(config) as broker,
        BrokerClient("py", host="127.0.0.1", port=broker.port or 0) as client,
    ):
        # As written but for the port: the default one stays free for other tests.
        text = readme_blocks("## AutoHotkey")[0]
        assert 'MessageBroker("hotkeys")' in text
        text = text.replace(
            'MessageBroker("hotkeys")', f'MessageBroker("hotkeys", , {broker.port})'
        )
        example.write_text(text, encoding="utf-8")
        seen: asyncio.Queue[Message] = asyncio.Queue()
        await client.subscribe("scripts.hotkeys.*", seen.put_nowait)
        script = await run_script(example)
        started = await next_on(seen, "scripts.hotkeys.started", script)
        assert started.sender == "hotkeys"
        answer = await client.request("scripts.hotkeys.status", {})
        assert answer == {"running": True, "pid": started.payload["pid"]}
        assert script.process.returncode is None, "it stays, waiting for hotkeys"


async def test_a_script_survives_payloads_that_are_odd_in_autohotkey(run_script: Any) -> None:
    """Numbers beyond a float's range, lone surrogates and a 5,000-digit integer, as a
    raw publisher sends them: each arrives, and the script goes on."""
    from support.wire import RawClient

    odd = ["1e999", "-1e400", '"\\ud800"', '"x\\udc00y"', '"\\udbff\\u0041"', "9" * 5000]
    async with (
        MessageBroker(BrokerConfig(host="127.0.0.1", port=0)) as broker,
        BrokerClient("py", host="127.0.0.1", port=broker.port or 0) as client,
    ):
        seen: asyncio.Queue[Message] = asyncio.Queue()
        await client.subscribe("ahk.#", seen.put_nowait)
        script = await run_script("odd.ahk", str(broker.port))
        await next_on(seen, "ahk.ready", script)
        raw = RawClient(broker.port or 0)
        try:
            raw.connect("nc")
            reports = []
            for text in [*odd, '"good"']:
                body = (
                    '{"jsonrpc":"2.0","method":"publish","params":{"topic":"odd.x","payload":%s}}'
                )
                raw.send_raw(raw.frame((body % text).encode()))
                reports.append((await next_on(seen, "ahk.odd", script)).payload)
        finally:
            raw.close()
        assert reports[0] == {"type": "Float", "text": "inf"}, reports
        assert reports[1] == {"type": "Float", "text": "-inf"}, reports
        assert reports[2] == {"type": "String", "units": [0xD800]}
        assert reports[3] == {"type": "String", "units": [0x78, 0xDC00, 0x79]}
        assert reports[4] == {"type": "String", "units": [0xDBFF, 0x41]}
        assert reports[5] == {"type": "Float", "text": "inf"}, "beyond 64 bits: a Float"
        assert reports[6] == {"type": "String", "units": [ord(c) for c in "good"]}
        await client.publish("odd_quit", {})
        assert await script.exit_code() == 0, script.lines


# -- a broker that requires its token -----------------------------------------------------


async def echo(client: BrokerClient, script: Script) -> None:
    """Publishes on ahk.token.in until the script echoes it: it subscribes once connected."""
    seen: asyncio.Queue[Message] = asyncio.Queue()
    await client.subscribe("ahk.token.out", seen.put_nowait)
    for _ in range(60):
        await client.publish("ahk.token.in", {"text": TEXT})
        try:
            echoed = await asyncio.wait_for(seen.get(), 0.5)
            break
        except asyncio.TimeoutError:
            continue
    else:
        raise AssertionError(f"no echo; the script said {script.lines}")
    assert echoed.sender == "ahk_token" and echoed.payload == {"text": TEXT}
    await client.unsubscribe("ahk.token.out")


async def leave(client: BrokerClient, script: Script) -> None:
    await client.publish("ahk.token.quit", {})
    assert await script.exit_code() == 0, script.lines


async def test_a_script_sends_the_token_in_message_broker_token(
    run_script: Any, ahk: Any, start_broker: Callable[..., MessageBroker], tmp_path: Path
) -> None:
    broker = start_broker(require_token=True)
    # No runtime file to be found: the token comes from the variable alone.
    env = {
        "MESSAGE_BROKER_TOKEN": broker.token,
        "MESSAGE_BROKER_RUNTIME_DIR": ahk.windows_path(tmp_path),
    }
    async with BrokerClient("py", host="127.0.0.1", port=broker.port or 0) as client:
        script = await run_script("token.ahk", str(broker.port), "find", env=env)
        await echo(client, script)
        await leave(client, script)
    # The variable goes to any broker, like the Python clients'.
    assert script.lines == [
        "connected; remote token from: MESSAGE_BROKER_TOKEN; "
        "other loopback address: MESSAGE_BROKER_TOKEN"
    ]


async def test_a_script_without_the_token_is_refused_saying_where_it_looked(
    run_script: Any, ahk: Any, start_broker: Callable[..., MessageBroker], tmp_path: Path
) -> None:
    broker = start_broker(require_token=True)
    empty = ahk.windows_path(tmp_path)
    env = {"MESSAGE_BROKER_TOKEN": None, "MESSAGE_BROKER_RUNTIME_DIR": empty}
    async with BrokerClient("py", host="127.0.0.1", port=broker.port or 0) as client:
        # No token found, then a wrong one given, then the right one given: each
        # refused connect leaves the client ready to connect again.
        args = ["find", "0" * 64, broker.token or ""]
        script = await run_script("token.ahk", str(broker.port), *args, env=env)
        await echo(client, script)
        await leave(client, script)
    assert len(script.lines) == 3, script.lines
    missing, wrong, connected = script.lines
    runtime_file = f"{empty}\\broker-{broker.port}.json"
    assert missing.startswith("refused -32013 connected=0: "), missing
    assert "missing or wrong: no token was found" in missing
    assert (
        f"looked for in the Token option, then MESSAGE_BROKER_TOKEN, then {runtime_file}" in missing
    )
    assert wrong.startswith("refused -32013 connected=0: "), wrong
    assert "the token from the Token option was refused" in wrong
    assert "wrong token" in wrong, "the broker's own reason"
    assert connected.startswith("connected")


async def test_a_script_finds_the_token_in_the_runtime_file_at_every_connect(
    run_script: Any, ahk: Any, start_broker: Callable[..., MessageBroker]
) -> None:
    broker = start_broker(require_token=True)
    port, first_token = broker.port or 0, broker.token
    assert broker.runtime_file is not None
    env = {
        "MESSAGE_BROKER_TOKEN": None,
        "MESSAGE_BROKER_RUNTIME_DIR": ahk.windows_path(Path(broker.runtime_file).parent),
    }
    async with BrokerClient("py", host="127.0.0.1", port=port) as client:
        script = await run_script("token.ahk", str(port), "find", env=env)
        await echo(client, script)
    # Started again, the broker has a new token, which the script's Connect() finds.
    broker.stop_sync()
    again = start_broker(port=port, require_token=True)
    assert again.token != first_token
    async with BrokerClient("py", host="127.0.0.1", port=port) as client:
        await echo(client, script)
        await leave(client, script)
    assert len(script.lines) == 3, script.lines
    # The file serves the broker on this machine only, never a remote host, nor a
    # listener on another loopback address than the broker's.
    nowhere = "connected; remote token from: nowhere; other loopback address: nowhere"
    assert script.lines[0] == nowhere
    assert script.lines[1].startswith("disconnected: ")
    assert script.lines[2] == "reconnected"


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "ahk"


async def test_the_examples_connect_to_the_port_given(run_script: Any) -> None:
    config = BrokerConfig(host="127.0.0.1", port=0)
    async with (
        MessageBroker(config) as broker,
        BrokerClient("py", host="127.0.0.1", port=broker.port or 0) as client,
    ):
        watcher = await run_script(EXAMPLES / "job_watcher.ahk", "--port", str(broker.port))
        publisher = await run_script(EXAMPLES / "hotkey_publisher.ahk", "--port", str(broker.port))

        async def clients() -> dict[str, Any]:
            status = await client.request("status", {})
            return {c["client_id"]: c for c in status["clients"]}

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not (
            "jobs.count" in (await clients()).get("job_watcher", {}).get("subscriptions", [])
            and "hotkey_publisher" in await clients()
        ):
            assert loop.time() < deadline, f"not connected: {watcher.lines} {publisher.lines}"
            await asyncio.sleep(0.1)
        await client.publish("jobs.created", {"job_id": 1})
        # Requests are answered in order after the job: it has been counted.
        assert await client.request("jobs.count", {}, timeout=20) == {"seen": 1}
