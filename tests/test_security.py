"""A broker only its owner can use: the token of each start in an owner-only runtime
file, `require_token`, the Unix socket, and what another user on the machine can do."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from message_broker import (
    ERROR_CODES,
    AuthenticationError,
    BrokerClient,
    BrokerConfig,
    MessageBroker,
)

from support.readme import readme_blocks
from support.waiting import eventually
from support.wire import Closed, RawClient, error_code

UNAUTHORIZED = ERROR_CODES["UNAUTHORIZED"]
NOBODY = 65534


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A runtime folder of the test's own (short: it holds a socket)."""
    root = Path(tempfile.mkdtemp(prefix="mb-"))
    yield root / "run"
    subprocess.run(["rm", "-rf", str(root)], check=True)


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_runtime_file_is_the_owners_alone_and_gone_after_stop(start_broker, runtime_dir):
    broker = start_broker(runtime_dir=str(runtime_dir))
    assert broker.runtime_file == str(runtime_dir / f"broker-{broker.port}.json")
    assert mode(runtime_dir) == 0o700
    assert mode(broker.runtime_file) == 0o600
    assert os.stat(broker.runtime_file).st_uid == os.geteuid()
    assert broker.local_socket is not None
    assert stat.S_ISSOCK(os.stat(broker.local_socket).st_mode)
    assert mode(broker.local_socket) == 0o600
    info = json.loads(Path(broker.runtime_file).read_text())
    assert info["port"] == broker.port
    assert info["pid"] == os.getpid()
    assert info["token"] == broker.token
    assert len(info["token"]) == 64 and int(info["token"], 16) >= 0
    assert info["socket"] == broker.local_socket
    assert info["require_token"] is False
    runtime_file, local_socket = broker.runtime_file, broker.local_socket
    broker.stop_sync()
    assert not os.path.exists(runtime_file)
    assert not os.path.exists(local_socket)


def test_every_start_draws_a_new_token(start_broker, runtime_dir):
    first = start_broker(runtime_dir=str(runtime_dir))
    second = start_broker(runtime_dir=str(runtime_dir))
    assert first.token != second.token
    assert first.runtime_file != second.runtime_file


def test_a_premade_file_others_can_read_is_refused_and_left_alone(runtime_dir):
    port = free_port()
    runtime_dir.mkdir(mode=0o700, parents=True)
    premade = runtime_dir / f"broker-{port}.json"
    premade.write_text('{"token": "planted"}')
    premade.chmod(0o644)
    broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=port, runtime_dir=str(runtime_dir)))
    with pytest.raises(PermissionError, match="644") as refused:
        broker.start_sync()
    assert str(premade) in str(refused.value)
    assert not broker.is_running
    assert premade.read_text() == '{"token": "planted"}'
    assert mode(premade) == 0o644


def test_a_runtime_folder_others_can_enter_is_refused(runtime_dir):
    runtime_dir.mkdir(mode=0o755, parents=True)
    runtime_dir.chmod(0o755)
    broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=0, runtime_dir=str(runtime_dir)))
    with pytest.raises(PermissionError, match="755"):
        broker.start_sync()
    assert list(runtime_dir.iterdir()) == [], "nothing is written into it"


def test_a_socket_path_too_long_for_the_kernel_is_refused_clearly(tmp_path):
    deep = tmp_path / ("d" * 100)
    broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=0, runtime_dir=str(deep)))
    with pytest.raises(ValueError, match="local_socket"):
        broker.start_sync()
    broker = MessageBroker(
        BrokerConfig(host="127.0.0.1", port=0, runtime_dir=str(deep), local_socket=False)
    )
    broker.start_sync()
    try:
        assert broker.local_socket is None
        assert json.loads(Path(broker.runtime_file or "").read_text())["socket"] is None
    finally:
        broker.stop_sync()


@pytest.fixture
def guarded(start_broker: Callable[..., MessageBroker]) -> MessageBroker:
    """A broker that requires its token from TCP clients."""
    return start_broker(require_token=True)


def test_require_token_blocks_every_call_before_a_valid_connect(guarded):
    with RawClient(guarded.port) as client:
        for method, params in [
            ("ping", None),
            ("status", None),
            ("subscribe", {"patterns": ["#"]}),
            ("publish", {"topic": "a", "payload": 1}),
            ("request", {"topic": "a", "payload": 1}),
            ("ack", {"deliveries": [1]}),
            ("disconnect", None),
        ]:
            assert error_code(client.call(method, params)) == UNAUTHORIZED, method
        response = client.call("connect", {"client_id": "owner", "token": guarded.token})
        assert response["result"]["client_id"] == "owner"
        assert client.result("ping")["pong"] is True


@pytest.mark.parametrize("token", [None, "", "0" * 64, "not-even-hex"])
def test_a_missing_or_wrong_token_is_refused_and_the_connection_closed(guarded, token):
    params: dict[str, object] = {"client_id": "intruder"}
    if token is not None:
        params["token"] = token
    with RawClient(guarded.port) as client:
        response = client.call("connect", params)
        assert error_code(response) == UNAUTHORIZED
        assert "token" in response["error"]["message"]
        assert client.expect_closed() == []
    assert "intruder" not in {c["client_id"] for c in guarded.status()["clients"]}


