"""`python -m bench run [--peer nats] [...]`: the benchmark suite (see bench/__init__.py).

`python -m bench channels [...]`: the Channels layer beside channels_redis (see
bench/channels.py).

`python -m bench instructions [...]`: instructions per routed message, counted by
callgrind (see bench/instructions.py).

`python -m bench plot RESULTS.json`: how cost grows with subscribers and patterns, as a
PNG (see bench/plot.py).

`python -m bench role PEER ROLE ARGS_JSON` is how the runner starts one client role in
its own process; it is not meant to be typed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import channels, instructions, plot
from bench.common import RoleArgs, run_role
from bench.processes import PEERS


def build_parser() -> argparse.ArgumentParser:
    from bench.runner import WORKLOADS, Settings

    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the benchmark suite and print the table")
    run.add_argument(
        "--peer", choices=["nats"], help="also run every workload against nats-server + nats-py"
    )
    run.add_argument(
        "--only",
        type=lambda text: tuple(text.split(",")),
        default=(),
        metavar="NAMES",
        help=f"comma-separated workloads to run, of: {', '.join(WORKLOADS)} (default: all)",
    )

    def number(name: str, kind: type, help: str) -> None:
        default = getattr(defaults, name)
        flag = "--" + name.replace("_", "-")
        run.add_argument(flag, type=kind, default=default, help=f"{help} (default {default:,})")

    number("runs", int, "repetitions of each workload")
    number("messages", int, "messages for the 1->1 and wildcard workloads")
    number("fanout", int, "subscribers in the fan-out workload")
    number("fanout_messages", int, "messages published in the fan-out workload")
    number("topics", int, "topics the wildcard publisher cycles through")
    number("requests", int, "sequential requests timed")
    number("large_messages", int, "messages in the large-payload workload")
    number("large_size", int, "bytes of JSON per large message")
    number("idle_connections", int, "idle connections opened")
    number("wide_fanout_messages", int, "messages to the 100 subscribers (10 x 10) of fanout100")
    number("fanin_messages", int, "messages the 100 publishers (10 x 10) of fanin100 send")
    number("patterns", int, "other patterns held in patterns10k (a tenth in patterns1k)")
    number("loaded_seconds", float, "seconds of half-rate flood while requests are timed")
    number("settle", float, "seconds a subscriber waits for stragglers before counting loss")
    number("timeout", float, "seconds any one wait may take before the run is failed")
    run.add_argument("--output", type=Path, help="JSON file (default bench/results/...)")

    channels.add_parser(commands)
    instructions.add_parser(commands)
    plot.add_parser(commands)

    role = commands.add_parser("role", help="(internal) run one client role")
    role.add_argument("peer", choices=PEERS)
    role.add_argument("role")
    role.add_argument("args", help="RoleArgs as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    from bench import report
    from bench.processes import nats_server_path
    from bench.runner import WORKLOADS, Settings, run_suite

    unknown = [name for name in args.only if name not in WORKLOADS]
    if unknown:
        print(f"unknown workload(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    peers = ("ours", "nats") if args.peer == "nats" else ("ours",)
    if "nats" in peers:
        if nats_server_path() is None:
            print("nats-server not found: apt-get install -y nats-server", file=sys.stderr)
            return 2
        if importlib.util.find_spec("nats") is None:
            print("nats-py not found: pip install nats-py", file=sys.stderr)
            return 2
    fields = {name: getattr(args, name) for name in vars(Settings()) if hasattr(args, name)}
    settings = Settings(**{**fields, "peers": peers, "workloads": args.only})
    print(f"running {', '.join(settings.selected())} against {', '.join(peers)}", file=sys.stderr)
    try:
        results = asyncio.run(run_suite(settings))
    except KeyboardInterrupt:  # every process started has been stopped by then
        print("interrupted", file=sys.stderr)
        return 130
    rows = report.summarize(results)
    print()
    print(report.describe_settings(results))
    print(report.format_table(results, rows))
    failures = report.format_failures(results)
    if failures:
        print(failures)
    path = report.write_json(results, rows, args.output)
    print(f"\nJSON: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "role":
        module = importlib.import_module(f"bench.workloads_{args.peer}")
        roles = module.ROLES
        if args.role not in roles:
            print(f"unknown role {args.role!r}; known: {', '.join(roles)}", file=sys.stderr)
            return 2
        return run_role(roles[args.role], RoleArgs.from_json(args.args))
    if args.command == "channels":
        return channels.run(args)
    if args.command == "instructions":
        return instructions.run(args)
    if args.command == "plot":
        return plot.main(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
