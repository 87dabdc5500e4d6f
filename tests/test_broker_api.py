"""The Python API of the broker: MessageBroker and BrokerConfig."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from message_broker import BrokerConfig, MessageBroker
from message_broker.config import ConfigError

from support.wire import RawClient


async def test_async_start_stop_with_ephemeral_port():
    broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=0))
    assert broker.port is None
    await broker.start()
    try:
        assert broker.is_running
        assert broker.port and broker.port > 0
        with RawClient(broker.port) as client:
            assert client.connect("a")["client_id"] == "a"
    finally:
        await broker.stop()
    assert not broker.is_running
    assert broker.port is None


async def test_async_context_manager_and_status():
    async with MessageBroker(BrokerConfig(host="127.0.0.1", port=0)) as broker:
        with RawClient(broker.port) as client:
            client.connect("status-check")
            status = broker.status()
        assert status["client_count"] == 1
        assert status["clients"][0]["client_id"] == "status-check"
    assert not broker.is_running


async def test_stop_does_not_block_the_event_loop():
    broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=0))
    await broker.start()
    client = RawClient(broker.port)
    client.connect("lingering")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    await broker.stop()
    task.cancel()
    client.close()
    assert ticks >= 1


def test_hosted_from_a_plain_thread_without_asyncio():
    ports: list[int] = []

    def host() -> None:
        with MessageBroker(BrokerConfig(host="127.0.0.1", port=0)) as broker:
            ports.append(broker.port)
            with RawClient(broker.port) as client:
                client.connect("threaded")
                client.subscribe("t")
                client.publish("t", "hello")
                assert client.next_message()["payload"] == "hello"

    thread = threading.Thread(target=host)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert len(ports) == 1


def test_restart_on_the_same_port():
    broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=0))
    port = broker.start_sync()
    broker.stop_sync()
    again = MessageBroker(BrokerConfig(host="127.0.0.1", port=port))
    assert again.start_sync() == port
    again.stop_sync()


def test_start_twice_is_an_error(broker):
    with pytest.raises(RuntimeError, match="already running"):
        broker.start_sync()


def test_port_in_use_raises_oserror(broker):
    other = MessageBroker(BrokerConfig(host="127.0.0.1", port=broker.port))
    with pytest.raises(OSError, match=str(broker.port)):
        other.start_sync()


def test_stop_when_not_running_is_harmless():
    broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=0))
    broker.stop_sync()


def test_reading_broker_state_while_it_starts_never_deadlocks():
    broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=0))
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            _ = broker.is_running, broker.port, repr(broker)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    done = threading.Event()

    def cycle() -> None:
        for _ in range(30):
            broker.start_sync()
            broker.stop_sync()
        done.set()

    worker = threading.Thread(target=cycle, daemon=True)
    worker.start()
    finished = done.wait(60)
    stop.set()
    poller.join(10)
    assert finished, "start/stop deadlocked against a thread reading the broker's state"


@pytest.mark.parametrize(
    "changes,error,needle",
    [
        ({"port": 70000}, ValueError, "port"),
        ({"port": "15234"}, TypeError, "port"),
        ({"log_messages": 1}, TypeError, "log_messages"),
        ({"max_connections": True}, TypeError, "max_connections"),
        ({"max_queue_size": 0}, ValueError, "max_queue_size"),
        ({"max_message_size": 10}, ValueError, "max_message_size"),
        ({"heartbeat_interval": 0.0}, ValueError, "heartbeat_interval"),
        ({"heartbeat_timeout": 1.0}, ValueError, "heartbeat_timeout"),
        ({"frame_timeout": -1.0}, ValueError, "frame_timeout"),
        ({"host": ""}, ValueError, "host"),
    ],
)
def test_bad_config_is_named(changes, error, needle):
    with pytest.raises(error, match=needle):
        MessageBroker(BrokerConfig(**changes))


def test_seed_defaults():
    config = BrokerConfig()
    assert (config.host, config.port) == ("localhost", 15234)
    assert config.max_connections == 100
    assert config.heartbeat_interval == 5.0
    assert config.heartbeat_timeout == 30.0
    assert config.max_message_size == 1024 * 1024
    assert config.max_queue_size == 10000
    assert config.log_messages is False
    assert BrokerConfig(log_messages=True).log_messages is True


def test_config_files(tmp_path):
    toml = tmp_path / "broker.toml"
    toml.write_text('[broker]\nport = 0\nhost = "127.0.0.1"\nmax_queue_size = 50\n')
    assert BrokerConfig.from_file(toml) == BrokerConfig(host="127.0.0.1", port=0, max_queue_size=50)
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"port": 1234, "log_messages": True}))
    assert BrokerConfig.from_file(flat) == BrokerConfig(port=1234, log_messages=True)
    typo = tmp_path / "typo.toml"
    typo.write_text("prot = 1\n")
    with pytest.raises(ValueError, match=r"unknown setting.*prot"):
        BrokerConfig.from_file(typo)
    other = tmp_path / "broker.ini"
    other.write_text("")
    with pytest.raises(ValueError, match=r"\.toml or \.json"):
        BrokerConfig.from_file(other)


def config_error(path, text: str) -> ConfigError:
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        BrokerConfig.from_file(path)
    assert raised.value.path == str(path)
    return raised.value


def test_config_file_syntax_errors_name_the_file_and_line(tmp_path):
    toml = config_error(tmp_path / "broker.toml", 'host = "127.0.0.1"\n\nport = = 1\n')
    assert str(toml).startswith(f"{tmp_path / 'broker.toml'}, line 3, column 8: ")
    assert toml.line == 3
    as_json = config_error(tmp_path / "broker.json", '{\n  "port": 0,\n  "host":\n}\n')
    assert str(as_json) == f"{tmp_path / 'broker.json'}, line 4, column 1: Expecting value"
    assert as_json.line == 4
    (tmp_path / "binary.toml").write_bytes(b'host = "a"\nport = "\xff"\n')
    with pytest.raises(ConfigError, match=r"binary\.toml, line 2: not UTF-8 text"):
        BrokerConfig.from_file(tmp_path / "binary.toml")


def test_config_file_entries_and_values_are_named_with_the_file(tmp_path):
    path = tmp_path / "broker.toml"
    queue = config_error(
        path,
        '[[queues]]\nname = "ok"\npatterns = ["a"]\ndurable = true\n'
        '[[queues]]\nname = "orders"\npatern = ["o.*"]\n',
    )
    message = str(queue)
    assert message.startswith(f'{path}: queues[1] (name "orders"): unknown field `patern`')
    assert "(did you mean patterns?)" in message
    assert "line" not in message, "no place in a JSON text the user never wrote"
    nameless = config_error(path, '[[queues]]\npatterns = ["o.*"]\n')
    assert str(nameless).startswith(f"{path}: queues[0]: missing field `name`")
    rule = config_error(path, '[[permissions]]\nclient = "x"\npublish = { alow = ["a"] }\n')
    assert str(rule).startswith(f'{path}: permissions[0] (client "x"): unknown field `alow`')
    assert "(did you mean allow?)" in str(rule)
    value = config_error(path, "max_queue_size = 0\n")
    assert str(value) == f"{path}: max_queue_size must be at least 1"
    wrong_type = config_error(path, 'port = "15234"\n')
    assert str(wrong_type).startswith(f"{path}: BrokerConfig.port must be int")
    typo = config_error(path, "max_conections = 5\n")
    assert "unknown setting(s) max_conections (did you mean max_connections?)" in str(typo)


def test_config_file_top_level_keys_and_a_broker_table_are_merged(tmp_path):
    path = tmp_path / "broker.toml"
    path.write_text(
        'log_messages = true\n[broker]\nport = 0\nhost = "127.0.0.1"\n'
        '[[permissions]]\nclient = "x"\npublish = { deny = ["a.#"] }\n'
    )
    config = BrokerConfig.from_file(path)
    assert (config.host, config.port, config.log_messages) == ("127.0.0.1", 0, True)
    assert config.permissions == [{"client": "x", "publish": {"deny": ["a.#"]}}]
    both = config_error(path, 'port = 1\n[broker]\nport = 2\nhost = "h"\n')
    assert str(both) == f"{path}: port given both in [broker] and outside it"


def test_broker_logs_reach_python_logging(start_broker, caplog):
    with caplog.at_level(logging.DEBUG, logger="message_broker"):
        broker = start_broker()
        with RawClient(broker.port) as client:
            client.connect("logged")
        broker.stop_sync("test over")
        # Records travel through the extension's logging thread.
        for _ in range(500):
            if any("shutting down" in r.getMessage() for r in caplog.records):
                break
            threading.Event().wait(0.01)
    messages = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert any(
        name == "message_broker.server" and level == "INFO" and "listening" in text
        for name, level, text in messages
    ), messages
    assert any("client connected" in text and "logged" in text for _, _, text in messages)
    assert any("shutting down" in text and "test over" in text for _, _, text in messages)


FORKED_LOGGING = textwrap.dedent(
    """
    import logging, os, sys, time
    from message_broker import BrokerConfig, MessageBroker

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("message_broker").addHandler(handler)
    logging.getLogger("message_broker").setLevel(logging.INFO)

    def run_a_broker():
        broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=0))
        broker.start_sync()
        broker.stop_sync("run over")
        for _ in range(200):
            if any("shutting down" in text for text in records):
                return True
            time.sleep(0.02)
        return False

    print("parent-logged" if run_a_broker() else "parent-silent", flush=True)
    pid = os.fork()
    if pid == 0:
        records.clear()
        print("child-logged" if run_a_broker() else "child-silent", flush=True)
        sys.exit(0)  # the exit hooks run, in the child too
    _, status = os.waitpid(pid, 0)
    print(f"child-exit-{os.waitstatus_to_exitcode(status)}", flush=True)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on Windows")
