"""The ``message-broker`` command (also ``python -m message_broker``).

``message-broker`` with no command runs the broker (``serve``). The other commands
are small clients for people at a terminal::

    message-broker pub TOPIC JSON          publish one message (JSON '-': standard input)
    message-broker sub PATTERN...          print messages as they arrive (--json for machines)
    message-broker request TOPIC [JSON]    send a request and print the reply
    message-broker reply TOPIC JSON        answer requests on TOPIC with JSON
    message-broker status                  the broker's clients and counters, as a table
    message-broker queues [purge|delete NAME]
                                           list the queues, or empty or delete one
    message-broker bench                   a quick throughput and latency check

They find the broker at ``--url`` (``tcp://HOST:PORT``, or the Unix socket), else
``--host``/``--port``, else ``$MESSAGE_BROKER_URL``, and its token in the broker's
runtime file unless ``--token`` or ``MESSAGE_BROKER_TOKEN`` gives one. Every error is
one line on standard error; the exit code is 1 when the broker refused or could not be
reached, 2 for bad arguments, and 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from message_broker import __version__
from message_broker.broker import MessageBroker
from message_broker.config import DEFAULT_HOST, DEFAULT_PORT, BrokerConfig

COMMANDS = ("serve", "pub", "sub", "request", "reply", "status", "queues", "bench")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
URL_ENV = "MESSAGE_BROKER_URL"
# The broker's bound on a request's timeout, in seconds.
MAX_REQUEST_TIMEOUT = 3600.0
MAX_PREFETCH = 1000
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# What a shell reports for a program killed by SIGPIPE: the reader went away.
EXIT_OUTPUT_CLOSED = 141


class Parser(argparse.ArgumentParser):
    """Refuses bad arguments with one line and exit code 2, not the usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


