"""A PNG of the figures BENCHMARKS.md quotes most, per system: CPU per delivery and p99 at a fixed rate,
CPU per delivery at full speed, and the CPU to fill one room (medians of the runs in each file).

    python -m bench.chart --fixed F.json --speed F.json --fill F.json [--fill F.json ...] --out chart.png

Runs from the bench venv (matplotlib is in bench/requirements.txt): `.cache/bench-venv/bin/python -m
bench.chart ...`. Inputs are `bench.fanout --json` files (or `bench.run_all` step files).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"gateway": "#2b6cb0", "socketio": "#a0aec0", "socketio-node": "#dd6b20", "centrifugo": "#38a169"}


def medians(path: str, field: str) -> dict[str, float]:
    results: dict[str, list[dict[str, Any]]] = json.loads(Path(path).read_text())["results"]
    return {
        target: statistics.median(r[field] for r in runs if r.get(field) is not None)
        for target, runs in results.items()
        if any(r.get(field) is not None for r in runs)
    }


def fill_cost(paths: list[str]) -> dict[str, list[tuple[int, float]]]:
    """target -> [(room size, server CPU seconds to connect and join them)]"""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in paths:
        doc = json.loads(Path(path).read_text())
        clients = int(doc["options"]["clients"])
        for target, runs in doc["results"].items():
            out.setdefault(target, []).append((clients, statistics.median(r["setup_cpu_s"] for r in runs)))
    return {t: sorted(points) for t, points in out.items()}


def bars(ax: Any, values: dict[str, float], title: str, unit: str) -> None:
    names = list(values)
    ax.bar(names, [values[n] for n in names], color=[COLORS.get(n, "#718096") for n in names])
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    for i, n in enumerate(names):
        ax.annotate(f"{values[n]:.1f}", (i, values[n]), ha="center", va="bottom", fontsize=8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chart")
    p.add_argument("--fixed", required=True, help="a fixed-rate run (one room of 500, 10 msg/s)")
    p.add_argument("--speed", required=True, help="an ack-paced run (as fast as acks allow)")
    p.add_argument("--fill", action="append", default=[], help="a --messages 0 run (repeatable: sizes)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    bars(axes[0], medians(args.fixed, "us_cpu_per_delivery"), "CPU per delivery, 5,000 deliveries/s", "µs")
    bars(axes[1], medians(args.fixed, "p99_ms"), "p99 latency, 5,000 deliveries/s", "ms")
    bars(axes[2], medians(args.speed, "us_cpu_per_delivery"), "CPU per delivery, full speed", "µs")
    for target, points in fill_cost(args.fill).items():
        xs, ys = zip(*points, strict=True)
        axes[3].plot(xs, ys, marker="o", label=target, color=COLORS.get(target, "#718096"))
    axes[3].set_title("server CPU to fill one room", fontsize=10)
    axes[3].set_xlabel("users joined")
    axes[3].set_ylabel("s")
    axes[3].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