def test_a_token_off_by_its_last_character_is_refused(guarded):
    assert guarded.token is not None
    wrong = guarded.token[:-1] + ("1" if guarded.token[-1] == "0" else "0")
    with RawClient(guarded.port) as client:
        refused = client.call("connect", {"client_id": "x", "token": wrong})
        assert error_code(refused) == UNAUTHORIZED
        with pytest.raises(Closed):
            client.recv(timeout=5)


def test_a_wrong_token_is_refused_even_where_none_is_required(broker):
    with RawClient(broker.port) as client:
        response = client.call("connect", {"client_id": "stale", "token": "ab" * 32})
        assert error_code(response) == UNAUTHORIZED
        client.expect_closed()
    with RawClient(broker.port) as client:
        assert client.call("connect", {"client_id": "plain"})["result"]["client_id"] == "plain"


async def test_an_unconfigured_client_of_the_same_user_reads_the_file_and_connects(guarded):
    # The suite points MESSAGE_BROKER_RUNTIME_DIR at its own folder, where the broker
    # wrote the file: exactly what a user's program finds in the user's folder.
    got: list[object] = []
    async with BrokerClient("reader", "127.0.0.1", guarded.port) as reader:
        await reader.subscribe(["news.*"], lambda msg: got.append(msg.payload))
        async with BrokerClient("writer", "127.0.0.1", guarded.port) as writer:
            await writer.publish("news.today", {"n": 1})
            await eventually(lambda: got == [{"n": 1}])


async def test_a_client_with_a_wrong_token_is_told_so(guarded):
    client = BrokerClient("wrong", "127.0.0.1", guarded.port, token="ab" * 32, connect_retries=0)
    assert await client.connect() is False
    with pytest.raises(AuthenticationError, match="token"):
        async with BrokerClient("wrong", "127.0.0.1", guarded.port, token="ab" * 32):
            pass


