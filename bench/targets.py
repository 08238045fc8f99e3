"""Servers under test, each started as a subprocess on 127.0.0.1 and a free port.

- gateway: this project's `server.py` from the project's .venv (in-process memory bus).
- gateway-redis: the same with `--redis-host/--redis-port` on a throwaway redis-server (Redis bus,
  presence and dedupe); redis-server's CPU is counted as a helper.
- socketio: python-socketio AsyncServer (ASGI) under uvicorn, memory manager, from the bench venv;
  `socketio-redis` is the same with AsyncRedisManager and a throwaway redis-server.
- socketio-node: Socket.IO 4 on Node (bench/peers/socketio_node.js), installed from npm into
  .cache/socketio-node on first use: the server a user would pick instead.
- centrifugo: Centrifugo v6 built with `go install` into .cache/bin (or the binary named by
  $BENCH_CENTRIFUGO), memory engine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import BENCH_PY, CACHE, GATEWAY_PY, ROOT, free_port, log, proc_sample, wait_port

CENTRIFUGO_VERSION = "v6.9.1"
# $BENCH_CENTRIFUGO: an already built binary (for example another worktree's .cache/bin/centrifugo).
CENTRIFUGO_BIN = Path(os.environ.get("BENCH_CENTRIFUGO") or CACHE / "bin" / "centrifugo")
# gateway-sse: the gateway with every subscriber on its HTTP transport (the publishers stay on WebSockets);
# gateway-rawws: on WebSockets read by the same pure-Python client machinery as gateway-sse's.
TARGETS = (
    "gateway",
    "gateway-sse",
    "gateway-rawws",
    "gateway-redis",
    "socketio",
    "socketio-redis",
    "socketio-node",
    "centrifugo",
)
SOCKETIO_NODE_VERSION = "4.8.4"
SOCKETIO_NODE_DIR = CACHE / "socketio-node"


class TargetUnavailable(Exception):
    """The peer cannot be built or started here; the message says why."""


@dataclass
class Server:
    name: str
    proto: str  # client adapter: gateway | gateway-sse | socketio | centrifugo
    proc: subprocess.Popen[bytes]
    port: int
    secret: str
    workdir: Path
    version: str = ""
    helpers: list[int] = field(default_factory=list)  # pids whose CPU counts too (redis-server)
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def helper_cpu(self) -> float:
        total = 0.0
        for pid in self.helpers:
            try:
                total += proc_sample(pid).cpu
            except OSError:
                pass
        return total

    def log_text(self) -> str:
        try:
            return (self.workdir / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for fn in self.cleanup:
            try:
                fn()
            except Exception as exc:
                log(f"cleanup failed: {exc!r}")


def _pin(cpus: set[int] | None) -> Callable[[], None] | None:
    if not cpus:
        return None

    def pre() -> None:
        os.sched_setaffinity(0, cpus)

    return pre


def start(name: str, cpus: set[int] | None, gateway_args: list[str] | None = None) -> Server:
    CACHE.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir=CACHE))
    secret = secrets.token_urlsafe(48)
    if name in ("gateway", "gateway-sse", "gateway-rawws", "gateway-redis"):
        return _gateway(name, workdir, secret, cpus, gateway_args or [])
    if name in ("socketio", "socketio-redis"):
        return _socketio(name, workdir, secret, cpus)
    if name == "socketio-node":
        return _socketio_node(workdir, secret, cpus)
    if name == "centrifugo":
        return _centrifugo(workdir, secret, cpus)
    raise ValueError(name)


def _gateway(name: str, workdir: Path, secret: str, cpus: set[int] | None, extra: list[str]) -> Server:
    # Limits that would throttle a load generator are lifted; everything else is the default.
    helpers: list[int] = []
    cleanup: list[Callable[[], None]] = []
    if name == "gateway-redis":
        # Pinned like the server: with --pin, redis-server shares the server's core (CPU 0).
        rport, rpid, rstop = _redis(workdir, cpus)
        extra = [*extra, "--redis-host=127.0.0.1", f"--redis-port={rport}"]
        helpers.append(rpid)
        cleanup.append(rstop)
    cmd = [
        str(GATEWAY_PY),
        "server.py",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        f"--jwt-secret={secret}",  # one token: a secret may start with "-"
        "--rate-limit",
        "1000000",
        "--rate-burst",
        "1000000",
        "--max-connections",
        "100000",
        "--max-connections-per-ip",  # every load client comes from 127.0.0.1
        "100000",
        "--drain-delay",
        "0",
        "--drain-window",
        "0",
        "--no-demo",
        *extra,
    ]
    logf = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, preexec_fn=_pin(cpus))
    deadline = time.monotonic() + 30
    port = 0
    while not port:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            for fn in cleanup:
                fn()
            raise TargetUnavailable(f"gateway did not start: {(workdir / 'server.log').read_text()[-500:]}")
        for line in (workdir / "server.log").read_text(errors="replace").splitlines():
            if '"listening"' in line:
                port = int(json.loads(line)["port"])
        time.sleep(0.05)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    version = f"git {rev.stdout.strip()}"
    proto = name if name in ("gateway-sse", "gateway-rawws") else "gateway"
    return Server(name, proto, proc, port, secret, workdir, version=version, helpers=helpers, cleanup=cleanup)


def _redis(workdir: Path, cpus: set[int] | None) -> tuple[int, int, Callable[[], None]]:
    if not shutil.which("redis-server"):
        raise TargetUnavailable("redis-server is not installed")
    port = free_port()
    pidfile = workdir / "redis.pid"
    subprocess.run(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
            "--pidfile",
            str(pidfile),
            "--logfile",
            str(workdir / "redis.log"),
        ],
        check=True,
        preexec_fn=_pin(cpus),
    )
    wait_port(port)
    deadline = time.monotonic() + 5
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pidfile.read_text().strip())

    def stop() -> None:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True, timeout=10)

    return port, pid, stop


def _socketio(name: str, workdir: Path, secret: str, cpus: set[int] | None) -> Server:
    port = free_port()
    env = {**os.environ, "BENCH_SECRET": secret, "PYTHONPATH": str(ROOT)}
    helpers: list[int] = []
    cleanup: list[Callable[[], None]] = []
    if name == "socketio-redis":
        rport, rpid, rstop = _redis(workdir, cpus)
        env["BENCH_REDIS_URL"] = f"redis://127.0.0.1:{rport}/0"
        helpers.append(rpid)
        cleanup.append(rstop)
    # --loop asyncio: the gateway runs on the standard asyncio loop too (no uvloop on either side).
    cmd = [
        str(BENCH_PY),
        "-m",
        "uvicorn",
        "bench.peers.socketio_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "asyncio",
        "--ws",
        "websockets",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    logf = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT, preexec_fn=_pin(cpus))
    try:
        wait_port(port, proc=proc)
    except RuntimeError as exc:
        for fn in cleanup:
            fn()
        raise TargetUnavailable(f"{exc}: {(workdir / 'server.log').read_text()[-500:]}") from None
    ver = subprocess.run(
        [
            str(BENCH_PY),
            "-c",
            "import socketio, uvicorn, websockets; print(socketio.__version__ "
            "if hasattr(socketio, '__version__') else '', uvicorn.__version__, websockets.__version__)",
        ],
        capture_output=True,
        text=True,
    ).stdout.split()
    version = "python-socketio (uvicorn {}, websockets {})".format(*ver[-2:]) if len(ver) >= 2 else ""
    return Server(name, "socketio", proc, port, secret, workdir, version=version, helpers=helpers, cleanup=cleanup)


def install_socketio_node() -> Path:
    """`npm install socket.io` into .cache/socketio-node once; TargetUnavailable if it cannot."""
    modules = SOCKETIO_NODE_DIR / "node_modules"
    stamp = SOCKETIO_NODE_DIR / ".installed"
    if stamp.exists() and stamp.read_text() == SOCKETIO_NODE_VERSION:
        return modules
    if not shutil.which("node") or not shutil.which("npm"):
        raise TargetUnavailable("node and npm are needed for the Socket.IO (Node) peer")
    SOCKETIO_NODE_DIR.mkdir(parents=True, exist_ok=True)
    log(f"installing socket.io@{SOCKETIO_NODE_VERSION} from npm (first run only)")
    res = subprocess.run(
        [
            "npm",
            "install",
            "--prefix",
            str(SOCKETIO_NODE_DIR),
            "--no-audit",
            "--no-fund",
            "--silent",
            f"socket.io@{SOCKETIO_NODE_VERSION}",
        ],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise TargetUnavailable(f"npm install socket.io failed: {res.stderr[-300:]}")
    stamp.write_text(SOCKETIO_NODE_VERSION)
    return modules


def _socketio_node(workdir: Path, secret: str, cpus: set[int] | None) -> Server:
    """Socket.IO on Node (bench/peers/socketio_node.js): what a user would pick instead of the gateway."""
    modules = install_socketio_node()
    port = free_port()
    env = {**os.environ, "BENCH_SECRET": secret, "PORT": str(port), "NODE_PATH": str(modules)}
    logf = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed with the process
    cmd = ["node", str(ROOT / "bench" / "peers" / "socketio_node.js")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT, preexec_fn=_pin(cpus))
    try:
        wait_port(port, proc=proc)
    except RuntimeError as exc:
        raise TargetUnavailable(f"{exc}: {(workdir / 'server.log').read_text()[-500:]}") from None
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return Server(
        "socketio-node",
        "socketio",
        proc,
        port,
        secret,
        workdir,
        version=f"socket.io {SOCKETIO_NODE_VERSION} (node {node})",
    )


def build_centrifugo() -> Path:
    """`go install` Centrifugo into .cache/bin once; TargetUnavailable with the reason if it fails."""
    if CENTRIFUGO_BIN.exists():
        return CENTRIFUGO_BIN
    if not shutil.which("go"):
        raise TargetUnavailable("no Go toolchain on PATH to build Centrifugo")
    log(f"building centrifugo {CENTRIFUGO_VERSION} with go install (first run only, a few minutes)")
    env = {**os.environ, "GOBIN": str(CENTRIFUGO_BIN.parent)}
    res = subprocess.run(
        ["go", "install", f"github.com/centrifugal/centrifugo/v6@{CENTRIFUGO_VERSION}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if res.returncode != 0 or not CENTRIFUGO_BIN.exists():
        raise TargetUnavailable(f"go install centrifugo failed: {res.stderr.strip()[-500:]}")
    return CENTRIFUGO_BIN


def _centrifugo(workdir: Path, secret: str, cpus: set[int] | None) -> Server:
    binary = build_centrifugo()
    port = free_port()
    config: dict[str, Any] = {
        "http_server": {"address": "127.0.0.1", "port": port},
        "client": {"token": {"hmac_secret_key": secret}},
        "http_api": {"key": secrets.token_urlsafe(24)},
        "engine": {"type": "memory"},
        "channel": {
            "namespaces": [
                {"name": "bench", "allow_subscribe_for_client": True, "allow_publish_for_client": True},
                # bench.storm: recovery with a positioned stream, as long as the gateway's history.
                {
                    "name": "storm",
                    "allow_subscribe_for_client": True,
                    "allow_publish_for_client": True,
                    "force_recovery": True,
                    "force_positioning": True,
                    "history_size": 1000,
                    "history_ttl": "600s",
                },
            ]
        },
        "log": {"level": "warn"},
    }
    cfg = workdir / "config.json"
    cfg.write_text(json.dumps(config, indent=2))
    logf = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [str(binary), "--config", str(cfg)], cwd=workdir, stdout=logf, stderr=subprocess.STDOUT, preexec_fn=_pin(cpus)
    )
    try:
        wait_port(port, proc=proc)
    except RuntimeError as exc:
        raise TargetUnavailable(f"{exc}: {(workdir / 'server.log').read_text()[-500:]}") from None
    ver = subprocess.run([str(binary), "version"], capture_output=True, text=True).stdout.strip()
    return Server("centrifugo", "centrifugo", proc, port, secret, workdir, version=ver or CENTRIFUGO_VERSION)
