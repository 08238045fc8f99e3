"""The whole benchmark suite behind BENCHMARKS.md, in one go (about 10-15 minutes on 2 cores).

    python -m bench.run_all [--out DIR] [--only NAME ...] [--list]

Each step is one `python -m bench.fanout ...` invocation; the targets of a step run interleaved in
the same invocation, so their ratios are the figures to quote. The Markdown tables (with the exact
command above each) go to stdout and to DIR/results.md, the raw results to DIR/<step>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import fanout
from bench.common import CACHE, ROOT, dumps, ensure_bench_venv, machine

ALL = "gateway,socketio,socketio-node,centrifugo"
IDLE = ["--idle-wait", "15"]

STEPS: list[tuple[str, str, list[str]]] = [
    (
        "capacity-2000",
        "2,000 idle authenticated connections (no room)",
        ["--target", ALL, "--clients", "2000", "--messages", "0", "--no-join"],
    ),
    (
        "capacity-5000",
        "5,000 idle authenticated connections (no room)",
        ["--target", ALL, "--clients", "5000", "--messages", "0", "--no-join"],
    ),
    (
        "capacity-joined-2000",
        "2,000 connections, each joined to one of 200 rooms of 10",
        ["--target", ALL, "--clients", "2000", "--rooms", "200", "--messages", "0"],
    ),
    (
        "fill-500",
        "fill: connect and join 500 users into one room (server CPU, wall time, memory)",
        ["--target", ALL, "--clients", "500", "--messages", "0"],
    ),
    (
        "fill-2000",
        "fill: connect and join 2,000 users into one room",
        ["--target", ALL, "--clients", "2000", "--messages", "0", "--client-procs", "2"],
    ),
    (
        "fill-10000",
        "fill: connect and join 10,000 users into one room (linear: 20x the fill of 500)",
        ["--target", ALL, "--clients", "10000", "--messages", "0", "--client-procs", "2"],
    ),
    (
        "latency-fixed-rate",
        "one room of 500, 10 msg/s (5,000 deliveries/s offered), 128-byte content",
        ["--target", ALL, "--clients", "500", "--messages", "150", "--rate", "10", "--repeat", "3"],
    ),
    (
        "throughput-ack-paced",
        "one room of 500, as fast as acks allow (8 in flight)",
        ["--target", ALL, "--clients", "500", "--messages", "200", "--rate", "0", "--repeat", "3"],
    ),
    (
        "client-check",
        "unpinned, two subscriber processes (is one client process the limit? Centrifugo may use both cores)",
        [
            "--target",
            "gateway,centrifugo",
            "--clients",
            "500",
            "--messages",
            "200",
            "--rate",
            "0",
            "--no-pin",
            "--client-procs",
            "2",
        ],
    ),
    (
        "redis-fixed-rate",
        "the gateway in memory mode vs with a Redis bus, presence and dedupe; one room of 500, 10 msg/s",
        ["--target", "gateway,gateway-redis", "--clients", "500", "--messages", "150", "--rate", "10", "--repeat", "3"],
    ),
    (
        "redis-ack-paced",
        "the gateway in memory mode vs with Redis; one room of 500, as fast as acks allow",
        ["--target", "gateway,gateway-redis", "--clients", "500", "--messages", "200", "--rate", "0", "--repeat", "3"],
    ),
    (
        "socketio-redis",
        "python-socketio with its memory manager vs AsyncRedisManager",
        ["--target", "socketio,socketio-redis", "--clients", "500", "--messages", "100", "--rate", "0"],
    ),
    (
        "syscalls",
        "write-type system calls per delivery (strace -c slows the servers: counts only, not timings)",
        ["--target", ALL, "--clients", "500", "--messages", "100", "--rate", "0", "--syscalls"],
    ),
    (
        "profile",
        "py-spy stacks of the Python servers while publishing (sampling slows them: not for figures)",
        ["--target", "gateway,socketio", "--clients", "200", "--messages", "300", "--rate", "0"],
    ),
]


# Steps of their own (not bench.fanout), run from the bench venv.
OTHER_STEPS: list[tuple[str, str, list[str]]] = [
    (
        "join-storm",
        "2,000 joins/s (with leaves) among 200 connections while a member's ping is timed (gateway only)",
        ["-m", "bench.join_storm", "--rate", "2000", "--seconds", "10"],
    ),
    (
        "reconnect-storm",
        "10,000 members in 100 rooms drop at once and come back within 2 s, recovering with `since` (bench.storm)",
        ["-m", "bench.storm", "--clients", "10000", "--rooms", "100"],
    ),
    (
        "redis-cluster",
        "two gateways, cross-instance fan-out: one Redis vs a Redis Cluster of 3 primaries (docs/scaling.md)",
        ["-m", "bench.cluster", "--rooms", "30", "--members", "10", "--rate", "300", "--seconds", "10"],
    ),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(CACHE / "bench-results" / time.strftime("%Y%m%d-%H%M%S")))
    p.add_argument("--only", nargs="*", default=None, help="step names to run (default: all)")
    p.add_argument("--list", action="store_true", help="print the steps and exit")
    args = p.parse_args(argv)
    if args.list:
        for name, what, step in STEPS:
            print(f"{name}: {what}\n    python -m bench.fanout {' '.join(step)}")
        for name, what, step in OTHER_STEPS:
            print(f"{name}: {what}\n    python {' '.join(step)}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "machine.json").write_text(dumps(machine()) + "\n")
    md = out / "results.md"
    md.write_text(f"# bench.run_all {time.strftime('%Y-%m-%d %H:%M:%S')}\n\n`{dumps(machine())}`\n")
    started = time.monotonic()
    for name, what, step in STEPS:
        if args.only is not None and name not in args.only:
            continue
        extra = [*IDLE, "--json", str(out / f"{name}.json")]
        if name == "profile":
            extra += ["--profile", str(out / "profiles")]
        t0 = time.monotonic()
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = fanout.main([*step, *extra])
        text = buf.getvalue().split("\n{", 1)[0]  # the tables; the JSON is in the file
        section = f"\n## {name}: {what}\n\n({time.monotonic() - t0:.0f} s, exit {rc})\n{text}\n"
        print(section, flush=True)
        with md.open("a") as fh:
            fh.write(section)
    for name, what, step in OTHER_STEPS:
        if args.only is not None and name not in args.only:
            continue
        t0 = time.monotonic()
        cmd = [str(ensure_bench_venv()), *step, "--json", str(out / f"{name}.json")]
        res = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
        head = f"\n## {name}: {what}\n\n({time.monotonic() - t0:.0f} s, exit {res.returncode})\n\n"
        section = head + res.stdout + "\n"  # each step prints its own tables
        print(section, flush=True)
        with md.open("a") as fh:
            fh.write(section)
    print(f"suite: {time.monotonic() - started:.0f} s; results in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
