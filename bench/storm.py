"""Reconnect storm: N clients in R rooms drop at once and come back, recovering what they missed.

    python -m bench.storm --target gateway,centrifugo,socketio-node --clients 10000 --rooms 100

For every target (interleaved with --repeat, so ratios compare one machine state):

1. the server starts pinned to CPU 0 (with --pin); `--client-procs` processes (bench/storm_client.py,
   CPU 1) open N members, each in room `r{i % R}`, and one publisher per room joins;
2. the publishers send `--rate` messages/s in all, round-robin over the rooms; after `--steady`
   seconds of it, the server's CPU per second is the baseline;
3. `drop`: every member's TCP connection closes at once; each reconnects after a uniform delay in
   [0, --jitter] s with the same token and recovers its room from where it stopped (the gateway: join
   with `since`; Centrifugo: subscribe with `recover` in a positioned namespace with history;
   Socket.IO on Node: connection state recovery) while publishing goes on;
4. once every member is back, `--tail` more seconds of publishing, then the publishers stop and every
   member must have the last message of its room.

Reported: time from the drop until 99% and 100% of members were back and recovered; server CPU per
reconnect, (CPU from the drop until all were back, minus the baseline's rate over that time) / N: the
disconnect, the handshake, the join and the replay together; p99 of the live deliveries (sent to a
member that was connected) during the storm, for every member and for the publishers alone (members
that never dropped); members told `recovered: false` (none should be: the history holds minutes);
messages missing or duplicated per member; the client processes' CPU (near 100% of CPU 1: the
clients were the limit).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import CACHE, dumps, ensure_bench_venv, log, machine, percentile, raise_nofile, tree_cpu
from bench.fanout import Child, fmt, gateway_counters, start_profiler, stop_profiler
from bench.targets import Server, TargetUnavailable, start

TARGETS = ("gateway", "gateway-redis", "centrifugo", "socketio-node")
PROTO = {"gateway": "gateway", "gateway-redis": "gateway", "centrifugo": "centrifugo", "socketio-node": "socketio"}


def client_args(server: Server, opts: argparse.Namespace, role: str) -> list[str]:
    args = ["--target", PROTO[server.name], "--url", server.url, f"--secret={server.secret}", "--role", role]
    args += ["--rooms", str(opts.rooms), "--rate", str(opts.rate), "--size", str(opts.size)]
    return [*args, "--jitter", str(opts.jitter), "--concurrency", str(opts.concurrency)]


def quantile_s(values: list[int], q: float, base: int) -> float:
    return (percentile(values, q * 100) - base) / 1e9 if values else float("nan")


def run_one(target: str, opts: argparse.Namespace) -> dict[str, Any]:
    cpus_server = {0} if opts.pin else None
    cpus_client = {1} if opts.pin else None
    try:
        server = start(target, cpus_server, opts.gateway_arg)
    except TargetUnavailable as exc:
        log(f"{target}: unavailable: {exc}")
        return {"target": target, "unavailable": str(exc)}
    res: dict[str, Any] = {"target": target, "version": server.version}
    logdir = Path(tempfile.mkdtemp(prefix="storm-", dir=server.workdir))
    children: list[Child] = []
    try:
        procs = max(1, opts.client_procs)
        base, extra = divmod(opts.clients, procs)
        offset = 0
        for i in range(procs):
            n = base + (i < extra)
            args = [*client_args(server, opts, "sub"), "--conns", str(n), "--offset", str(offset)]
            children.append(Child(f"sub{i}", args, cpus_client, logdir, module="bench.storm_client"))
            offset += n
        for c in children:
            c.wait_event("ready", opts.connect_timeout)
        pub = Child("pub", client_args(server, opts, "pub"), cpus_client, logdir, module="bench.storm_client")
        pub.wait_event("ready", opts.connect_timeout)
        everyone = [*children, pub]
        for c in everyone:
            c.command("go")
        time.sleep(1.0)  # publishing under way before the baseline starts
        s0, t0 = tree_cpu(server.pid), time.monotonic()
        time.sleep(opts.steady)
        s1, t1 = tree_cpu(server.pid), time.monotonic()
        baseline = (s1 - s0) / (t1 - t0)
        res["baseline_cpu_share"] = baseline
        spy = start_profiler(server, opts)
        counters0 = gateway_counters(server)
        cpu_drop, t_drop, helper0 = tree_cpu(server.pid), time.monotonic(), server.helper_cpu()
        for c in children:
            c.command("drop")
        backs = [c.wait_event("back", opts.storm_timeout) for c in children]
        cpu_back, t_back = tree_cpu(server.pid), time.monotonic()
        if spy is not None:
            res["profile"] = stop_profiler(spy)
        counters1 = gateway_counters(server)
        res["storm_wall_s"] = t_back - t_drop
        res["storm_cpu_s"] = cpu_back - cpu_drop
        res["storm_helper_cpu_s"] = server.helper_cpu() - helper0  # redis-server, with gateway-redis
        res["reconnect_cpu_us"] = max(0.0, cpu_back - cpu_drop - baseline * (t_back - t_drop)) / opts.clients * 1e6
        res["client_cpu_s"] = sum(b["cpu_s"] for b in backs)
        if counters0 and counters1:
            res["storm_writes"] = counters1[0] - counters0[0]
        time.sleep(opts.tail)
        pub.command("stop")
        stopped = pub.wait_event("stopped", 30)
        last = stopped["last"]
        res["messages_sent"] = stopped["sent"]
        reports = []
        for i, c in enumerate(everyone):
            path = logdir / f"report{i}.json"
            deadline = time.monotonic() + opts.drain_timeout
            while True:  # every member has its room's last message, or the deadline passed
                c.command(f"report {path}")
                c.wait_event("reported", 30)
                rep = json.loads(path.read_text())
                behind = sum(1 for room, seq in rep["last_seq"].values() if seq < last[room])
                if not behind or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            rep["behind"] = behind
            rep["publisher"] = c is pub
            reports.append(rep)
        summarise(res, reports, min(b["drop_ns"] for b in backs), opts)
    finally:
        for c in children + ([pub] if "pub" in locals() else []):
            c.close()
        server.stop()
        if not opts.keep:
            import shutil

            shutil.rmtree(server.workdir, ignore_errors=True)
    return res


def summarise(res: dict[str, Any], reports: list[dict[str, Any]], drop_ns: int, opts: argparse.Namespace) -> None:
    members = [r for r in reports if not r["publisher"]]
    backs = sorted(ns for r in members for ns in r["back_ns"])
    end_ns = backs[-1] if backs and all(backs) else 0
    res["back_p99_s"] = quantile_s(backs, 0.99, drop_ns)
    res["back_all_s"] = (end_ns - drop_ns) / 1e9 if end_ns else float("nan")
    res["reconnects_per_s"] = len(backs) / res["back_all_s"] if end_ns else float("nan")
    res["reconnects"] = len(backs)
    for key in ("missing", "dups", "not_recovered", "failures", "behind"):
        res[key] = sum(r[key] for r in members)
    res["publisher_missing"] = sum(r["missing"] for r in reports if r["publisher"])
    res["messages_refused"] = sum(r.get("refused", 0) for r in reports if r["publisher"])

    def live(rs: list[dict[str, Any]]) -> list[int]:
        pairs = (pair for r in rs for pair in zip(r["live_at"], r["live_us"], strict=True))
        return sorted(us for at, us in pairs if drop_ns <= at <= end_ns)

    every, stayers = live(reports), live([r for r in reports if r["publisher"]])
    res["live_during"] = len(every)
    res["live_p50_ms"] = percentile(every, 50) / 1000 if every else float("nan")
    res["live_p99_ms"] = percentile(every, 99) / 1000 if every else float("nan")
    res["stayers_p99_ms"] = percentile(stayers, 99) / 1000 if stayers else float("nan")
    after = sorted(us for r in reports for at, us in zip(r["live_at"], r["live_us"], strict=True) if at < drop_ns)
    res["steady_p99_ms"] = percentile(after, 99) / 1000 if after else float("nan")
    if res.get("storm_writes") is not None:
        res["storm_writes_per_reconnect"] = res["storm_writes"] / opts.clients


HEADER = (
    "| target | clients | back 99% s | back 100% s | reconnects/s | CPU µs/reconnect | storm CPU s | live p50 ms "
    "| live p99 ms | stayers p99 ms | steady p99 ms | recovered false | missing | dups | retries | client CPU s |"
)


def row(r: dict[str, Any], opts: argparse.Namespace) -> str:
    if "unavailable" in r:
        return f"| {r['target']} | unavailable: {r['unavailable'][:80]} |"
    cells = [
        r["target"],
        opts.clients,
        fmt(r["back_p99_s"], 2),
        fmt(r["back_all_s"], 2),
        fmt(r["reconnects_per_s"], 0),
        fmt(r["reconnect_cpu_us"], 0),
        fmt(r["storm_cpu_s"], 2),
        fmt(r["live_p50_ms"], 2),
        fmt(r["live_p99_ms"], 1),
        fmt(r["stayers_p99_ms"], 1),
        fmt(r["steady_p99_ms"], 2),
        r["not_recovered"],
        r["missing"],
        r["dups"],
        r["failures"],
        fmt(r["client_cpu_s"], 1),
    ]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def ratios(by_target: dict[str, list[dict[str, Any]]]) -> list[str]:
    """CPU per reconnect of every target against the gateway's, run by run."""
    gw = [r for r in by_target.get("gateway", []) if "reconnect_cpu_us" in r]
    lines = []
    for t, runs in by_target.items():
        if t == "gateway":
            continue
        pairs = [
            f"{r['reconnect_cpu_us'] / g['reconnect_cpu_us']:.2f}x"
            for r, g in zip(runs, gw, strict=False)
            if "reconnect_cpu_us" in r and g["reconnect_cpu_us"] > 0
        ]
        if pairs:
            lines.append(f"- {t}: CPU per reconnect {', '.join(pairs)} of the gateway's (run by run)")
    return lines


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__.splitlines()[0])
    p.add_argument("--target", default="gateway,centrifugo,socketio-node", help=f"comma-separated: {TARGETS}")
    p.add_argument("--clients", type=int, default=10000, help="members (N), each in one room")
    p.add_argument("--rooms", type=int, default=100, help="rooms (R), one publisher each")
    p.add_argument("--rate", type=float, default=100.0, help="messages/s over all publishers, all along")
    p.add_argument("--size", type=int, default=128, help="message content bytes")
    p.add_argument("--jitter", type=float, default=2.0, help="members reconnect within this many seconds")
    p.add_argument("--client-procs", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=64, help="first connections in flight per client process")
    p.add_argument("--steady", type=float, default=3.0, help="seconds of publishing that give the baseline")
    p.add_argument("--tail", type=float, default=1.0, help="seconds of publishing after everyone is back")
    p.add_argument("--storm-timeout", type=float, default=120.0)
    p.add_argument("--connect-timeout", type=float, default=300.0)
    p.add_argument("--drain-timeout", type=float, default=10.0, help="wait for the last message this long")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--pin", action=argparse.BooleanOptionalAction, default=(os.cpu_count() or 1) >= 2)
    p.add_argument("--gateway-arg", action="append", default=[], help="extra server.py argument (repeatable)")
    p.add_argument("--profile", default="", help="py-spy the gateway during the storm; stacks kept in DIR")
    p.add_argument("--json", default="")
    p.add_argument("--keep", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    targets = [t.strip() for t in opts.target.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        print(f"unknown target {unknown[0]!r}; choose from {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    CACHE.mkdir(exist_ok=True)
    ensure_bench_venv()
    nofile = raise_nofile()
    if opts.clients + opts.rooms + 100 > nofile[0]:
        print(f"RLIMIT_NOFILE {nofile[0]} is below the {opts.clients + opts.rooms + 100} needed", file=sys.stderr)
        return 2
    os.environ["BENCH_SOCKETIO_RECOVERY"] = "1"  # bench/peers/socketio_node.js: connection state recovery
    cmd = ("python -m bench.storm " + shlex.join(argv if argv is not None else sys.argv[1:])).strip()
    by_target: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
    for rep in range(opts.repeat):
        for t in targets:
            log(f"run {rep + 1}/{opts.repeat}: {t}, {opts.clients} clients in {opts.rooms} rooms")
            r = run_one(t, opts)
            r["run"] = rep + 1
            by_target[t].append(r)
            log(dumps({k: v for k, v in r.items() if k != "profile"}))
    print(f"\n`{cmd}`\n")
    print(HEADER)
    print("|---" * (HEADER.count(" | ") + 1) + "|")
    for t in targets:
        for r in by_target[t]:
            print(row(r, opts))
    lines = ratios(by_target)
    if lines:
        print("\n" + "\n".join(lines))
    doc = {"command": cmd, "options": vars(opts), "machine": machine(), "results": by_target}
    if opts.json:
        Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.json).write_text(dumps(doc) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