def test_a_forked_child_logs_through_a_logging_thread_of_its_own():
    # The parent's logging thread does not exist in the child: the child starts one at
    # its first record, and leaves the parent's alone at exit.
    result = subprocess.run(
        [sys.executable, "-c", FORKED_LOGGING], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["parent-logged", "child-logged", "child-exit-0"], (
        result.stdout + result.stderr
    )
    assert "Exception ignored" not in result.stderr and "Panic" not in result.stderr, result.stderr


SCRIPT_LEAVES_BROKER_RUNNING = textwrap.dedent(
    """
    import asyncio, socket, struct, json
    from message_broker import MessageBroker, BrokerConfig

    async def main():
        broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=0, log_messages=True))
        await broker.start()
        sock = socket.create_connection(("127.0.0.1", broker.port))
        body = json.dumps({"jsonrpc": "2.0", "method": "connect",
                           "params": {"client_id": "x"}, "id": 1}).encode()
        sock.sendall(struct.pack(">I", len(body)) + body)
        sock.recv(4096)
        if STOP:
            await broker.stop()
        # else: exit with the broker running, a client connected and logs in flight

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("stop", [True, False])
def test_scripts_exit_cleanly_with_or_without_stop(stop):
    """Interpreter exit must never crash while broker threads are busy (exit code 0,
    every time)."""
    script = f"STOP = {stop}\n" + SCRIPT_LEAVES_BROKER_RUNNING
    failures = []
    for _ in range(25):
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        if result.returncode != 0:
            failures.append((result.returncode, result.stderr[-2000:]))
    assert not failures, failures


async def test_start_leaves_the_event_loop_running_while_it_binds(monkeypatch):
    broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=0))
    server = broker._server
    binding, ticked = threading.Event(), threading.Event()

    class BindsOnceTheLoopHasRun:
        """The extension's broker, whose start waits until the loop has run meanwhile:
        a start that held the loop would wait in vain, and fail."""

        def start(self) -> int:
            binding.set()
            assert ticked.wait(10), "the event loop stood still while the broker started"
            return server.start()

        def __getattr__(self, name: str) -> object:
            return getattr(server, name)

    monkeypatch.setattr(broker, "_server", BindsOnceTheLoopHasRun())

    async def tick() -> None:
        for _ in range(10_000):
            if binding.is_set():
                ticked.set()
                return
            await asyncio.sleep(0.001)

    ticker = asyncio.create_task(tick())
    try:
        await broker.start()
        assert broker.is_running and ticked.is_set()
    finally:
        ticker.cancel()
        await broker.stop()