async def test_the_token_can_come_from_the_environment(guarded, monkeypatch, tmp_path):
    # No runtime file to be found: only the environment gives the token.
    monkeypatch.setenv("MESSAGE_BROKER_RUNTIME_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(AuthenticationError):
        async with BrokerClient("no-file", "127.0.0.1", guarded.port, connect_retries=0):
            pass
    monkeypatch.setenv("MESSAGE_BROKER_TOKEN", guarded.token or "")
    async with BrokerClient("from-env", "127.0.0.1", guarded.port) as client:
        assert client.is_connected


async def test_clients_of_the_unix_socket_need_no_token(guarded):
    assert guarded.local_socket is not None
    for url in (f"unix://{guarded.local_socket}", guarded.local_socket):
        async with BrokerClient("local", url=url) as client:
            assert client.url == f"unix://{guarded.local_socket}"
            assert (await client.request("status", {}))["client_count"] == 1


def test_status_names_the_transports_and_whether_they_need_the_token(guarded):
    security = guarded.status()["security"]
    assert security["require_token"] is True
    assert security["runtime_file"] == guarded.runtime_file
    kinds = {t["kind"]: t for t in security["transports"]}
    assert kinds["tcp"] == {
        "kind": "tcp",
        "address": f"127.0.0.1:{guarded.port}",
        "token_required": True,
    }
    assert kinds["unix"] == {
        "kind": "unix",
        "address": guarded.local_socket,
        "token_required": False,
    }


def test_bad_urls_are_refused_when_the_client_is_made():
    for url, needle in [
        ("unix://relative.sock", "absolute path"),
        ("tcp://localhost", "port"),
        ("http://localhost:80", "scheme"),
    ]:
        with pytest.raises(ValueError, match=needle):
            BrokerClient("app", url=url)


# -- another user on the same machine ------------------------------------------------------

# Run as that user by /usr/bin/python3 itself (a file every user can read), with the
# standard library only: what an unprivileged program on the machine could do.
PROBE = r"""
import json, socket, struct, sys
runtime_file, local_socket, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen = {}
try:
    open(runtime_file).read()
    seen["read_token_file"] = "read"
except OSError as error:
    seen["read_token_file"] = type(error).__name__
with socket.socket(socket.AF_UNIX) as unix:
    unix.settimeout(5)
    try:
        unix.connect(local_socket)
    except OSError as error:
        seen["unix_socket"] = type(error).__name__
    else:
        try:
            body = json.dumps({"jsonrpc": "2.0", "method": "ping", "id": 1}).encode()
            unix.sendall(struct.pack(">I", len(body)) + body)
            seen["unix_socket"] = "answered" if unix.recv(4) else "closed by the broker"
        except (BrokenPipeError, ConnectionResetError):
            seen["unix_socket"] = "closed by the broker"
with socket.create_connection(("127.0.0.1", port), timeout=5) as tcp:
    call = {"jsonrpc": "2.0", "method": "connect", "params": {"client_id": "x"}, "id": 1}
    body = json.dumps(call).encode()
    tcp.sendall(struct.pack(">I", len(body)) + body)
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
        chunk = tcp.recv(65536)
        if not chunk:
            break
        data += chunk
    seen["tcp_connect"] = json.loads(data[4:])["error"]["code"]
print(json.dumps(seen))
"""


def as_another_user(*args: str) -> dict[str, object]:
    if os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists():
        reason = "running a program as another user needs root and setpriv"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    command = [
        "/usr/bin/setpriv",
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        "/usr/bin/python3",
        "-I",
        "-c",
        PROBE,
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd="/")
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_another_user_can_neither_read_the_token_nor_use_the_socket(start_broker, runtime_dir):
    broker = start_broker(runtime_dir=str(runtime_dir), require_token=True)
    assert broker.runtime_file is not None and broker.local_socket is not None
    seen = as_another_user(broker.runtime_file, broker.local_socket, str(broker.port))
    assert seen == {
        "read_token_file": "PermissionError",
        "unix_socket": "PermissionError",
        "tcp_connect": UNAUTHORIZED,
    }


def test_the_file_and_socket_modes_hold_even_in_an_opened_folder(start_broker, runtime_dir):
    broker = start_broker(runtime_dir=str(runtime_dir), require_token=True)
    assert broker.runtime_file is not None and broker.local_socket is not None
    # Someone opens the folders for passing through: the file's and socket's own modes
    # still keep the other user out.
    for folder in (runtime_dir.parent, runtime_dir):
        folder.chmod(0o711)
    seen = as_another_user(broker.runtime_file, broker.local_socket, str(broker.port))
    assert seen["read_token_file"] == "PermissionError"
    assert seen["unix_socket"] == "PermissionError"
    # And with the socket itself opened too, the broker checks who is calling.
    os.chmod(broker.local_socket, 0o666)
    seen = as_another_user(broker.runtime_file, broker.local_socket, str(broker.port))
    assert seen["unix_socket"] == "closed by the broker"


def test_the_readme_security_example_configures_a_broker_that_runs():
    (example,) = readme_blocks("## Security", "python")
    namespace: dict[str, object] = {}
    exec(example, namespace)
    config = namespace["config"]
    assert isinstance(config, BrokerConfig)
    with MessageBroker(config.replace(host="127.0.0.1", port=0)) as broker:
        security = broker.status()["security"]
        assert security["require_token"] is True
        assert security["permission_rules"] == 2


def test_the_token_goes_only_to_the_address_the_broker_is_bound_to(guarded):
    # Another user listens on the broker's port at another loopback address (as one
    # could on ::1 beside 127.0.0.1): a client aimed there must not hand it the token.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.2", guarded.port))
        squatter.listen()
        squatter.settimeout(10)
        client = BrokerClient("victim", "127.0.0.2", guarded.port, connect_retries=0)
        connecting = threading.Thread(target=asyncio.run, args=(client.connect(),))
        connecting.start()
        try:
            conn, _ = squatter.accept()
            with conn:
                conn.settimeout(10)
                first = conn.recv(65536)
        finally:
            connecting.join(30)
    assert b'"connect"' in first and b"victim" in first
    assert b"token" not in first
    assert (guarded.token or "").encode() not in first


async def test_localhost_reaches_the_address_the_broker_wrote_down(guarded):
    async with BrokerClient("by-name", "localhost", guarded.port) as client:
        assert (await client.request("status", {}))["security"]["require_token"] is True


def test_a_second_connect_on_a_proven_connection_needs_no_token_again(guarded):
    with RawClient(guarded.port) as client:
        client.result("connect", {"client_id": "owner", "token": guarded.token})
        assert client.result("connect", {"client_id": "owner"})["client_id"] == "owner"
        assert client.result("ping")["pong"] is True


def test_tcp_clients_cannot_use_up_the_local_sockets_connections(start_broker):
    broker = start_broker(max_connections=2, require_token=True)
    held = [RawClient(broker.port) for _ in range(2)]
    try:
        with RawClient(broker.port) as third:
            assert error_code(third.recv()) == ERROR_CODES["TOO_MANY_CONNECTIONS"]
        with RawClient(unix=broker.local_socket) as owner:
            assert owner.result("connect", {"client_id": "owner"})["client_id"] == "owner"
    finally:
        for client in held:
            client.close()


def test_a_second_broker_on_the_same_port_keeps_off_the_first_ones_socket(
    start_broker, runtime_dir
):
    first = start_broker(runtime_dir=str(runtime_dir))
    second = MessageBroker(
        BrokerConfig(host="127.0.0.2", port=first.port or 0, runtime_dir=str(runtime_dir))
    )
    with pytest.raises(OSError, match="another broker"):
        second.start_sync()
    with RawClient(unix=first.local_socket) as client:
        assert client.result("connect", {"client_id": "still-here"})
