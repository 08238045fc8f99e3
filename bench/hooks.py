"""What the backend hooks cost the gateway: joins through the join hook and messages through the publish
hook, each against the same gateway without hooks, in one invocation so the ratios share the machine.

    .cache/bench-venv/bin/python -m bench.hooks [--repeat 3] [--conns 200] [--joins 20000]
        [--senders 20] [--members 30] [--msg-rate 1000] [--msg-seconds 10] [--json FILE] [--profile FILE]

One backend serves every run: a process of its own (not pinned; it shares the machine with both sides)
that speaks just enough HTTP/1.1 keep-alive to answer POST /join with `{"allow": true}` and POST
/publish with `{}`, and counts the TCP connections it accepted and the calls it answered (GET /stats).
Each run starts a fresh gateway as bench.targets starts the `gateway` target (server.py from the
project's .venv on CPU 0 when there are 2+ CPUs, this process on CPU 1; rate limits lifted), either as
is ("no hook") or with `--room-access hook --join-hook-url .../join --publish-hook-url .../publish`
("hook"). The two configurations alternate, in a rotated order, over --repeat rounds.

- joins: --conns connections each join a room of their own, wait for `joined`, leave it, wait for
  `left`, and again, until --joins joins are done in all (or --max-seconds pass). Reported: joins/s,
  the gateway's CPU (utime + stime from /proc) per join and its leave, the join's reply time p50/p99.
- messages: --members connections in one room; the first --senders of them send, together paced to
  --msg-rate messages/s for --msg-seconds, without waiting for acks. Each content starts with the send
  time (bench.common.MARK and CLOCK_MONOTONIC ns). Reported: the gateway's CPU per message, the ack's
  latency at the sender (send to ack) and the delivery latency at every member, p50 and p99. The room
  is 30 by default: at 1,000 messages/s a room of 100 (100,000 deliveries/s) keeps the gateway's core
  busy on its own, and the latencies would measure its queue rather than the hook.
- backend: in the hook runs, the TCP connections that carried hook calls per 1,000 calls and the most
  open at once (the gateway's pool holds at most HOOK_CONCURRENCY, 200 by default), with the gateway's
  own count of hook calls by outcome and their mean duration.

The clients are picows connections in this one process (a few µs per frame; its CPU share is reported
so a saturated load shows). Any error frame, refused join, `unavailable` or missing reply makes the run
invalid; the output says so.
Output: Markdown on stdout (the command, medians over rounds, every run), progress on stderr, and the
whole record as JSON with --json. --profile FILE adds one hooked joins run after the rounds, under
py-spy (collapsed stacks to FILE), left out of the medians, and prints its top frames.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

# picows, a Cython WebSocket client with a per-frame callback (as bench/client.py uses it): a room's
# deliveries cost this process a few µs each, so the load stays well short of its core. It lives in the
# bench venv, not in the project's .venv where mypy runs.
from picows import WSFrame, WSMsgType, WSTransport, ws_connect  # type: ignore[import-not-found]
from picows import WSListener as _WSListener

from bench.common import (
    BENCH_VENV,
    MARK,
    ROOT,
    free_port,
    log,
    machine,
    percentile,
    proc_sample,
    raise_nofile,
    wait_machine_idle,
    wait_port,
    wait_quiet,
)
from bench.targets import Server, start
from services.auth import mint

CONFIGS = ("no-hook", "hook")
SCENARIOS = ("joins", "messages")
REPLY_TIMEOUT = 10.0  # seconds a join or leave may wait for its reply before the run counts it as lost
DRAIN_TIMEOUT = 10.0  # seconds after the last message for its acks and deliveries to arrive

# --- the backend (a process of its own) ------------------------------------------------------------

JOIN_ANSWER = b'{"allow": true}'
PUBLISH_ANSWER = b"{}"


@dataclass
class BackendStats:
    accepted: int = 0  # every TCP connection, this harness's /stats reads and port probes included
    hook_conns: int = 0  # connections that carried at least one hook call
    open_hook_conns: int = 0
    peak_hook_conns: int = 0  # most hook connections open at once since the previous /stats read
    joins: int = 0
    publishes: int = 0
    other: int = 0  # requests that were neither a hook call nor /stats (404)


class _BackendConnection(asyncio.Protocol):
    """One client connection: requests parsed from the buffer in order, each answered at once."""

    def __init__(self, stats: BackendStats) -> None:
        self._stats = stats
        self._transport: asyncio.Transport | None = None
        self._pending = bytearray()
        self._hooked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._stats.accepted += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self._hooked:
            self._stats.open_hook_conns -= 1
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._pending += data
        while self._transport is not None:
            head_end = self._pending.find(b"\r\n\r\n")
            if head_end < 0:
                return
            lines = bytes(self._pending[:head_end]).split(b"\r\n")
            method, _, rest = lines[0].partition(b" ")
            target = rest.partition(b" ")[0]
            length = 0
            keep_alive = True
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection":
                    keep_alive = value.strip().lower() != b"close"
                elif name == b"transfer-encoding":
                    self._send(b"501 Not Implemented", b'{"error": "send a Content-Length"}', keep_alive=False)
                    return
            end = head_end + 4 + length
            if len(self._pending) < end:
                return  # the rest of the body has not arrived yet
            del self._pending[:end]
            self._answer(method, target, keep_alive)

    def _answer(self, method: bytes, target: bytes, keep_alive: bool) -> None:
        stats = self._stats
        if method == b"POST" and target in (b"/join", b"/publish"):
            if not self._hooked:
                self._hooked = True
                stats.hook_conns += 1
                stats.open_hook_conns += 1
                stats.peak_hook_conns = max(stats.peak_hook_conns, stats.open_hook_conns)
            if target == b"/join":
                stats.joins += 1
                self._send(b"200 OK", JOIN_ANSWER, keep_alive)
            else:
                stats.publishes += 1
                self._send(b"200 OK", PUBLISH_ANSWER, keep_alive)
        elif method == b"GET" and target == b"/stats":
            body = orjson.dumps(asdict(stats))
            stats.peak_hook_conns = stats.open_hook_conns
            self._send(b"200 OK", body, keep_alive)
        else:
            stats.other += 1
            self._send(b"404 Not Found", b'{"error": "POST /join, POST /publish or GET /stats"}', keep_alive)

    def _send(self, status: bytes, body: bytes, keep_alive: bool) -> None:
        if self._transport is None:
            return
        head = b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (status, len(body))
        if not keep_alive:
            head += b"Connection: close\r\n"
        self._transport.write(head + b"\r\n" + body)
        if not keep_alive:
            self._transport.close()
            self._transport = None


def _serve_backend(port: int) -> None:
    """The backend process's body (started with multiprocessing's spawn, before this process pins itself,
    so it runs wherever the scheduler puts it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the terminal is the parent's to handle

    async def serve() -> None:
        stats = BackendStats()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _BackendConnection(stats), "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


