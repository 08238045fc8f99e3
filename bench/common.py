"""Helpers shared by the benchmark orchestrator and its parts. Standard library only, so the
orchestrator runs from any Python 3.11 (the project's .venv in `make bench`); the load clients and
the Python peers run from the bench venv (.cache/bench-venv, bench/requirements.txt)."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
BENCH_VENV = CACHE / "bench-venv"
BENCH_PY = BENCH_VENV / "bin" / "python"
BENCH_REQS = ROOT / "bench" / "requirements.txt"
GATEWAY_PY = ROOT / ".venv" / "bin" / "python"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# Content of every timed message starts with MARK, the sender's CLOCK_MONOTONIC in ns and "|":
# CLOCK_MONOTONIC is one clock for every process on a Linux host.
MARK = "~T"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_bench_venv() -> Path:
    """Create .cache/bench-venv from bench/requirements.txt unless it is already there and current."""
    stamp = BENCH_VENV / ".installed"
    want = BENCH_REQS.read_text()
    if BENCH_PY.exists() and stamp.exists() and stamp.read_text() == want:
        return BENCH_PY
    log(f"creating {BENCH_VENV} from {BENCH_REQS.relative_to(ROOT)}")
    base = sys.executable if sys.version_info >= (3, 11) else "python3"
    subprocess.run([base, "-m", "venv", str(BENCH_VENV)], check=True)
    subprocess.run([str(BENCH_PY), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(BENCH_PY), "-m", "pip", "install", "-q", "-r", str(BENCH_REQS)], check=True)
    stamp.write_text(want)
    return BENCH_PY


def raise_nofile() -> tuple[int, int]:
    """Lift the soft open-files limit to the hard one (inherited by every process started after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass(frozen=True)
class ProcSample:
    rss: int  # bytes, VmRSS
    hwm: int  # bytes, VmHWM (peak RSS)
    cpu: float  # seconds, utime + stime
    threads: int


def proc_sample(pid: int) -> ProcSample:
    rss = hwm = threads = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    with open(f"/proc/{pid}/stat") as fh:
        # The command name (field 2) may hold spaces; fields after the closing parenthesis are fixed.
        fields = fh.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return ProcSample(rss=rss, hwm=hwm, cpu=cpu, threads=threads)


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live children (the gateway's `--workers N` forks them)."""
    total = proc_sample(pid).cpu
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    for child in children:
        try:
            total += proc_sample(int(child)).cpu
        except OSError:
            pass
    return total


def system_busy() -> float:
    """CPU seconds spent busy by the whole machine so far (all cores, /proc/stat)."""
    with open("/proc/stat") as fh:
        parts = fh.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def loadavg() -> float:
    with open("/proc/loadavg") as fh:
        return float(fh.read().split()[0])


def wait_machine_idle(max_cores: float, window: float = 2.0, timeout: float = 120.0) -> tuple[float, float]:
    """Wait (bounded) until the whole machine is busy for less than `max_cores` over `window` seconds,
    so a run does not start in the middle of someone else's test suite. Returns (waited, last load)."""
    start = time.monotonic()
    load = 0.0
    while True:
        before = system_busy()
        time.sleep(window)
        load = (system_busy() - before) / window
        if load <= max_cores or time.monotonic() - start >= timeout:
            return time.monotonic() - start, load


def wait_quiet(pid: int, idle_share: float = 0.05, window: float = 0.5, timeout: float = 30.0) -> float:
    """Wait until the process uses less than `idle_share` of a core over `window` seconds.
    Returns the seconds waited (setup traffic such as presence fan-out must be over before timing)."""
    start = time.monotonic()
    last = proc_sample(pid).cpu
    while time.monotonic() - start < timeout:
        time.sleep(window)
        now = proc_sample(pid).cpu
        if now - last < idle_share * window:
            return time.monotonic() - start
        last = now
    return time.monotonic() - start


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100.0 * (len(sorted_values) - 1))))
    return float(sorted_values[k])


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_gib": round(mem / 2**30, 1),
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=False, separators=(",", ":"))
