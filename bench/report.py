"""The report: one row per figure with the median and range over the runs for each peer,
the ratio ours/NATS of the medians, and the target with met / not met.

Ratio targets compare medians. Absolute targets (no loss, memory) must hold in every
run. A workload with a failed run of ours does not meet its targets. Targets never
fail the command: they are shown, that is all.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.runner import Results

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MB = 1e6


@dataclass(frozen=True)
class Target:
    kind: str
    """"min_ratio" / "max_ratio" (ours/NATS of the medians), "below" or "zero" (every run)."""
    value: float = 0.0

    def describe(self) -> str:
        if self.kind == "min_ratio":
            return f">= {self.value:g}x NATS"
        if self.kind == "max_ratio":
            return f"<= {self.value:g}x NATS"
        if self.kind == "below":
            return f"< {self.value:g}"
        return "0"


@dataclass(frozen=True)
class Figure:
    workload: str
    key: str
    label: str
    scale: float = 1.0
    """Divides the raw value (bytes to MB)."""
    digits: int = 0
    target: Target | None = None


TARGET_LOSS = Target("zero")
TARGET_CPU = Target("max_ratio", 1.0)

FIGURES = [
    Figure("throughput", "rate", "a. 1->1 msg/s", target=Target("min_ratio", 3)),
    Figure("throughput", "lost", "a. 1->1 lost", target=TARGET_LOSS),
    Figure("fanout", "rate", "b. fan-out 1->N deliveries/s", target=Target("min_ratio", 2)),
    Figure("fanout", "lost", "b. fan-out lost", target=TARGET_LOSS),
    Figure("request", "p50", "c. request p50 us", target=Target("max_ratio", 0.3)),
    Figure("request", "p90", "c. request p90 us", target=Target("max_ratio", 0.4)),
    Figure("request", "p99", "c. request p99 us"),
    Figure("request_raw", "p50", "c. request p50 us, bare-socket clients"),
    Figure("request_raw", "p99", "c. request p99 us, bare-socket clients"),
    Figure("wildcard", "rate", "d. wildcard jobs.* msg/s", target=Target("min_ratio", 3)),
    Figure("wildcard", "lost", "d. wildcard lost", target=TARGET_LOSS),
    Figure("large", "mb_per_s", "e. large payload MB/s", digits=1, target=Target("min_ratio", 3)),
    Figure("large", "lost", "e. large payload lost", target=TARGET_LOSS),
    Figure("throughput", "cpu_us_per_msg", "f. CPU us/msg 1->1", digits=2, target=TARGET_CPU),
    Figure("fanout", "cpu_us_per_msg", "f. CPU us/msg fan-out", digits=2, target=TARGET_CPU),
    Figure("request", "cpu_us_per_msg", "f. CPU us/msg request", digits=2, target=TARGET_CPU),
    Figure("wildcard", "cpu_us_per_msg", "f. CPU us/msg wildcard", digits=2, target=TARGET_CPU),
    Figure("large", "cpu_us_per_msg", "f. CPU us/msg large", digits=2, target=TARGET_CPU),
    Figure(
        "durable", "publish_rate", "g. durable qos=1 confirmed/s", target=Target("min_ratio", 2)
    ),
    Figure("durable", "rate", "g. durable consume msg/s", target=Target("min_ratio", 2)),
    Figure("durable", "lost", "g. durable lost", target=TARGET_LOSS),
    Figure("durable", "cpu_us_per_msg", "g. CPU us/msg durable", digits=2),
    Figure("fanout100", "rate", "h. fan-out 1->100 (10x10) deliveries/s"),
    Figure("fanout100", "lost", "h. fan-out 1->100 lost", target=TARGET_LOSS),
    Figure("fanout100", "cpu_us_per_msg", "h. CPU us/delivery 1->100", digits=2),
    Figure("fanin100", "rate", "i. fan-in 100 (10x10) ->1 msg/s"),
    Figure("fanin100", "lost", "i. fan-in 100->1 lost", target=TARGET_LOSS),
    Figure("fanin100", "cpu_us_per_msg", "i. CPU us/msg 100->1", digits=2),
    Figure("patterns1k", "rate", "j. 1->1 beside 1,000 patterns msg/s"),
    Figure("patterns1k", "cpu_us_per_msg", "j. CPU us/msg beside 1,000 patterns", digits=2),
    Figure("patterns10k", "rate", "j. 1->1 beside 10,000 patterns msg/s"),
    Figure("patterns10k", "lost", "j. 1->1 beside 10,000 patterns lost", target=TARGET_LOSS),
    Figure("patterns10k", "cpu_us_per_msg", "j. CPU us/msg beside 10,000 patterns", digits=2),
    Figure("idle_traffic", "rate", "k. 1->1 beside 1,000 idle conns msg/s"),
    Figure("idle_traffic", "lost", "k. 1->1 beside idle conns lost", target=TARGET_LOSS),
    Figure("request_loaded", "p50", "l. request p50 us under half-rate flood"),
    Figure("request_loaded", "p99", "l. request p99 us under half-rate flood"),
    Figure("request_loaded", "flood_rate", "l. the flood msg/s"),
    Figure("request_loaded", "flood_seconds", "l. the flood s", digits=1),
    Figure("request_loaded", "lost", "l. flood lost", target=TARGET_LOSS),
    Figure("*", "peak_rss", "f. peak RSS MB (highest of all runs)", scale=MB, digits=1),
    Figure("idle", "idle_rss", "f. idle RSS MB", scale=MB, digits=1, target=Target("below", 20)),
    Figure(
        "idle",
        "connections_rss",
        "f. RSS added by idle conns MB",
        scale=MB,
        digits=1,
        target=Target("below", 20),
    ),
]


@dataclass
class Stat:
    median: float | None
    low: float | None
    high: float | None
    """None when every run failed."""
    runs: int
    failed: int


def _stat(results: Results, peer: str, figure: Figure) -> Stat | None:
    by_workload = results.runs.get(peer, {})
    if figure.workload == "*":  # the highest of every run of every workload
        every_run = [run for runs in by_workload.values() for run in runs if run["ok"]]
        values = [run[figure.key] / figure.scale for run in every_run]
        if not values:
            return None
        return Stat(max(values), min(values), max(values), len(values), 0)
    if figure.workload not in by_workload:
        return None
    runs = by_workload[figure.workload]
    values = [run[figure.key] / figure.scale for run in runs if run["ok"]]
    failed = len(runs) - len(values)
    if not values:
        return Stat(None, None, None, 0, failed)
    return Stat(statistics.median(values), min(values), max(values), len(values), failed)


def _verdict(figure: Figure, ours: Stat | None, nats: Stat | None, ratio: float | None) -> str:
    target = figure.target
    if target is None or ours is None:
        return ""
    if ours.failed:
        return f"not met ({ours.failed} run(s) failed)"
    if ours.high is None:
        return "not met"
    if target.kind == "zero":
        return "met" if ours.high == 0 else "not met"
    if target.kind == "below":
        return "met" if ours.high < target.value else "not met"
    if nats is None:
        return "n/a (needs --peer nats)"
    if ratio is None:
        return "n/a (no NATS figure)"
    good = ratio >= target.value if target.kind == "min_ratio" else ratio <= target.value
    return "met" if good else "not met"


def summarize(results: Results) -> list[dict[str, Any]]:
    rows = []
    for figure in FIGURES:
        if figure.workload != "*" and figure.workload not in results.settings.selected():
            continue
        ours = _stat(results, "ours", figure)
        nats = _stat(results, "nats", figure)
        ratio = None
        if ours and nats and ours.median is not None and nats.median:
            ratio = ours.median / nats.median
        rows.append(
            {
                "figure": figure.label,
                "workload": figure.workload,
                "key": figure.key,
                "ours": asdict(ours) if ours else None,
                "nats": asdict(nats) if nats else None,
                "ratio": ratio,
                "target": figure.target.describe() if figure.target else "",
                "verdict": _verdict(figure, ours, nats, ratio),
                "digits": figure.digits,
            }
        )
    return rows


def _cell(stat: dict[str, Any] | None, digits: int) -> str:
    if stat is None:
        return "-"
    if not stat["runs"]:
        return "FAILED"
    number = f"{{:,.{digits}f}}".format
    text = f"{number(stat['median'])} ({number(stat['low'])}-{number(stat['high'])})"
    return text + (f" {stat['failed']} failed" if stat["failed"] else "")


def format_table(results: Results, rows: list[dict[str, Any]]) -> str:
    with_nats = "nats" in results.settings.peers
    header = ["figure", "ours median (min-max)"]
    header += ["NATS median (min-max)", "ours/NATS"] if with_nats else []
    header += ["target", "verdict"]
    lines = [header]
    for row in rows:
        line = [row["figure"], _cell(row["ours"], row["digits"])]
        if with_nats:
            ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "-"
            line += [_cell(row["nats"], row["digits"]), ratio]
        line += [row["target"], row["verdict"]]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    lines.insert(1, ["-" * width for width in widths])
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def format_failures(results: Results) -> str:
    lines = []
    for peer, workloads in results.runs.items():
        for workload, runs in workloads.items():
            for number, run in enumerate(runs, 1):
                if not run["ok"]:
                    lines.append(f"  {workload} {peer} run {number}: {run['error']}")
    return "failures:\n" + "\n".join(lines) if lines else ""


def describe_settings(results: Results) -> str:
    s = results.settings
    versions = ", ".join(f"{peer} {version}" for peer, version in results.versions.items())
    return (
        f"{s.runs} run(s) each; {s.messages:,} messages of ~100 B (a, d over {s.topics} topics),"
        f" fan-out {s.fanout} x {s.fanout_messages:,}, {s.requests:,} requests,"
        f" {s.large_messages:,} x {s.large_size:,} B, {s.idle_connections:,} idle connections;"
        f" {versions}; took {results.seconds:.0f} s"
    )


def write_json(results: Results, rows: list[dict[str, Any]], path: Path | None) -> Path:
    if path is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = RESULTS_DIR / f"{stamp}-{'-'.join(results.settings.peers)}.json"
    document = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": results.seconds,
        "settings": asdict(results.settings),
        "versions": results.versions,
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
        },
        "summary": [{k: v for k, v in row.items() if k != "digits"} for row in rows],
        "runs": results.runs,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