# -- argument types ----------------------------------------------------------------------
def _port(lowest: int) -> Callable[[str], int]:
    def port(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            number = -1
        if not lowest <= number <= 65535:
            raise argparse.ArgumentTypeError(
                f"a port is a number from {lowest} to 65535, got {text!r}"
            )
        return number

    return port


def _number(
    kind: type,
    *,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
) -> Callable[[str], Any]:
    """A number of ``kind`` within bounds, refused by argparse otherwise."""

    def number(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value):
            whole = "a whole number" if kind is int else "a finite number"
            raise argparse.ArgumentTypeError(f"must be {whole}, got {text!r}")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be more than {above:g}, got {text}")
        if at_least is not None and value < at_least:
            raise argparse.ArgumentTypeError(f"must be at least {at_least:g}, got {text}")
        if at_most is not None and value > at_most:
            raise argparse.ArgumentTypeError(f"must be at most {at_most:g}, got {text}")
        return value

    return number


# How JSON text can start; anything else was meant as text.
_JSON_START = re.compile(r"\s*([-\d{\[\"]|true\b|false\b|null\b)")


def _json_argument(text: str) -> Any:
    """A JSON value; ``-`` reads it from standard input."""
    where = "standard input" if text == "-" else repr(text)
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except ValueError as error:
        if _JSON_START.match(text) or not text.strip():
            raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {where}") from None
        quoted = json.dumps(text.strip(), ensure_ascii=False)
        raise argparse.ArgumentTypeError(
            f"not valid JSON: {where}; the payload is JSON, so text must be quoted as a "
            f"JSON string: '{quoted}'"
        ) from None


def _headers_argument(text: str) -> dict[str, str]:
    try:
        headers = json.loads(text)
    except ValueError:
        headers = None
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise argparse.ArgumentTypeError(
            f'headers are a JSON object of strings, as in \'{{"trace": "abc"}}\', got {text!r}'
        )
    return headers


# -- the parser --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="message-broker",
        description="A local message broker: pub/sub and request/response over TCP and a "
        "Unix socket only its user can open.",
    )
    parser.add_argument("--version", action="version", version=f"message-broker {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_serve(commands)

    def client_command(name: str, help: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help, description=help)
        where = command.add_argument_group("which broker")
        where.add_argument(
            "--url",
            help="tcp://HOST:PORT, or a Unix socket (unix:///PATH or the path) "
            f"(default: ${URL_ENV} unless --host or --port is given, "
            f"else tcp://{DEFAULT_HOST}:{DEFAULT_PORT})",
        )
        where.add_argument("--host", help=f"broker host (default {DEFAULT_HOST})")
        where.add_argument("--port", type=_port(1), help=f"broker port (default {DEFAULT_PORT})")
        where.add_argument(
            "--token",
            help="the broker's token (default: $MESSAGE_BROKER_TOKEN, else the runtime file "
            "of a broker on this machine); other users can see a command line, so prefer "
            "the environment variable",
        )
        where.add_argument(
            "--client-id", help="client id (default: message-broker-<command>-<pid>)"
        )
        return command

    pub = client_command("pub", "publish one message; prints its id")
    pub.add_argument("topic")
    pub.add_argument(
        "payload",
        type=_json_argument,
        help="the payload as JSON, e.g. '{\"job_id\": 1}' or '\"text\"'; - reads it from "
        "standard input",
    )
    pub.add_argument(
        "--qos",
        type=int,
        choices=(0, 1),
        default=0,
        help="1: wait until every durable queue it matches has stored it (default 0)",
    )
    pub.add_argument(
        "--retain",
        action="store_true",
        help="keep it as the topic's current state for later subscribers (an empty "
        "payload, '\"\"' or null, clears it)",
    )
    pub.add_argument(
        "--ttl",
        type=_number(float, at_least=0),
        default=0.0,
        help="seconds after which queues and the retained store drop it (default 0: never)",
    )
    pub.add_argument(
        "--headers", type=_headers_argument, help="a JSON object of strings sent beside it"
    )

    sub = client_command("sub", "print messages matching patterns as they arrive")
    sub.add_argument("patterns", nargs="+", metavar="PATTERN")
    sub.add_argument("--json", action="store_true", help="one JSON object per line, for machines")
    sub.add_argument("--count", type=_number(int, at_least=1), help="exit after this many messages")
    sub.add_argument(
        "--queue",
        metavar="NAME",
        help="join queue NAME: each message goes to one of its consumers, and is "
        "acknowledged once printed",
    )
    sub.add_argument(
        "--durable",
        action="store_true",
        help="the queue keeps messages while no consumer is connected",
    )

    request = client_command("request", "send a request and print the reply")
    request.add_argument("topic")
    request.add_argument(
        "payload",
        type=_json_argument,
        nargs="?",
        default={},
        help="the request as JSON (default {}); - reads it from standard input",
    )
    request.add_argument(
        "--timeout",
        type=_number(float, above=0, at_most=MAX_REQUEST_TIMEOUT),
        default=5.0,
        help=f"seconds to wait for the reply, at most {MAX_REQUEST_TIMEOUT:g} (default 5)",
    )
    request.add_argument(
        "--headers", type=_headers_argument, help="a JSON object of strings sent beside it"
    )

    reply = client_command(
        "reply", "answer every request on TOPIC with VALUE, until --count or Ctrl-C"
    )
    reply.add_argument("topic", metavar="TOPIC", help="a topic, or a pattern")
    reply.add_argument(
        "value",
        type=_json_argument,
        metavar="VALUE",
        help="the answer as JSON; - reads it from standard input",
    )
    reply.add_argument(
        "--count", type=_number(int, at_least=1), help="exit after answering this many"
    )
    reply.add_argument(
        "--queue",
        metavar="NAME",
        help="share the requests with the other responders of queue NAME",
    )
    reply.add_argument("--json", action="store_true", help="print requests as JSON lines")

    status = client_command("status", "show the broker's clients and counters")
    status.add_argument("--json", action="store_true", help="the whole status document")

    queues = client_command("queues", "list the queues, or purge or delete one")
    queues.add_argument(
        "action",
        nargs="?",
        choices=("list", "purge", "delete"),
        default="list",
        help="list (the default); purge NAME drops its waiting messages and keeps it; "
        "delete NAME removes it with its messages",
    )
    queues.add_argument("name", nargs="?", metavar="NAME")
    queues.add_argument("--json", action="store_true", help="list the queues as JSON")

    bench = client_command(
        "bench",
        "a quick throughput and latency check: one publisher and K subscribers in this "
        "process, against a running broker",
    )
    bench.add_argument(
        "--messages",
        type=_number(int, at_least=1, at_most=10_000_000),
        default=10_000,
        help="messages to publish (default 10000)",
    )
    bench.add_argument(
        "--size",
        type=_number(int, at_least=0, at_most=16 << 20),
        default=128,
        help="bytes of payload per message (default 128)",
    )
    bench.add_argument(
        "--subscribers",
        type=_number(int, at_least=0, at_most=100),
        default=1,
        help="subscribers, each on its own connection (default 1)",
    )
    bench.add_argument(
        "--rate",
        type=_number(float, above=0),
        help="messages per second to publish (default: as fast as possible); latency is "
        "meaningful below the broker's limit",
    )
    bench.add_argument(
        "--timeout",
        type=_number(float, above=0, at_most=3600),
        default=60.0,
        help="seconds the whole run may take (default 60)",
    )
    bench.add_argument("--topic", help="the topic (default: bench.<pid>)")
    return parser


def add_serve(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the broker (the default command)")
    serve.add_argument("--config", metavar="FILE", help="settings from a .toml or .json file")
    serve.add_argument("--host", help=f"interface to listen on (default {BrokerConfig.host})")
    serve.add_argument(
        "--port", type=_port(0), help=f"TCP port, 0 for any free one (default {BrokerConfig.port})"
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
        "--http-port",
        type=int,
        metavar="PORT",
        help="serve the explorer page, monitoring (/varz, /metrics, ...), HTTP access and "
        "WebSocket on 127.0.0.1 at this port (0: a free one); prints the page's address",
    )
    serve.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="lowest level of log records shown (default INFO)",
    )


# -- running a command -------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # `message-broker --port 0` means `message-broker serve --port 0`.
    top_level = (*COMMANDS, "-h", "--help", "--version")
    if not args_list or args_list[0] not in top_level:
        args_list.insert(0, "serve")
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "serve":
        return serve(args)
    check_combinations(parser, args)
    # The client commands are imported only to run one: the broker runs without
    # asyncio and the client, and is the smaller for it.
    from message_broker._cli_commands import run_client_command

    return run_client_command(args)


def check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses (exit 2) what each option allows alone but not together."""
    command = f"{parser.prog} {args.command}"

    def refuse(message: str) -> NoReturn:
        parser.exit(EXIT_USAGE, f"{command}: {message} (see {command} --help)\n")

    if args.url is not None and (args.host is not None or args.port is not None):
        refuse("--url names the broker already: leave out --host and --port")
    if args.command == "sub" and args.durable and args.queue is None and args.client_id is None:
        refuse(
            "--durable needs --queue NAME (or a fixed --client-id, which names the queue): "
            "otherwise every run makes a new queue"
        )
    if args.command == "queues":
        if args.action == "list" and args.name is not None:
            refuse(f"to act on queue {args.name!r}, say purge or delete before its name")
        if args.action != "list" and args.name is None:
            refuse(f"queues {args.action} needs the queue's NAME")


# -- serve -------------------------------------------------------------------------------
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
                ("http_port", args.http_port),
            )
            if value is not None
        }
        config = config.replace(**overrides)
        broker = MessageBroker(config)
    except (OSError, ValueError, TypeError) as error:
        problem = str(error).removeprefix("invalid configuration: ")
        print(f"message-broker: invalid configuration: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        port = broker.start_sync()
    except OSError as error:
        print(f"message-broker: cannot start: {error}", file=sys.stderr)
        return EXIT_REFUSED

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
    if broker.http_url is not None:
        # The token rides in the fragment, which the browser keeps to itself.
        print(f"  explorer page (open it in this user's browser): {broker.http_url}", flush=True)
    # A timed wait, so that signal handlers run promptly on every platform.
    while not stop.wait(0.5):
        pass
    broker.stop_sync(reason[0])
    print(f"message-broker stopped ({reason[0]})", flush=True)
    return 0
