"""The ``message-broker`` command (also ``python -m message_broker``).

``message-broker`` with no command runs the broker (``serve``). The other commands
are small clients for people at a terminal::

    message-broker pub TOPIC JSON          publish one message
    message-broker sub PATTERN...          print messages as they arrive (--json for machines)
    message-broker request TOPIC JSON      send a request and print the reply
    message-broker status                  the broker's clients and counters, as a table

They find the broker at ``--host``/``--port`` (or ``--url``, which also takes the Unix
socket), and its token in the broker's runtime file unless ``--token`` or
``MESSAGE_BROKER_TOKEN`` gives one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from message_broker import __version__
from message_broker.broker import MessageBroker
from message_broker.client import BrokerClient
from message_broker.config import DEFAULT_HOST, DEFAULT_PORT, BrokerConfig
from message_broker.errors import BrokerError, NotConnectedError
from message_broker.message import Message

COMMANDS = ("serve", "pub", "sub", "request", "status")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="message-broker",
        description="A local message broker: pub/sub and request/response over TCP and a "
        "Unix socket only its user can open.",
    )
    parser.add_argument("--version", action="version", version=f"message-broker {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the broker (the default command)")
    serve.add_argument("--config", metavar="FILE", help="settings from a .toml or .json file")
    serve.add_argument("--host", help=f"interface to listen on (default {BrokerConfig.host})")
    serve.add_argument(
        "--port", type=int, help=f"TCP port, 0 for any free one (default {BrokerConfig.port})"
    )
    serve.add_argument(
        "--data-dir",
        metavar="DIR",
        help="keep durable queues and retained messages in DIR across restarts",
    )
    serve.add_argument(
        "--fsync",
        action="store_true",
        default=None,
        help="sync every commit to disk (survives power loss, slower)",
    )
    serve.add_argument(
        "--log-messages", action="store_true", default=None, help="log every published message"
    )
    serve.add_argument(
        "--require-token",
        action="store_true",
        default=None,
        help="TCP clients must send the token of the runtime file (always so off loopback)",
    )
    serve.add_argument(
        "--runtime-dir",
        metavar="DIR",
        help="where the runtime file (token) and the Unix socket go "
        "(default: $MESSAGE_BROKER_RUNTIME_DIR, else the user's runtime folder)",
    )
    serve.add_argument(
        "--no-local-socket",
        dest="local_socket",
        action="store_false",
        default=None,
        help="do not open the Unix socket (named pipe on Windows)",
    )
    serve.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="lowest level of log records shown (default INFO)",
    )

    def client_command(name: str, help: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help)
        command.add_argument(
            "--host", default=DEFAULT_HOST, help=f"broker host (default {DEFAULT_HOST})"
        )
        command.add_argument(
            "--port", type=int, default=DEFAULT_PORT, help=f"broker port (default {DEFAULT_PORT})"
        )
        command.add_argument(
            "--url",
            help="connect to tcp://HOST:PORT or to a Unix socket (unix:///PATH or the path) "
            "instead of --host and --port",
        )
        command.add_argument(
            "--token",
            help="the broker's token (default: $MESSAGE_BROKER_TOKEN, else the runtime file "
            "of a broker on this machine); other users can see a command line, so prefer "
            "the environment variable",
        )
        command.add_argument(
            "--client-id", help="client id (default: message-broker-<command>-<pid>)"
        )
        return command

    pub = client_command("pub", "publish one message")
    pub.add_argument("topic")
    pub.add_argument(
        "payload", type=_json_argument, help="the payload as JSON, e.g. '{\"job_id\": 1}'"
    )
    sub = client_command("sub", "print messages matching patterns as they arrive")
    sub.add_argument("patterns", nargs="+", metavar="PATTERN")
    sub.add_argument("--json", action="store_true", help="one JSON object per line, for machines")
    sub.add_argument("--count", type=int, help="exit after this many messages")
    request = client_command("request", "send a request and print the reply")
    request.add_argument("topic")
    request.add_argument("payload", type=_json_argument, nargs="?", default={})
    request.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    client_command("status", "show the broker's clients and counters")
    return parser


def _json_argument(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # `message-broker --port 0` means `message-broker serve --port 0`.
    top_level = (*COMMANDS, "-h", "--help", "--version")
    if not args_list or args_list[0] not in top_level:
        args_list.insert(0, "serve")
    args = build_parser().parse_args(args_list)
    if args.command == "serve":
        return serve(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(run_client_command(args))
    except KeyboardInterrupt:
        return 130


async def run_client_command(args: argparse.Namespace) -> int:
    client_id = args.client_id or f"message-broker-{args.command}-{os.getpid()}"
    try:
        client = BrokerClient(
            client_id,
            host=args.host,
            port=args.port,
            url=args.url,
            token=args.token,
            connect_retries=1,
        )
    except ValueError as error:
        print(f"message-broker: {error}", file=sys.stderr)
        return 2
    try:
        async with client:
            return await carry_out(client, args)
    except NotConnectedError as error:
        # Refused by the broker (a wrong token, a bad client id) or not reached at all.
        unreached = f"cannot reach the broker at {client.url}"
        reason = str(error) if error.code is not None else unreached
        print(f"message-broker: {reason}", file=sys.stderr)
        return 1


async def carry_out(client: BrokerClient, args: argparse.Namespace) -> int:
    try:
        if args.command == "pub":
            print(await client.publish(args.topic, args.payload))
        elif args.command == "request":
            reply = await client.request(args.topic, args.payload, timeout=args.timeout)
            print(json.dumps(reply, ensure_ascii=False, indent=2))
        elif args.command == "status":
            print(format_status(await client.request("status", {})))
        elif args.command == "sub":
            await follow(client, args.patterns, as_json=args.json, count=args.count)
        return 0
    except BrokerError as error:
        print(f"message-broker: {error}", file=sys.stderr)
        return 1


async def follow(
    client: BrokerClient, patterns: list[str], *, as_json: bool, count: int | None
) -> None:
    done = asyncio.get_running_loop().create_future()
    seen = 0

    def show(msg: Message) -> None:
        nonlocal seen
        if as_json:
            line = json.dumps(
                {
                    "topic": msg.topic,
                    "payload": msg.payload,
                    "sender": msg.sender,
                    "id": msg.id,
                    "timestamp": msg.timestamp,
                },
                ensure_ascii=False,
            )
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(msg.timestamp))
            millis = int(msg.timestamp % 1 * 1000)
            payload = json.dumps(msg.payload, ensure_ascii=False)
            line = f"{stamp}.{millis:03d}  {msg.topic}  from {msg.sender}  {payload}"
        print(line, flush=True)
        seen += 1
        if count is not None and seen >= count and not done.done():
            done.set_result(None)

    await client.subscribe(patterns, show)
    await done


def format_status(status: dict[str, Any]) -> str:
    messages = status["messages"]
    lines = [
        f"broker {status['broker_version']} on {status['host']}:{status['port']}, "
        f"up {status['uptime']:.0f} s, {status['client_count']} client(s)",
        "messages: " + ", ".join(f"{name} {value}" for name, value in messages.items()),
    ]
    security = status.get("security")
    if security:
        needs = {True: "token required", False: "no token"}
        transports = (
            f"{t['kind']} {t['address']} ({needs[t['token_required']]})"
            for t in security["transports"]
        )
        lines.append("transports: " + ", ".join(transports))
    lines.append("")
    header = ("CLIENT", "TYPE", "QUEUED", "DELIVERED", "DROPPED", "SUBSCRIPTIONS")
    rows = [
        (
            c["client_id"],
            c["client_type"] or "-",
            str(c["queued"]),
            str(c["delivered"]),
            str(c["dropped"]),
            " ".join(c["subscriptions"]) or "-",
        )
        for c in status["clients"]
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines)


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = BrokerConfig.from_file(args.config) if args.config else BrokerConfig()
        overrides = {
            name: value
            for name, value in (
                ("host", args.host),
                ("port", args.port),
                ("data_dir", args.data_dir),
                ("fsync", args.fsync),
                ("log_messages", args.log_messages),
                ("require_token", args.require_token),
                ("runtime_dir", args.runtime_dir),
                ("local_socket", args.local_socket),
            )
            if value is not None
        }
        config = config.replace(**overrides)
        broker = MessageBroker(config)
    except (OSError, ValueError, TypeError) as error:
        print(f"message-broker: invalid configuration: {error}", file=sys.stderr)
        return 2
    try:
        port = broker.start_sync()
    except OSError as error:
        print(f"message-broker: cannot start: {error}", file=sys.stderr)
        return 1

    stop = threading.Event()
    reason = ["stopped"]

    def request_stop(signum: int, _frame: object) -> None:
        reason[0] = f"received {signal.Signals(signum).name}"
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    if hasattr(signal, "SIGBREAK"):  # Ctrl-Break in a Windows console
        signal.signal(signal.SIGBREAK, request_stop)

    print(f"message-broker {__version__} listening on {broker.host}:{port}", flush=True)
    if broker.local_socket is not None:
        print(f"  local socket (this user only, no token): {broker.local_socket}", flush=True)
    required = broker.status()["security"]["require_token"]
    token = "required" if required else "sent by clients that find it"
    print(f"  token for TCP clients ({token}): in {broker.runtime_file}", flush=True)
    # A timed wait, so that signal handlers run promptly on every platform.
    while not stop.wait(0.5):
        pass
    broker.stop_sync(reason[0])
    print(f"message-broker stopped ({reason[0]})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
