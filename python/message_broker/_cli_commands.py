"""The client commands of ``message-broker`` (pub, sub, request, reply, status, queues,
bench): each a short-lived client of a running broker, its errors one line each (see
message_broker._cli)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from message_broker._cli import (
    EXIT_INTERRUPTED,
    EXIT_OUTPUT_CLOSED,
    EXIT_REFUSED,
    EXIT_USAGE,
    MAX_PREFETCH,
    URL_ENV,
)
from message_broker.client import BrokerClient
from message_broker.config import DEFAULT_HOST, DEFAULT_PORT
from message_broker.errors import BrokerError, NotConnectedError
from message_broker.message import Message


class CommandError(Exception):
    """Ends a command with one line on standard error and ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class OutputClosed(Exception):
    """Standard output was closed by its reader (``message-broker sub x | head -1``)."""


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


def run_client_command(args: argparse.Namespace) -> int:
    """Runs a client command (pub, sub, request, reply, status, queues, bench) to its
    exit code: every error is one line on standard error."""
    report_in_one_line()
    try:
        return asyncio.run(connect_and_carry_out(args))
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


async def connect_and_carry_out(args: argparse.Namespace) -> int:
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
