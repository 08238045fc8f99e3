"""Fan-out benchmark: one room (or R), N subscribers, publishers sending M messages each.

    python -m bench.fanout --target gateway,socketio,centrifugo --clients 500 --messages 200 --rate 100

For every target (several targets in one invocation are run one after the other, `--repeat` times,
interleaved, so they share the machine's state and can be compared as ratios):

1. the server starts as a subprocess on 127.0.0.1 and a free port (pinned to CPU 0 with --pin);
2. idle RSS is read from /proc/PID/status once the server is quiet;
3. client processes (bench/client.py, CPU 1 with --pin) open N connections, authenticate and join;
   RSS with N connections is read once the server is quiet again (join-time presence traffic over);
4. one publisher connection per room sends M messages, at a fixed total rate (--rate) or as fast as
   acks allow (--rate 0, --window messages in flight per publisher); each content carries its send
   time, so every delivery yields an end-to-end latency;
5. reported: deliveries/s, latency p50/p95/p99, RSS idle / with N connections / bytes per
   connection, server CPU seconds while publishing and CPU microseconds per delivery, and the
   client processes' CPU use (near 100% means the client, not the server, was the limit).

--messages 0 measures connection capacity only (connect N, read RSS, disconnect).
Output: a Markdown table (and ratios against the first target) on stdout, and JSON (--json FILE).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_PY,
    CACHE,
    ROOT,
    dumps,
    ensure_bench_venv,
    loadavg,
    log,
    machine,
    percentile,
    proc_sample,
    raise_nofile,
    system_busy,
    wait_machine_idle,
    wait_quiet,
)
from bench.targets import TARGETS, Server, TargetUnavailable, start

MiB = 1024 * 1024


class Child:
    """A client process speaking JSON lines on stdout and taking commands on stdin."""

    def __init__(
        self, name: str, args: list[str], cpus: set[int] | None, logdir: Path, module: str = "bench.client"
    ) -> None:
        self.name = name
        self.stderr = open(logdir / f"{name}.log", "wb")  # noqa: SIM115 - closed in close()
        pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.proc = subprocess.Popen(
            [str(BENCH_PY), "-m", module, *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            preexec_fn=pre,
        )
        self._buf = b""

    def wait_event(self, event: str, timeout: float) -> dict[str, Any]:
        import json

        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                msg = json.loads(line)
                if msg.get("event") == "error":
                    raise RuntimeError(f"{self.name}: {msg.get('error')}")
                if msg.get("event") == event:
                    return dict(msg)
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: no {event!r} within {timeout}s")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    err = Path(self.stderr.name).read_text(errors="replace")[-800:]
                    raise RuntimeError(f"{self.name} exited ({self.proc.poll()}) before {event!r}: {err}")
                self._buf += chunk

    def command(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(cmd.encode() + b"\n")
            self.proc.stdin.flush()

    def close(self) -> None:
        self.command("quit")
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.stderr.close()


def client_args(server: Server, opts: argparse.Namespace) -> list[str]:
    return [
        "--target",
        server.proto,
        "--url",
        server.url,
        f"--secret={server.secret}",  # one token: a secret may start with "-"
        "--rooms",
        str(opts.rooms),
        "--size",
        str(opts.size),
        "--idle-timeout",
        str(opts.idle_timeout),
        "--max-seconds",
        str(opts.max_seconds),
        "--concurrency",
        str(opts.concurrency),
        "--join" if opts.join else "--no-join",
    ]


def run_one(target: str, opts: argparse.Namespace) -> dict[str, Any]:
    pin = opts.pin
    server_cpus = {0} if pin else None
    client_cpus = {1} if pin else None
    waited, load = wait_machine_idle(opts.idle_load, timeout=opts.idle_wait) if opts.idle_wait > 0 else (0.0, -1.0)
    try:
        server = start(target, server_cpus, opts.gateway_arg)
    except TargetUnavailable as exc:
        log(f"{target}: unavailable: {exc}")
        return {"target": target, "unavailable": str(exc)}
    res: dict[str, Any] = {"target": target, "version": server.version, "idle_wait_s": waited, "load_at_start": load}
    children: list[Child] = []
    logdir = Path(tempfile.mkdtemp(prefix="clients-", dir=server.workdir))
    try:
        wait_quiet(server.pid, timeout=15)
        idle = proc_sample(server.pid)
        res["rss_idle"] = idle.rss
        res["startup_cpu_s"] = idle.cpu
        # A capacity or fill run (no messages) is profiled while the clients connect and join.
        fill_spy = start_profiler(server, opts) if opts.messages == 0 else None
        # Subscribers, spread over client processes.
        procs = max(1, min(opts.client_procs, opts.clients))
        base, extra = divmod(opts.clients, procs)
        offset = 0
        for i in range(procs):
            n = base + (1 if i < extra else 0)
            args = [*client_args(server, opts), "--role", "sub", "--conns", str(n), "--offset", str(offset)]
            args += ["--expect", str(opts.messages), "--lat-file", str(logdir / f"lat{i}.bin")]
            children.append(Child(f"sub{i}", args, client_cpus, logdir))
            offset += n
        t0 = time.monotonic()
        readies = [c.wait_event("ready", opts.connect_timeout) for c in children]
        res["connect_s"] = max(r["connect_s"] for r in readies)
        res["connect_wall_s"] = time.monotonic() - t0
        pub: Child | None = None
        if opts.messages > 0:
            args = [*client_args(server, opts), "--role", "pub", "--messages", str(opts.messages)]
            args += ["--rate", str(opts.rate), "--window", str(opts.window)]
            pub = Child("pub", args, client_cpus, logdir)
            pub.wait_event("ready", opts.connect_timeout)
        res["settle_s"] = wait_quiet(server.pid, timeout=30)
        loaded = proc_sample(server.pid)
        res["rss_conns"] = loaded.rss
        res["bytes_per_conn"] = (loaded.rss - idle.rss) / opts.clients if opts.clients else 0.0
        res["threads"] = loaded.threads
        # Connect + authenticate + join, and what the server does because of joins (the gateway
        # broadcasts presence to the room on every join: O(N^2) frames for one room of N).
        res["setup_cpu_s"] = loaded.cpu - idle.cpu
        if fill_spy is not None:
            res["profile"] = stop_profiler(fill_spy)
        if pub is None:
            return res
        spy = start_profiler(server, opts)
        tracer = start_strace(server, opts)
        writes0 = gateway_counters(server)
        cpu0, helper0, busy0 = loaded.cpu, server.helper_cpu(), system_busy()
        res["loadavg_before"] = loadavg()
        for c in children:
            c.command("go")
        pub.command("go")
        wait = opts.max_seconds + opts.idle_timeout + 30
        pdone = pub.wait_event("done", wait)
        sdone = [c.wait_event("done", wait) for c in children]
        after = proc_sample(server.pid)
        busy = system_busy() - busy0
        if spy is not None:
            res["profile"] = stop_profiler(spy)
        if tracer is not None:
            res["syscalls"] = stop_strace(tracer)
        writes1 = gateway_counters(server)
        if writes0 is not None and writes1 is not None and writes1[1] > writes0[1]:
            res["socket_writes_per_delivery"] = (writes1[0] - writes0[0]) / (writes1[1] - writes0[1])
        res["server_cpu_s"] = after.cpu - cpu0
        res["helper_cpu_s"] = server.helper_cpu() - helper0
        res["rss_after"] = after.rss
        res["rss_peak"] = after.hwm
        received = sum(d["received"] for d in sdone)
        expected = opts.messages * opts.clients
        last = max((d["last_ns"] for d in sdone if d["received"]), default=pdone["first_send_ns"])
        span = (last - pdone["first_send_ns"]) / 1e9
        res.update(
            {
                "received": received,
                "expected": expected,
                "lost": expected - received,
                "span_s": span,
                "send_s": (pdone["last_send_ns"] - pdone["first_send_ns"]) / 1e9,
                "deliveries_per_s": received / span if span > 0 else 0.0,
                "messages_per_s": pdone["sent"] / span if span > 0 else 0.0,
                "acks": pdone["acks"],
                "pub_errors": pdone["errors"],
                "first_error": pdone["first_error"],
                "ack_p50_ms": (pdone["ack_p50_us"] or 0) / 1000,
                "ack_p99_ms": (pdone["ack_p99_us"] or 0) / 1000,
                "client_cpu_s": sum(d["cpu_s"] for d in sdone) + pdone["cpu_s"],
                "client_busy_max": max(d["cpu_s"] / d["wall_s"] for d in sdone if d["wall_s"] > 0),
                "deliveries_per_frame": received / max(1, sum(d.get("frames", 0) for d in sdone)),
                "short_conns": sum(d["short_conns"] for d in sdone),
                "closed_conns": sum(d["closed_conns"] for d in sdone),
                "us_cpu_per_delivery": (after.cpu - cpu0) / received * 1e6 if received else None,
                "server_busy": (after.cpu - cpu0) / span if span > 0 else 0.0,
            }
        )
        # Whatever else ran on the machine meanwhile (other sessions' test suites share these cores).
        others = busy - res["server_cpu_s"] - res["helper_cpu_s"] - res["client_cpu_s"]
        res["other_load_cores"] = max(0.0, others) / span if span > 0 else 0.0
        lats: array[int] = array("q")
        for d in sdone:
            if d["lat_file"]:
                with open(d["lat_file"], "rb") as fh:
                    lats.frombytes(fh.read())
        ordered = sorted(lats)
        for q in (50, 95, 99):
            res[f"p{q}_ms"] = percentile(ordered, q) / 1000
        res["max_ms"] = ordered[-1] / 1000 if ordered else None
        for child in [*children, pub]:
            child.command("quit")
        return res
    finally:
        for child in children:
            child.close()
        if server.proc.poll() is not None:
            res["server_exit"] = server.proc.returncode
        text = server.log_text()
        res["server_slow_closes"] = text.count("slow consumer")
        server.stop()
        if not opts.keep:
            _rmtree(server.workdir)


def start_profiler(server: Server, opts: argparse.Namespace) -> tuple[subprocess.Popen[bytes], Path] | None:
    """py-spy (bench venv) samples a Python server while it publishes; --profile DIR keeps the stacks."""
    if not opts.profile or server.name == "centrifugo":
        return None
    out = Path(opts.profile) / f"{server.name}-{int(time.time())}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = BENCH_PY.parent / "py-spy"
    cmd = [str(spy), "record", "--pid", str(server.pid), "--rate", "250", "--format", "raw", "--nonblocking"]
    proc = subprocess.Popen([*cmd, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, out


def stop_profiler(spy: tuple[subprocess.Popen[bytes], Path]) -> dict[str, Any]:
    """Stop py-spy; summarise self time per function and time under a few functions of interest."""
    proc, out = spy
    proc.send_signal(2)  # SIGINT: py-spy writes its file and exits
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    leaf: dict[str, int] = {}
    under: dict[str, int] = {}
    total = 0
    with contextlib.suppress(OSError):
        for line in out.read_text().splitlines():
            stack, _, count_s = line.rpartition(" ")
            if not stack or not count_s.isdigit():
                continue
            count = int(count_s)
            frames = stack.split(";")
            total += count
            top = frames[-1].split(" (")[0]
            leaf[top] = leaf.get(top, 0) + count
            for name in {f.split(" (")[0] for f in frames}:
                under[name] = under.get(name, 0) + count
    top_self = sorted(leaf.items(), key=lambda kv: -kv[1])[:15]
    top_incl = sorted(under.items(), key=lambda kv: -kv[1])[:25]
    return {
        "file": str(out),
        "samples": total,
        "self": [(name, round(n / total, 3)) for name, n in top_self] if total else [],
        "inclusive": [(name, round(n / total, 3)) for name, n in top_incl] if total else [],
    }


BORING = {"<module>", "main", "run", "run_forever", "run_until_complete", "_run_once", "_run", "_run_code"}
BORING |= {"_run_module_as_main", "asyncio_run", "invoke", "__call__"}


def profile_table(target: str, prof: dict[str, Any]) -> str:
    incl = [(n, f) for n, f in prof["inclusive"] if n not in BORING][:14]
    lines = [f"\n{target}: py-spy, {prof['samples']} samples while publishing", "", "| function | inclusive | self |"]
    lines.append("|---|---|---|")
    selfs = dict(prof["self"])
    for name, frac in incl:
        lines.append(f"| {name} | {frac:.0%} | {selfs.get(name, 0):.0%} |")
    return "\n".join(lines)


WRITE_CALLS = ("write", "writev", "sendto", "sendmsg", "sendmmsg")


def gateway_counters(server: Server) -> tuple[float, float] | None:
    """(socket writes, deliveries) from the gateway's /metrics: its own count of writes, which strace
    cannot give without slowing the server out of the regime being measured."""
    if not server.proto.startswith("gateway"):
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("gateway_socket_writes_total", "gateway_deliveries_total"):
            values[name] = float(value)
    if len(values) != 2:
        return None
    return values["gateway_socket_writes_total"], values["gateway_deliveries_total"]


def start_strace(server: Server, opts: argparse.Namespace) -> tuple[subprocess.Popen[bytes], Path] | None:
    """--syscalls: count the server's write-type system calls while publishing (strace -c slows the
    server a lot, so such a run is for the counts, not for the timings)."""
    if not opts.syscalls:
        return None
    out = server.workdir / "strace.txt"
    calls = ",".join(WRITE_CALLS)
    cmd = ["strace", "-c", "-f", "-e", f"trace={calls}", "-o", str(out), "-p", str(server.pid)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return proc, out


def stop_strace(tracer: tuple[subprocess.Popen[bytes], Path]) -> dict[str, int]:
    proc, out = tracer
    proc.send_signal(2)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    counts: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in out.read_text().splitlines():
            parts = line.split()
            if parts and parts[-1] in WRITE_CALLS and len(parts) >= 5:
                counts[parts[-1]] = int(parts[3])
    return counts


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:  # NaN
            return "-"
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


HEADER = (
    "| target | clients | rooms | msgs/room | size B | rate msg/s | deliveries/s | p50 ms | p95 ms | p99 ms "
    "| RSS idle MiB | RSS N conns MiB | KiB/conn | server CPU s (busy) | CPU µs/delivery | client busy "
    "| other load | lost |"
)
CAP_HEADER = (
    "| target | connections | joined | connect s | conn/s | setup CPU s | CPU µs/conn | RSS idle MiB "
    "| RSS N conns MiB | KiB/conn | threads |"
)


def server_cpu_cell(r: dict[str, Any]) -> str:
    if "server_cpu_s" not in r:
        return "-"
    cell = f"{r['server_cpu_s']:.2f} ({r['server_busy']:.0%})"
    if r.get("helper_cpu_s"):
        cell += f" + redis {r['helper_cpu_s']:.2f}"
    return cell


def row(r: dict[str, Any], opts: argparse.Namespace) -> str:
    if "unavailable" in r:
        return f"| {r['target']} | unavailable: {r['unavailable'][:120]} |"
    if opts.messages <= 0:
        joined = f"{opts.rooms} rooms" if opts.join else "no"
        cap = [
            r["target"],
            fmt(opts.clients),
            joined,
            fmt(r["connect_s"], 1),
            fmt(opts.clients / r["connect_s"], 0) if r["connect_s"] else "-",
            fmt(r["setup_cpu_s"], 2),
            fmt(r["setup_cpu_s"] / opts.clients * 1e6, 0),
            fmt(r["rss_idle"] / MiB),
            fmt(r["rss_conns"] / MiB),
            fmt(r["bytes_per_conn"] / 1024),
            fmt(r["threads"]),
        ]
        return "| " + " | ".join(cap) + " |"
    rate = "ack-paced" if opts.rate <= 0 else fmt(opts.rate, 0)
    cells = [
        r["target"],
        fmt(opts.clients),
        fmt(opts.rooms),
        fmt(opts.messages),
        fmt(opts.size),
        rate,
        fmt(r.get("deliveries_per_s"), 0),
        fmt(r.get("p50_ms"), 2),
        fmt(r.get("p95_ms"), 2),
        fmt(r.get("p99_ms"), 2),
        fmt(r["rss_idle"] / MiB),
        fmt(r["rss_conns"] / MiB),
        fmt(r["bytes_per_conn"] / 1024),
        server_cpu_cell(r),
        fmt(r.get("us_cpu_per_delivery"), 2),
        f"{r['client_busy_max']:.0%}" if "client_busy_max" in r else "-",
        fmt(r.get("other_load_cores"), 2),
        fmt(r.get("lost")),
    ]
    return "| " + " | ".join(cells) + " |"


def median_of(results: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in results if isinstance(r.get(key), int | float)]
    return statistics.median(vals) if vals else None


def ratios(by_target: dict[str, list[dict[str, Any]]], capacity: bool) -> list[str]:
    """Medians over repeats, and each target against the first one."""
    names = [t for t, rs in by_target.items() if rs and "unavailable" not in rs[0]]
    if len(names) < 2:
        return []
    base = names[0]
    if capacity:
        keys = [("bytes_per_conn", "RSS/conn"), ("setup_cpu_s", "CPU to connect"), ("connect_s", "connect time")]
    else:
        keys = [
            ("deliveries_per_s", "deliveries/s"),
            ("p50_ms", "p50"),
            ("p95_ms", "p95"),
            ("p99_ms", "p99"),
            ("us_cpu_per_delivery", "CPU/delivery"),
            ("bytes_per_conn", "RSS/conn"),
            ("setup_cpu_s", "CPU to connect+join"),
        ]
    out = [
        f"| ratio to {base} (median of runs) | " + " | ".join(label for _, label in keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for name in names:
        cells = []
        for key, _ in keys:
            a, b = median_of(by_target[name], key), median_of(by_target[base], key)
            cells.append(f"{a / b:.2f}x" if a is not None and b else "-")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="gateway", help=f"comma-separated, from {', '.join(TARGETS)}")
    p.add_argument("--clients", type=int, default=200, help="subscriber connections (N)")
    p.add_argument("--rooms", type=int, default=1, help="rooms (R); subscribers are spread over them")
    p.add_argument("--messages", type=int, default=200, help="messages per publisher (M); 0: capacity only")
    p.add_argument("--size", type=int, default=128, help="message content size in bytes")
    p.add_argument("--rate", type=float, default=0.0, help="total messages/s over all publishers; 0: ack-paced")
    p.add_argument("--window", type=int, default=8, help="unacknowledged messages per publisher when ack-paced")
    p.add_argument("--client-procs", type=int, default=1, help="subscriber client processes")
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=(os.cpu_count() or 1) >= 2,
        help="server on CPU 0, clients on CPU 1 (default when there are 2+ CPUs)",
    )
    p.add_argument(
        "--join",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="subscribers join their room (--no-join: authenticated idle connections, with --messages 0)",
    )
    p.add_argument("--repeat", type=int, default=1, help="run the targets this many times, interleaved")
    p.add_argument("--concurrency", type=int, default=64, help="handshakes in flight per client process")
    p.add_argument("--connect-timeout", type=float, default=120.0)
    p.add_argument("--idle-timeout", type=float, default=5.0, help="stop waiting after this long without a delivery")
    p.add_argument("--max-seconds", type=float, default=60.0, help="cap on one publishing phase")
    p.add_argument(
        "--idle-wait", type=float, default=60.0, help="wait up to this long for a quiet machine before each run"
    )
    p.add_argument("--idle-load", type=float, default=0.3, help="quiet: other processes use fewer cores than this")
    p.add_argument("--gateway-arg", action="append", default=[], help="extra server.py argument (repeatable)")
    p.add_argument(
        "--profile", default="", help="py-spy the Python servers while publishing (or joining, with --messages 0)"
    )
    p.add_argument("--syscalls", action="store_true", help="count the server's write syscalls (strace -c)")
    p.add_argument("--json", default="", help="write all results (and the machine) to this file")
    p.add_argument("--keep", action="store_true", help="keep server/client logs under .cache/")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    targets = [t.strip() for t in opts.target.split(",") if t.strip()]
    if not opts.join and opts.messages:
        print("--no-join needs --messages 0 (nobody would receive anything)", file=sys.stderr)
        return 2
    for t in targets:
        if t not in TARGETS:
            print(f"unknown target {t!r}; choose from {', '.join(TARGETS)}", file=sys.stderr)
            return 2
    CACHE.mkdir(exist_ok=True)
    ensure_bench_venv()
    nofile = raise_nofile()
    need = opts.clients + opts.rooms + 100
    if need > nofile[0]:
        print(f"RLIMIT_NOFILE {nofile[0]} is below the {need} descriptors needed", file=sys.stderr)
        return 2
    cmd = ("python -m bench.fanout " + shlex.join(argv if argv is not None else sys.argv[1:])).strip()
    by_target: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
    for rep in range(opts.repeat):
        for t in targets:
            log(f"run {rep + 1}/{opts.repeat}: {t}, {opts.clients} clients, {opts.messages} msgs/room")
            r = run_one(t, opts)
            r["run"] = rep + 1
            by_target[t].append(r)
            log(dumps(r))
    print(f"\n`{cmd}`\n")
    header = HEADER if opts.messages > 0 else CAP_HEADER
    print(header)
    print("|---" * (header.count(" | ") + 1) + "|")
    for t in targets:
        for r in by_target[t]:
            print(row(r, opts))
    lines = ratios(by_target, opts.messages <= 0)
    if lines:
        print()
        print("\n".join(lines))
    for t in targets:
        for r in by_target[t]:
            if r.get("profile"):
                print(profile_table(t, r["profile"]))
            if r.get("socket_writes_per_delivery"):
                per = r["socket_writes_per_delivery"]
                print(f"\n{t}: {per:.3f} socket writes per delivery (the gateway's own count)")
            if r.get("syscalls") and r.get("received"):
                total = sum(r["syscalls"].values())
                print(
                    f"\n{t}: {total:,} write-type syscalls ({r['syscalls']}) for {r['received']:,} deliveries: "
                    f"{total / r['received']:.3f} per delivery; {r['deliveries_per_frame']:.2f} deliveries per frame"
                )
    doc = {"command": cmd, "options": vars(opts), "machine": machine(), "results": by_target}
    if opts.json:
        Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.json).write_text(dumps(doc) + "\n")
    print("\n" + dumps({"command": cmd, "results": by_target}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
