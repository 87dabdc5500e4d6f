"""The ``message-broker`` command (also ``python -m message_broker``).

``message-broker`` with no command runs the broker; ``message-broker serve --help``
lists its options.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from message_broker import __version__
from message_broker.broker import MessageBroker
from message_broker.config import BrokerConfig

COMMANDS = ("serve",)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="message-broker",
        description="A local message broker: pub/sub and request/response over TCP.",
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
        "--log-messages", action="store_true", default=None, help="log every published message"
    )
    serve.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="lowest level of log records shown (default INFO)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # `message-broker --port 0` means `message-broker serve --port 0`.
    top_level = (*COMMANDS, "-h", "--help", "--version")
    if not args_list or args_list[0] not in top_level:
        args_list.insert(0, "serve")
    args = build_parser().parse_args(args_list)
    return serve(args)


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
                ("log_messages", args.log_messages),
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
    # A timed wait, so that signal handlers run promptly on every platform.
    while not stop.wait(0.5):
        pass
    broker.stop_sync(reason[0])
    print(f"message-broker stopped ({reason[0]})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
