"""`python -m bench instructions`: instructions per routed message, counted by
callgrind, for the broker's hot path (a publish call parsed and routed to 1 and to 8
subscribers; `benches/instructions.rs`).

Counting instructions, not time, gives a figure that does not move with what else
the machine is doing: the same binary and inputs count the same. Each figure is the
difference between two runs (few and many messages) divided by the difference in
messages, so start-up and set-up cost nothing in it. The binary is built in release
mode with `cargo build --release --bench instructions`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "target" / "core"
RESULTS = Path(__file__).resolve().parent / "results"
COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def add_parser(commands: Any) -> None:
    """The `instructions` command of `python -m bench`."""
    parser = commands.add_parser(
        "instructions", help="instructions per routed message, counted by callgrind"
    )
    parser.add_argument(
        "--subscribers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 8],
        help="comma-separated subscriber counts (default 1,8)",
    )
    parser.add_argument(
        "--messages", type=int, default=2000, help="messages of the longer run (default 2,000)"
    )
    parser.add_argument("--output", type=Path, help="JSON file (default bench/results/...)")


def build() -> Path:
    """Builds the bench binary and returns its path."""
    env = {**os.environ, "CARGO_TARGET_DIR": str(TARGET)}
    command = ["cargo", "build", "--release", "--bench", "instructions", "--message-format=json"]
    built = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    for line in built.stdout.splitlines():
        message = json.loads(line)
        artifact = message.get("reason") == "compiler-artifact"
        if artifact and message["target"]["name"] == "instructions":
            executable = message.get("executable")
            if executable:
                return Path(executable)
    raise RuntimeError("cargo built no instructions binary")


def count(binary: Path, subscribers: int, messages: int) -> int:
    """Instructions callgrind counts for one run of the binary."""
    run = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            str(binary),
            str(subscribers),
            str(messages),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    found = COLLECTED.search(run.stderr)
    if not found:
        raise RuntimeError(f"callgrind printed no total: {run.stderr[-500:]}")
    return int(found.group(1))


def run(args: argparse.Namespace) -> int:
    if shutil.which("valgrind") is None:
        print("valgrind not found: apt-get install -y valgrind", file=sys.stderr)
        return 2
    if args.messages < 20:
        print("--messages must be at least 20", file=sys.stderr)
        return 2
    binary = build()
    few = args.messages // 10
    rows = []
    for subscribers in args.subscribers:
        short, long = count(binary, subscribers, few), count(binary, subscribers, args.messages)
        per_message = (long - short) / (args.messages - few)
        rows.append({"subscribers": subscribers, "instructions_per_message": round(per_message)})
        print(f"route to {subscribers:>3} subscriber(s): {per_message:>9,.0f} instructions/message")
    output = args.output or RESULTS / time.strftime("%Y%m%d-%H%M%S-instructions.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"messages": args.messages, "rows": rows}, indent=2) + "\n")
    print(f"\nJSON: {output}")
    return 0