class Backend:
    def __init__(self) -> None:
        self.port = free_port()
        ctx = multiprocessing.get_context("spawn")
        self._proc = ctx.Process(target=_serve_backend, args=(self.port,), name="hooks-backend", daemon=True)
        self._proc.start()
        wait_port(self.port, timeout=30)

    @property
    def pid(self) -> int:
        assert self._proc.pid is not None
        return self._proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(self.url("/stats"), timeout=5) as answer:
            loaded: dict[str, int] = orjson.loads(answer.read())
        return loaded

    def stop(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)


# --- the gateway -----------------------------------------------------------------------------------


def start_gateway(config: str, backend: Backend, cpus: set[int] | None) -> Server:
    extra: list[str] = []
    if config == "hook":
        extra = [
            "--room-access",
            "hook",
            f"--join-hook-url={backend.url('/join')}",
            f"--publish-hook-url={backend.url('/publish')}",
        ]
    # bench.targets lifts --rate-limit/--rate-burst (1,000,000) and the per-address connection limit.
    return start("gateway", cpus, extra)


WATCHED_METRICS = (
    "gateway_hook_calls_total",
    "gateway_hook_seconds_sum",
    "gateway_hook_seconds_count",
    "gateway_errors_total",
    "gateway_unavailable_total",
    "gateway_messages_total",
    "gateway_deliveries_total",
)


