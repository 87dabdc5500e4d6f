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
import asyncio
import contextlib
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from message_broker import __version__
from message_broker.broker import MessageBroker
from message_broker.client import BrokerClient
from message_broker.config import DEFAULT_HOST, DEFAULT_PORT, BrokerConfig
from message_broker.errors import BrokerError, NotConnectedError
from message_broker.message import Message

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


class CommandError(Exception):
    """Ends a command with one line on standard error and ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class OutputClosed(Exception):
    """Standard output was closed by its reader (``message-broker sub x | head -1``)."""


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
    report_in_one_line()
    try:
        return asyncio.run(run_client_command(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except CommandError as error:
        print(f"message-broker: {error}", file=sys.stderr)
        return error.exit_code
    except OutputClosed:
        # Nothing more can be written; keep the interpreter's last flush quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OUTPUT_CLOSED
    except Exception as error:  # a command never ends in a traceback
        print(f"message-broker: unexpected {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_REFUSED


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


class OneLineFormatter(logging.Formatter):
    """A log record as one line, its exception reduced to its message."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"message-broker: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            line += f": {record.exc_info[1]!r}"
        return line


def report_in_one_line() -> None:
    """What the library logs while a command runs: only errors, one line each. The
    commands report what matters (an unreachable broker, a refusal) themselves."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter())
    logging.basicConfig(level=logging.ERROR, handlers=[handler])


def endpoint(args: argparse.Namespace) -> str:
    """Where the command connects: --url, else --host/--port, else $MESSAGE_BROKER_URL,
    else the default address. Always a URL, so that nothing else decides."""
    if args.url is not None:
        return args.url
    if args.host is None and args.port is None and os.environ.get(URL_ENV):
        return os.environ[URL_ENV]
    host = DEFAULT_HOST if args.host is None else args.host
    port = DEFAULT_PORT if args.port is None else args.port
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def notice(text: str) -> None:
    print(f"message-broker: {text}", file=sys.stderr, flush=True)


class CommandClient(BrokerClient):
    """The commands' client: hears what the library would log, to report it in one
    line (or to fail the command with it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.report_reconnections = False
        self.connect_failure: str | None = None
        self.publish_failures: list[BrokerError] = []
        self._connected_before = False

    def _on_connected(self) -> None:
        super()._on_connected()
        if self._connected_before and self.report_reconnections:
            notice("reconnected")
        self._connected_before = True

    def _on_disconnected(self, reason: str, reconnecting: bool) -> None:
        super()._on_disconnected(reason, reconnecting)
        if reconnecting and self.report_reconnections:
            notice(f"disconnected ({reason}); reconnecting")

    def _on_connect_failed(self, reason: str, code: int | None) -> None:
        super()._on_connect_failed(reason, code)
        self.connect_failure = reason

    def _on_publish_failed(self, message_id: str, error: BrokerError) -> None:
        super()._on_publish_failed(message_id, error)
        self.publish_failures.append(error)

    def _on_problem(self, report: str) -> None:
        super()._on_problem(report)
        notice(report)


def make_client(args: argparse.Namespace, client_id: str) -> CommandClient:
    try:
        return CommandClient(client_id, url=endpoint(args), token=args.token, connect_retries=1)
    except (TypeError, ValueError) as error:
        raise CommandError(str(error), EXIT_USAGE) from None


def unreachable(client: CommandClient, error: NotConnectedError) -> CommandError:
    """Refused by the broker (a wrong token, a bad client id), or not reached at all."""
    if error.code is not None:
        return CommandError(str(error))
    # The engine says "cannot connect to HOST:PORT: <why>"; the URL says the first part.
    why = re.sub(r"^cannot connect to \S+: ", "", client.connect_failure or "")
    detail = f": {why}" if why else ""
    return CommandError(f"cannot reach the broker at {client.url}{detail}")


async def run_client_command(args: argparse.Namespace) -> int:
    client_id = args.client_id or f"message-broker-{args.command}-{os.getpid()}"
    client = make_client(args, client_id)
    try:
        if args.command == "bench":
            from message_broker._bench import run_bench

            return await run_bench(client, args, lambda name: make_client(args, name))
        async with client:
            return await carry_out(client, args)
    except NotConnectedError as error:
        raise unreachable(client, error) from None
    except BrokerError as error:
        raise CommandError(str(error)) from None
    except (TypeError, ValueError) as error:
        # An argument only the library could check.
        raise CommandError(str(error), EXIT_USAGE) from None
    except OSError as error:
        raise CommandError(str(error)) from None


async def carry_out(client: CommandClient, args: argparse.Namespace) -> int:
    if args.command == "pub":
        message_id = await client.publish(
            args.topic,
            args.payload,
            qos=args.qos,
            ttl=args.ttl,
            retain=args.retain,
            headers=args.headers,
        )
        await client.disconnect()  # delivers it, and hears whether the broker refused it
        if client.publish_failures:
            raise client.publish_failures[0]
        print(message_id)
    elif args.command == "request":
        reply = await client.request(
            args.topic, args.payload, timeout=args.timeout, headers=args.headers
        )
        print(json.dumps(reply, ensure_ascii=False, indent=2))
    elif args.command == "status":
        status = await client.request("status", {})
        print(json.dumps(status, indent=2) if args.json else format_status(status))
    elif args.command == "queues":
        await manage_queues(client, args)
    elif args.command == "sub":
        client.report_reconnections = True
        await follow(client, args)
    elif args.command == "reply":
        client.report_reconnections = True
        await answer_requests(client, args)
    return 0


# -- sub and reply -----------------------------------------------------------------------
def write_line(line: str) -> None:
    try:
        print(line, flush=True)
    except BrokenPipeError:
        raise OutputClosed from None


def format_message(msg: Message, *, as_json: bool) -> str:
    if as_json:
        record: dict[str, Any] = {
            "topic": msg.topic,
            "payload": msg.payload,
            "sender": msg.sender,
            "id": msg.id,
            "timestamp": msg.timestamp,
            "retained": msg.retained,
        }
        for name in ("headers", "reply_to", "queue"):
            if getattr(msg, name):
                record[name] = getattr(msg, name)
        if msg.queue:
            record["delivery_count"] = msg.delivery_count
        return json.dumps(record, ensure_ascii=False)
    stamp = time.strftime("%H:%M:%S", time.localtime(msg.timestamp))
    millis = int(msg.timestamp % 1 * 1000)
    marks = ""
    if msg.retained:
        marks += "  [retained]"
    if msg.redelivered:
        marks += f"  [delivery {msg.delivery_count}]"
    if msg.headers:
        marks += f"  headers {json.dumps(msg.headers, ensure_ascii=False)}"
    payload = json.dumps(msg.payload, ensure_ascii=False)
    return f"{stamp}.{millis:03d}  {msg.topic}  from {msg.sender}{marks}  {payload}"


class Countdown:
    """Counts what a command handles and ends it after ``count`` (never, for None), or
    when standard output is closed."""

    def __init__(self, count: int | None) -> None:
        self.left = count
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def over(self) -> bool:
        return self.done.done()

    def show(self, msg: Message, *, as_json: bool) -> None:
        try:
            write_line(format_message(msg, as_json=as_json))
        except OutputClosed as closed:
            self.done.set_exception(closed)
            raise
        if self.left is not None:
            self.left -= 1
            if self.left == 0:
                self.done.set_result(None)


async def follow(client: CommandClient, args: argparse.Namespace) -> None:
    if args.queue is not None or args.durable:
        await follow_queue(client, args)
        return
    countdown = Countdown(args.count)

    def show(msg: Message) -> None:
        if not countdown.over:
            with contextlib.suppress(OutputClosed):
                countdown.show(msg, as_json=args.json)

    # A terminal that watches never keeps a request waiting for an answer it will not
    # give: a request nobody else hears fails at once with "no responders".
    await client.subscribe(args.patterns, show, passive=True)
    await countdown.done


async def follow_queue(client: CommandClient, args: argparse.Namespace) -> None:
    """Takes messages from a queue one at a time, each acknowledged once shown (when
    the next is asked for); what it was handed and did not show goes back to the
    queue when it stops consuming, for the queue's other consumers, with no further
    delivery to this command."""
    countdown = Countdown(args.count)
    prefetch = min(args.count, MAX_PREFETCH) if args.count else None
    subscription = await client.subscribe(
        args.patterns, queue=args.queue, durable=args.durable, prefetch=prefetch
    )
    try:
        async for msg in subscription:
            try:
                countdown.show(msg, as_json=args.json)
            except OutputClosed:
                break  # not acknowledged: it goes back to the queue
            if countdown.over:
                msg.ack()
                break
    finally:
        await subscription.unsubscribe()
    await countdown.done


async def answer_requests(client: CommandClient, args: argparse.Namespace) -> None:
    countdown = Countdown(args.count)

    async def answer(msg: Message) -> None:
        if msg.reply_to is None or countdown.over:
            return  # a plain message asks for no answer
        # Published to the reply address, so that any value answers, null included.
        await client.publish(msg.reply_to, args.value)
        # Answered; if the output is closed, the countdown ends the command.
        with contextlib.suppress(OutputClosed):
            countdown.show(msg, as_json=args.json)

    await client.subscribe(args.topic, answer, queue=args.queue)
    await countdown.done


# -- status and queues -------------------------------------------------------------------
def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Columns padded to their widest cell; the last one is left as it is."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]))
    return lines


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
    lines.extend(table(header, rows))
    return "\n".join(lines)


def format_queues(queues: list[dict[str, Any]]) -> str:
    if not queues:
        return "no queues"
    header = ("QUEUE", "DURABLE", "READY", "IN FLIGHT", "CONSUMERS", "PATTERNS")
    rows = [
        (
            q["name"],
            "yes" if q["durable"] else "no",
            str(q["depth"]),
            str(q["in_flight"]),
            str(q["consumers"]),
            " ".join(q["patterns"]),
        )
        for q in queues
    ]
    return "\n".join(table(header, rows))


async def manage_queues(client: CommandClient, args: argparse.Namespace) -> None:
    if args.action == "purge":
        purged = await client.purge_queue(args.name)
        print(f"queue {args.name}: {purged} message(s) purged")
    elif args.action == "delete":
        held = await client.delete_queue(args.name)
        print(f"queue {args.name}: deleted, with {held} message(s)")
    else:
        queues = (await client.request("status", {}))["queues"]
        print(json.dumps(queues, indent=2) if args.json else format_queues(queues))


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


if __name__ == "__main__":
    sys.exit(main())
