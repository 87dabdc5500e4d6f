"""`python -m bench plot RESULTS.json [--output docs/scaling.png]`: how cost grows, from
the JSON of a `python -m bench run`.

Two columns: the number of subscribers of one topic (the 1->1, fan-out and fanout100
workloads) and the number of other patterns held on the broker (1->1, patterns1k,
patterns10k). Top row: broker CPU per delivered message; bottom row: deliveries per
second. Each point is the median of the runs, with a bar from the lowest to the
highest; one line per peer in the file.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "scaling.png"
PEER_STYLE = {"ours": ("message_broker", "tab:blue", "o"), "nats": ("nats-server", "tab:gray", "s")}


@dataclass(frozen=True)
class Axis:
    title: str
    label: str
    points: list[tuple[str, float]]
    """(workload, x) pairs, in order of x."""


def axes(settings: dict[str, Any]) -> list[Axis]:
    return [
        Axis(
            "subscribers of one topic",
            "subscribers (connections)",
            [("throughput", 1), ("fanout", settings["fanout"]), ("fanout100", 100)],
        ),
        Axis(
            "patterns on the broker",
            "patterns (the subscriber's and others matching nothing)",
            [
                ("throughput", 1),
                ("patterns1k", settings["patterns"] // 10 + 1),
                ("patterns10k", settings["patterns"] + 1),
            ],
        ),
    ]


def series(
    runs: dict[str, list[dict[str, Any]]], axis: Axis, key: str
) -> tuple[list[float], list[float], list[float], list[float]]:
    """x, median, and the distances down to the lowest and up to the highest run."""
    xs, medians, below, above = [], [], [], []
    for workload, x in axis.points:
        values = [run[key] for run in runs.get(workload, []) if run.get("ok")]
        if not values:
            continue
        median = statistics.median(values)
        xs.append(x)
        medians.append(median)
        below.append(median - min(values))
        above.append(max(values) - median)
    return xs, medians, below, above


def plot(document: dict[str, Any], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("cpu_us_per_msg", "broker CPU µs per delivery"), ("rate", "deliveries per second")]
    columns = axes(document["settings"])
    figure, grid = plt.subplots(len(rows), len(columns), figsize=(11, 7.5), squeeze=False)
    for r, (key, ylabel) in enumerate(rows):
        for c, axis in enumerate(columns):
            ax = grid[r][c]
            for peer, runs in document["runs"].items():
                label, color, marker = PEER_STYLE.get(peer, (peer, None, "^"))
                xs, medians, below, above = series(runs, axis, key)
                if not xs:
                    continue
                ax.errorbar(
                    xs,
                    medians,
                    yerr=[below, above],
                    label=label,
                    color=color,
                    marker=marker,
                    capsize=3,
                )
            ax.set_xscale("log")
            ax.set_ylim(bottom=0)
            ax.set_xlabel(axis.label)
            ax.set_ylabel(ylabel)
            ax.set_title(axis.title if r == 0 else "")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    machine = document.get("machine", {})
    figure.suptitle(
        f"How cost grows ({document['settings']['runs']} runs each, median and range; "
        f"{machine.get('cpus', '?')} cores, {document.get('created', '')[:10]})"
    )
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    plt.close(figure)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("plot", help="plot how cost grows, from a results JSON")
    parser.add_argument("results", type=Path, help="a JSON file written by `bench run`")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="PNG to write")


def main(args: argparse.Namespace) -> int:
    document = json.loads(args.results.read_text())
    plot(document, args.output)
    print(f"PNG: {args.output}")
    return 0