def gateway_metrics(server: Server) -> dict[str, float]:
    """The few Prometheus series this benchmark checks, as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(WATCHED_METRICS):
            series, _, value = line.rpartition(" ")
            found[series] = float(value)
    return found


# --- the load (this process) -----------------------------------------------------------------------

Frame = dict[str, Any]


class Client(_WSListener):  # type: ignore[misc]  # picows is Any to the .venv's mypy
    """One WebSocket: replies matched to their request by requestId, everything else to `on_frame`."""

    def __init__(self, on_frame: Callable[[Frame], None] | None = None) -> None:
        super().__init__()
        self.on_frame = on_frame
        self.transport: WSTransport | None = None
        self.waiting: dict[str, asyncio.Future[Frame]] = {}
        self.stray_errors: Counter[str] = Counter()
        self._parts: list[bytes] = []

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT and frame.fin and not self._parts:
            self._dispatch(orjson.loads(frame.get_payload_as_memoryview()))
        elif kind == WSMsgType.TEXT or kind == WSMsgType.CONTINUATION:
            self._parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                whole = b"".join(self._parts)
                self._parts.clear()
                self._dispatch(orjson.loads(whole))
        elif kind == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        for pending in self.waiting.values():
            if not pending.done():
                pending.set_exception(ConnectionError("the gateway closed the connection"))
        self.waiting.clear()

    def _dispatch(self, frame: Frame) -> None:
        rid = frame.get("requestId")
        pending = self.waiting.pop(rid, None) if rid is not None else None
        if pending is not None:
            if not pending.done():
                pending.set_result(frame)
        elif self.on_frame is not None:
            self.on_frame(frame)
        elif frame.get("type") == "error":
            self.stray_errors[str(frame.get("payload", {}).get("code"))] += 1

    def send(self, frame: Frame) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, orjson.dumps(frame))

    async def ask(self, kind: str, payload: dict[str, Any], rid: str) -> Frame:
        reply: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self.waiting[rid] = reply
        self.send({"type": kind, "payload": payload, "requestId": rid})
        try:
            return await asyncio.wait_for(reply, REPLY_TIMEOUT)
        finally:
            self.waiting.pop(rid, None)

    async def close(self) -> None:
        if self.transport is not None and not self.transport.is_disconnected:
            self.transport.send_close()
            self.transport.disconnect()
            await self.transport.wait_disconnected()


async def open_clients(
    server: Server, count: int, prefix: str, on_frame: Callable[[Frame], None] | None = None
) -> list[Client]:
    clients = []
    for i in range(count):
        url = f"{server.url}/?token={mint(server.secret, f'{prefix}-{i}', 3600)}"
        _transport, client = await ws_connect(lambda: Client(on_frame), url, websocket_handshake_timeout=REPLY_TIMEOUT)
        clients.append(client)
    return clients


async def settle(pid: int, idle_share: float = 0.05, window: float = 0.25, timeout: float = 10.0) -> None:
    """bench.common.wait_quiet without blocking the loop (the clients' readers must go on reading)."""
    deadline = time.monotonic() + timeout
    last = proc_sample(pid).cpu
    while time.monotonic() < deadline:
        await asyncio.sleep(window)
        now = proc_sample(pid).cpu
        if now - last < idle_share * window:
            return
        last = now


def _ms(sorted_us: list[int], q: float) -> float:
    return round(percentile(sorted_us, q) / 1000, 3)


def _is(frame: Frame, kind: str, action: str) -> bool:
    return frame.get("type") == kind and frame.get("payload", {}).get("action") == action


def _error_code(frame: Frame) -> str:
    if frame.get("type") == "error":
        return str(frame.get("payload", {}).get("code"))
    return f"unexpected {frame.get('type')}"


async def joins_run(server: Server, opts: argparse.Namespace, on_timed: Callable[[bool], None]) -> dict[str, Any]:
    clients = await open_clients(server, opts.conns, "joiner")
    await settle(server.pid)
    left = opts.joins
    done = 0
    latencies = array("q")  # µs, join sent to `joined`
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + opts.max_seconds

    async def churn(i: int, client: Client) -> None:
        nonlocal left, done
        n = 0
        while left > 0 and time.monotonic() < deadline:
            left -= 1
            n += 1
            room = f"hj{i}-{n % 8}"
            sent = time.perf_counter_ns()
            try:
                reply = await client.ask("join", {"roomId": room}, f"j{n}")
                if not _is(reply, "room_update", "joined"):
                    errors[f"join: {_error_code(reply)}"] += 1
                    continue
                latencies.append((time.perf_counter_ns() - sent) // 1000)
                done += 1
                reply = await client.ask("leave", {"roomId": room}, f"l{n}")
                if not _is(reply, "room_update", "left"):
                    errors[f"leave: {_error_code(reply)}"] += 1
            except (TimeoutError, ConnectionError) as exc:
                errors[f"no reply: {exc.__class__.__name__}"] += 1
                return

    on_timed(True)
    cpu0, own0, t0 = proc_sample(server.pid).cpu, time.process_time(), time.perf_counter()
    await asyncio.gather(*(churn(i, c) for i, c in enumerate(clients)))
    span = time.perf_counter() - t0
    cpu = proc_sample(server.pid).cpu - cpu0
    own = time.process_time() - own0
    on_timed(False)
    for client in clients:
        errors.update({f"stray: {code}": n for code, n in client.stray_errors.items()})
        await client.close()
    lat = sorted(latencies)
    return {
        "joins": done,
        "seconds": round(span, 3),
        "joins_per_s": round(done / span, 1),
        "gateway_cpu_s": round(cpu, 3),
        "gateway_cpu_us_per_join": round(cpu / max(done, 1) * 1e6, 1),
        "gateway_cpu_share": round(cpu / span, 3),
        "client_cpu_share": round(own / span, 3),
        "join_p50_ms": _ms(lat, 50),
        "join_p99_ms": _ms(lat, 99),
        "errors": dict(errors),
    }


async def messages_run(server: Server, opts: argparse.Namespace) -> dict[str, Any]:
    total = int(opts.msg_rate * opts.msg_seconds)
    room = "hooks-bench"
    sent_ns = array("q", bytes(8 * total))
    acks = array("q")  # µs, send to ack, at the sender
    deliveries = array("q")  # µs, send to `message`, at every member
    errors: Counter[str] = Counter()
    answered = 0  # acks and errors with a message's requestId
    mark = len(MARK)

    def on_frame(frame: Frame) -> None:
        nonlocal answered
        kind = frame.get("type")
        now = time.monotonic_ns()
        if kind == "message":
            content: str = frame["payload"]["content"]
            if content.startswith(MARK):
                deliveries.append((now - int(content[mark : content.index("|")])) // 1000)
        elif kind == "ack":
            acks.append((now - sent_ns[int(frame["requestId"])]) // 1000)
            answered += 1
        elif kind == "error":
            errors[f"message: {_error_code(frame)}"] += 1
            answered += frame.get("requestId") is not None

    clients = await open_clients(server, opts.members, "member", on_frame)
    for i, client in enumerate(clients):  # one at a time: the join hook sees one call at a time here
        try:
            reply = await client.ask("join", {"roomId": room}, f"setup{i}")
        except (TimeoutError, ConnectionError) as exc:
            reply = {"type": exc.__class__.__name__}
        if not _is(reply, "room_update", "joined"):
            errors[f"setup join: {_error_code(reply)}"] += 1
    await settle(server.pid)
    senders = clients[: opts.senders]
    pad = "x" * max(0, opts.size - len(MARK) - 20)

    cpu0, own0 = proc_sample(server.pid).cpu, time.process_time()
    start_at = time.monotonic()
    for k in range(total):
        # Always yield, so the replies are read while the pace catches up after a late wake-up.
        await asyncio.sleep(max(0.0, start_at + k / opts.msg_rate - time.monotonic()))
        now = time.monotonic_ns()
        sent_ns[k] = now
        frame = {"type": "message", "payload": {"roomId": room, "content": f"{MARK}{now}|{pad}"}, "requestId": str(k)}
        senders[k % len(senders)].send(frame)
    send_span = time.monotonic() - start_at
    drain_until = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < drain_until and (answered < total or len(deliveries) < len(acks) * len(clients)):
        await asyncio.sleep(0.01)
    span = time.monotonic() - start_at
    cpu = proc_sample(server.pid).cpu - cpu0
    own = time.process_time() - own0
    if answered < total:
        errors["message: no ack or error"] += total - answered
    missing = len(acks) * len(clients) - len(deliveries)
    if missing:
        errors["deliveries missing"] += missing
    for client in clients:
        errors.update({f"stray: {code}": n for code, n in client.stray_errors.items()})
        await client.close()
    ack_us, delivery_us = sorted(acks), sorted(deliveries)
    return {
        "messages": total,
        "acked": len(acks),
        "deliveries": len(deliveries),
        "send_rate": round(total / send_span, 1),
        "seconds": round(span, 3),
        "gateway_cpu_s": round(cpu, 3),
        "gateway_cpu_us_per_msg": round(cpu / max(total, 1) * 1e6, 1),
        "gateway_cpu_share": round(cpu / span, 3),
        "client_cpu_share": round(own / span, 3),
        "ack_p50_ms": _ms(ack_us, 50),
        "ack_p99_ms": _ms(ack_us, 99),
        "delivery_p50_ms": _ms(delivery_us, 50),
        "delivery_p99_ms": _ms(delivery_us, 99),
        "errors": dict(errors),
    }


# --- one run, the profiler -------------------------------------------------------------------------


class Profiler:
    """py-spy (from the bench venv) recording the gateway between switch(True) and switch(False), collapsed
    stacks to `path`. It pauses the gateway for every sample, so the run it profiles is not a measurement."""

    def __init__(self, pid: int, path: Path) -> None:
        self._pid = pid
        self._path = path
        self._proc: subprocess.Popen[bytes] | None = None

    def switch(self, on: bool) -> None:
        if on:
            cmd = [str(BENCH_VENV / "bin" / "py-spy"), "record", "--pid", str(self._pid), "--rate", "250"]
            cmd += ["--format", "raw", "--output", str(self._path)]  # blocking: whole stacks
            self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)  # py-spy attaches before the timed part starts
        elif self._proc is not None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None


def top_frames(path: Path, count: int = 15) -> dict[str, Any]:
    """The functions with the most samples, on top of the stack (self) and anywhere in it (total), as % of
    the samples; a function's lines are counted together, the chain under every sample (loop, main) left out."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not stack or not n_text.isdigit():
            continue
        n = int(n_text)
        frames = [frame.rpartition(":")[0] + ")" if frame.endswith(")") else frame for frame in stack.split(";")]
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            anywhere[frame] += n
    share = max(samples, 1) / 100
    below_all = [(f, n) for f, n in anywhere.most_common() if n < 0.95 * samples]
    return {
        "samples": samples,
        "self": [(f, round(n / share, 1)) for f, n in own.most_common(count)],
        "total": [(f, round(n / share, 1)) for f, n in below_all[: 2 * count]],
    }


def run_one(
    scenario: str, config: str, round_no: int, backend: Backend, opts: argparse.Namespace, profile: Path | None = None
) -> dict[str, Any]:
    cpus = {0} if opts.two else None
    log(f"round {round_no + 1}: {scenario}, {config}")
    stats0 = backend.stats()
    backend_cpu0 = proc_sample(backend.pid).cpu
    server = start_gateway(config, backend, cpus)
    try:
        wait_quiet(server.pid, timeout=10)
        if scenario == "joins":
            profiler = Profiler(server.pid, profile) if profile else None
            switch = profiler.switch if profiler else (lambda on: None)
            result = asyncio.run(joins_run(server, opts, switch))
        else:
            result = asyncio.run(messages_run(server, opts))
        metrics = gateway_metrics(server)
    finally:
        server.stop()
    stats1 = backend.stats()
    calls = (stats1["joins"] - stats0["joins"]) + (stats1["publishes"] - stats0["publishes"])
    conns = stats1["hook_conns"] - stats0["hook_conns"]
    hook_calls = hook_outcomes(metrics)
    seconds = sum(v for k, v in metrics.items() if k.startswith("gateway_hook_seconds_sum"))
    timed = sum(v for k, v in metrics.items() if k.startswith("gateway_hook_seconds_count"))
    result.update(
        {
            "scenario": scenario,
            "config": config,
            "round": round_no + 1,
            "profiled": profile is not None,
            "backend_calls": calls,
            "backend_hook_conns": conns,
            "backend_conns_per_1000_calls": round(conns / calls * 1000, 2) if calls else None,
            "backend_peak_open_conns": stats1["peak_hook_conns"],
            "backend_cpu_us_per_call": round((proc_sample(backend.pid).cpu - backend_cpu0) / calls * 1e6, 1)
            if calls
            else None,
            "gateway_hook_calls": hook_calls,
            "gateway_hook_mean_ms": round(seconds / timed * 1000, 3) if timed else None,
            "gateway_error_frames": {k: int(v) for k, v in metrics.items() if k.startswith("gateway_errors_total")},
        }
    )
    errors: dict[str, int] = result["errors"]
    if hook_calls["refused"] or hook_calls["unavailable"]:
        errors["hook refused/unavailable (gateway metrics)"] = hook_calls["refused"] + hook_calls["unavailable"]
    result["valid"] = not errors
    log(orjson.dumps(result).decode())
    return result


def hook_outcomes(metrics: dict[str, float]) -> dict[str, int]:
    """The gateway's hook calls by outcome, all hooks together."""
    out = {"ok": 0, "refused": 0, "unavailable": 0}
    for series, value in metrics.items():
        if series.startswith("gateway_hook_calls_total{"):
            for outcome in out:
                if f'outcome="{outcome}"' in series:
                    out[outcome] += int(value)
    return out


# --- report ----------------------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def _diff(a: float | None, b: float | None, digits: int = 2) -> str:
    return f"{a - b:+.{digits}f}" if a is not None and b is not None else "-"


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    keys = {
        "joins": ("joins_per_s", "gateway_cpu_us_per_join", "gateway_cpu_share", "join_p50_ms", "join_p99_ms"),
        "messages": (
            "gateway_cpu_us_per_msg",
            "gateway_cpu_share",
            "ack_p50_ms",
            "ack_p99_ms",
            "delivery_p50_ms",
            "delivery_p99_ms",
            "send_rate",
        ),
    }
    extra = ("client_cpu_share", "backend_conns_per_1000_calls", "backend_cpu_us_per_call", "gateway_hook_mean_ms")
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for scenario, names in keys.items():
        out[scenario] = {}
        for config in CONFIGS:
            chosen = [r for r in runs if r["scenario"] == scenario and r["config"] == config and not r["profiled"]]
            out[scenario][config] = {name: _median(chosen, name) for name in (*names, *extra)}
    return out


def paired_ratios(runs: list[dict[str, Any]], scenario: str, key: str) -> list[float]:
    """hook / no-hook of `key` within each round."""
    out = []
    for rnd in sorted({r["round"] for r in runs if not r["profiled"]}):
        pair = {r["config"]: r for r in runs if r["round"] == rnd and r["scenario"] == scenario and not r["profiled"]}
        if "hook" in pair and "no-hook" in pair and pair["no-hook"].get(key):
            out.append(round(pair["hook"][key] / pair["no-hook"][key], 3))
    return out


def _joins_section(opts: argparse.Namespace, runs: list[dict[str, Any]], j: dict[str, dict[str, Any]]) -> None:
    no, hook = j["no-hook"], j["hook"]
    print(f"### Joins ({opts.conns} connections, {opts.joins:,} joins per run, each with its leave)\n")
    print("| config | joins/s | gateway CPU µs per join | gateway CPU share | join reply p50 / p99 ms | load CPU |")
    print("|---|---|---|---|---|---|")
    for name, row in (("no hook", no), ("join hook", hook)):
        print(
            f"| {name} | {_fmt(row['joins_per_s'])} | {_fmt(row['gateway_cpu_us_per_join'])} | "
            f"{_fmt(row['gateway_cpu_share'], 2)} | {_fmt(row['join_p50_ms'], 2)} / {_fmt(row['join_p99_ms'], 2)} | "
            f"{_fmt(row['client_cpu_share'], 2)} |"
        )
    print(
        f"| hook / no hook | {_ratio(hook['joins_per_s'], no['joins_per_s'])} | "
        f"{_ratio(hook['gateway_cpu_us_per_join'], no['gateway_cpu_us_per_join'])} "
        f"({_diff(hook['gateway_cpu_us_per_join'], no['gateway_cpu_us_per_join'], 0)} µs) | | "
        f"{_diff(hook['join_p50_ms'], no['join_p50_ms'])} / {_diff(hook['join_p99_ms'], no['join_p99_ms'])} ms | |"
    )
    print(
        f"\nSame-round ratios (hook / no hook): joins/s {paired_ratios(runs, 'joins', 'joins_per_s')}, "
        f"CPU per join {paired_ratios(runs, 'joins', 'gateway_cpu_us_per_join')}\n"
    )


def _messages_section(opts: argparse.Namespace, runs: list[dict[str, Any]], m: dict[str, dict[str, Any]]) -> None:
    no, hook = m["no-hook"], m["hook"]
    print(
        f"### Messages ({opts.senders} senders in one room of {opts.members}, {opts.msg_rate:,.0f} messages/s for "
        f"{opts.msg_seconds:g} s, {opts.size}-character content; delivery latency at all {opts.members} members)\n"
    )
    print(
        "| config | gateway CPU µs per message | gateway CPU share | ack p50 / p99 ms | delivery p50 / p99 ms "
        "| sent/s | load CPU |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, row in (("no hook", no), ("publish hook", hook)):
        print(
            f"| {name} | {_fmt(row['gateway_cpu_us_per_msg'])} | {_fmt(row['gateway_cpu_share'], 2)} | "
            f"{_fmt(row['ack_p50_ms'], 2)} / {_fmt(row['ack_p99_ms'], 2)} | "
            f"{_fmt(row['delivery_p50_ms'], 2)} / {_fmt(row['delivery_p99_ms'], 2)} | {_fmt(row['send_rate'])} | "
            f"{_fmt(row['client_cpu_share'], 2)} |"
        )
    print(
        f"| hook vs no hook | {_ratio(hook['gateway_cpu_us_per_msg'], no['gateway_cpu_us_per_msg'])} "
        f"({_diff(hook['gateway_cpu_us_per_msg'], no['gateway_cpu_us_per_msg'], 0)} µs) | | "
        f"{_diff(hook['ack_p50_ms'], no['ack_p50_ms'])} / {_diff(hook['ack_p99_ms'], no['ack_p99_ms'])} ms | "
        f"{_diff(hook['delivery_p50_ms'], no['delivery_p50_ms'])} / "
        f"{_diff(hook['delivery_p99_ms'], no['delivery_p99_ms'])} ms | | |"
    )
    print(
        f"\nSame-round ratios (hook / no hook): CPU per message "
        f"{paired_ratios(runs, 'messages', 'gateway_cpu_us_per_msg')}\n"
    )


def _backend_section(runs: list[dict[str, Any]]) -> None:
    print("### Backend connections (hook runs; a fresh gateway each, its setup joins included)\n")
    print(
        "| round | scenario | hook calls answered | TCP connections that carried calls | per 1,000 calls | "
        "most open at once | gateway: ok / refused / unavailable | gateway's mean call ms | backend CPU µs per call |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        if r["config"] != "hook":
            continue
        hc = r["gateway_hook_calls"]
        tag = " (profiled)" if r["profiled"] else ""
        print(
            f"| {r['round']}{tag} | {r['scenario']} | {r['backend_calls']:,} | {r['backend_hook_conns']} | "
            f"{_fmt(r['backend_conns_per_1000_calls'], 2)} | {r['backend_peak_open_conns']} | "
            f"{hc['ok']:,} / {hc['refused']} / {hc['unavailable']} | {_fmt(r['gateway_hook_mean_ms'], 2)} | "
            f"{_fmt(r['backend_cpu_us_per_call'])} |"
        )
    print()


def _runs_section(runs: list[dict[str, Any]]) -> None:
    print("### Every run\n")
    print(
        "| round | scenario | config | rate | gateway CPU µs per op | gateway CPU share | p50 / p99 ms | "
        "delivery p50 / p99 ms | load CPU | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        tag = " (profiled)" if r["profiled"] else ""
        if r["scenario"] == "joins":
            rate, cpu = f"{r['joins_per_s']:,.0f} joins/s", r["gateway_cpu_us_per_join"]
            p, d = f"{r['join_p50_ms']:.2f} / {r['join_p99_ms']:.2f} (join reply)", "-"
        else:
            rate, cpu = f"{r['send_rate']:,.0f} msg/s", r["gateway_cpu_us_per_msg"]
            p = f"{r['ack_p50_ms']:.2f} / {r['ack_p99_ms']:.2f} (ack)"
            d = f"{r['delivery_p50_ms']:.2f} / {r['delivery_p99_ms']:.2f}"
        print(
            f"| {r['round']}{tag} | {r['scenario']} | {r['config']} | {rate} | {cpu:,.0f} | "
            f"{r['gateway_cpu_share']:.2f} | {p} | {d} | {r['client_cpu_share']:.2f} | {r['errors'] or 'none'} |"
        )


def report(command: str, info: dict[str, Any], opts: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary = summarize(runs)
    print(f"`{command}`\n")
    pinning = "gateway on CPU 0, load on CPU 1" if opts.two else "nothing pinned (1 CPU)"
    print(
        f"{info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}; {pinning}; the backend unpinned "
        f"(it shares the machine). Medians of {opts.repeat} rounds; load CPU is this process's share of a core.\n"
    )
    invalid = [r for r in runs if not r["valid"]]
    if invalid:
        print("**INVALID: runs with errors, refusals, unavailable or missing replies:**\n")
        for r in invalid:
            print(f"- round {r['round']} {r['scenario']} {r['config']}: {r['errors']}")
        print()
    if "joins" in opts.scenarios:
        _joins_section(opts, runs, summary["joins"])
    if "messages" in opts.scenarios:
        _messages_section(opts, runs, summary["messages"])
    _backend_section(runs)
    _runs_section(runs)
    return summary


# --- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hooks", description=__doc__.split("\n\n")[0] if __doc__ else "")
    p.add_argument("--repeat", type=int, default=3, help="rounds; each runs both scenarios in both configurations")
    p.add_argument("--conns", type=int, default=200, help="joins: connections joining at once")
    p.add_argument("--joins", type=int, default=20000, help="joins: joins per run, in all")
    p.add_argument("--max-seconds", type=float, default=60.0, help="joins: a run stops after this long regardless")
    p.add_argument("--senders", type=int, default=20, help="messages: connections that send")
    p.add_argument("--members", type=int, default=30, help="messages: connections in the room (senders included)")
    p.add_argument("--msg-rate", type=float, default=1000.0, help="messages: messages per second, all senders")
    p.add_argument("--msg-seconds", type=float, default=10.0, help="messages: seconds of sending")
    p.add_argument("--size", type=int, default=100, help="messages: content characters")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated: joins, messages")
    p.add_argument("--idle-wait", type=float, default=20.0, help="seconds to wait for a quiet machine per round")
    p.add_argument("--idle-load", type=float, default=0.3, help="cores busy that count as quiet")
    p.add_argument("--json", default="", help="write every run and the medians here")
    p.add_argument("--profile", default="", help="py-spy one more hooked joins run; collapsed stacks to this file")
    opts = p.parse_args(argv)
    opts.scenarios = [name for name in opts.scenarios.split(",") if name]
    if not opts.scenarios or set(opts.scenarios) - set(SCENARIOS):
        p.error(f"--scenarios: some of {', '.join(SCENARIOS)}")
    if opts.senders > opts.members or opts.senders < 1:
        p.error("--senders must be 1 to --members")
    if opts.msg_rate * opts.msg_seconds < 1 or opts.joins < 1 or opts.conns < 1 or opts.repeat < 1:
        p.error("every count must be at least 1")
    args = sys.argv[1:] if argv is None else argv
    command = " ".join([".cache/bench-venv/bin/python -m bench.hooks", *map(shlex.quote, args)])
    opts.two = (os.cpu_count() or 1) >= 2
    raise_nofile()
    info = machine()
    started = time.monotonic()
    backend = Backend()  # before this process pins itself: the backend stays unpinned
    if opts.two:
        os.sched_setaffinity(0, {1})
    runs: list[dict[str, Any]] = []
    profile: dict[str, Any] = {}
    try:
        for round_no in range(opts.repeat):
            if opts.idle_wait > 0:
                waited, load = wait_machine_idle(opts.idle_load, timeout=opts.idle_wait)
                log(f"round {round_no + 1}: waited {waited:.1f} s for a quiet machine; {load:.2f} cores busy")
            order = CONFIGS if round_no % 2 == 0 else CONFIGS[::-1]
            for scenario in opts.scenarios:
                for config in order:
                    runs.append(run_one(scenario, config, round_no, backend, opts))
        if opts.profile:
            path = ROOT / opts.profile
            runs.append(run_one("joins", "hook", opts.repeat, backend, opts, profile=path))
            profile = top_frames(path)
    finally:
        backend.stop()
    print()
    summary = report(command, info, opts, runs)
    if profile:
        print(f"\n### py-spy, hooked joins run ({profile['samples']:,} samples of the gateway, {opts.profile})\n")
        print("| on top of the stack | % |\n|---|---|")
        for frame, share in profile["self"]:
            print(f"| `{frame}` | {share} |")
        print("\n| anywhere in the stack | % |\n|---|---|")
        for frame, share in profile["total"]:
            print(f"| `{frame}` | {share} |")
    log(f"done in {time.monotonic() - started:.0f} s")
    if opts.json:
        record = {
            "command": command,
            "machine": info,
            "options": {k: v for k, v in vars(opts).items()},
            "summary": summary,
            "runs": runs,
            "profile": profile,
        }
        (ROOT / opts.json).write_text(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
