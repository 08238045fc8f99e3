"""Which asyncio HTTP client the gateway should call its backend's hooks with: aiohttp (ClientSession on a
TCPConnector with a limit), httpx (AsyncClient with Limits) and Tornado's CurlAsyncHTTPClient (pycurl,
max_clients). A hook call is a small JSON POST (~300 bytes, four headers) answered with ~15 bytes, to
one backend URL, many at once, each with its own timeout (HOOK_TIMEOUT, 3 s by default).

    .cache/bench-venv/bin/python -m bench.hook_clients [--calls 5000] [--repeat 3] [--conc 1,50]
        [--clients aiohttp,httpx,curl] [--pool 200] [--json FILE]

The backend runs in a separate process on 127.0.0.1 (a raw asyncio protocol speaking just enough
HTTP/1.1 keep-alive: it reads the body and answers 200 `{"allow": true}`; `?delay_ms=` and `?status=`
make it slow or refuse). It counts the TCP connections it accepted in shared memory, so counting them
opens none. The measuring process runs each client on asyncio with Tornado's IOLoop over it (as the
gateway does), one fresh client per (client, concurrency) run: a warm-up of 200 calls, then --calls
timed calls from `concurrency` worker tasks, clients in a rotated order in each of --repeat rounds.

Per run: calls/s, the measuring process's CPU (time.process_time, all its threads) per call, p50/p99
latency, the backend's CPU per call (from /proc, for scale) and the connections the backend accepted
during the timed calls (and during the warm-up). Then three checks per client:
    timeout    backend delays 2 s, client timeout 0.5 s, 20 calls at once: how long each call took
               to fail and with what, then one normal call on the same client: does it work, and how
               many connections did it open?
    pool-full  the same with a pool of 4: are the 16 calls waiting for a connection bounded by the
               timeout too?
    errors     what a refused connection, a timeout and a 500 look like to the caller.
Output: Markdown on stdout (each run, then the medians over rounds), progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import multiprocessing
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, TypeAlias
from urllib.parse import parse_qs

from bench.common import ROOT, free_port, log, machine, percentile, proc_sample, wait_machine_idle

ANSWER = b'{"allow": true}'
WARMUP = 200
# Shared counters, written by the backend only: accepted connections, open connections, answers sent.
ACCEPTED, OPEN, ANSWERED = 0, 1, 2
Counters: TypeAlias = "ctypes.Array[ctypes.c_longlong]"


# --- the backend (child process) -------------------------------------------------------------------


class _HookBackend(asyncio.Protocol):
    """One keep-alive connection. Requests are handled in order; a delayed answer holds the ones after it
    (no client here pipelines, so there are none)."""

    def __init__(self, counters: Counters) -> None:
        self._counters = counters
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._counters[ACCEPTED] += 1
        self._counters[OPEN] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._counters[OPEN] -= 1
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._next()

    def _next(self) -> None:
        while not self._busy and self._transport is not None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self._buffer[:end]).split(b"\r\n")
            method, target, _version = lines[0].split(b" ", 2)
            length = 0
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    self._reply(501, b'{"error": "chunked bodies are not expected here"}', close=True)
                    return
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            if len(self._buffer) < end + 4 + length:
                return  # the body is still on its way
            del self._buffer[: end + 4 + length]
            path, _, query = target.decode().partition("?")
            args = parse_qs(query)
            status = int(args.get("status", ["200"])[0])
            delay = int(args.get("delay_ms", ["0"])[0]) / 1000
            body = ANSWER if status == 200 else b'{"error": "refused"}'
            if method != b"POST" or path != "/hook":
                status, body = 404, b'{"error": "POST /hook only"}'
            if delay > 0:
                self._busy = True
                asyncio.get_running_loop().call_later(delay, self._delayed, status, body, close)
                return
            self._reply(status, body, close)

    def _delayed(self, status: int, body: bytes, close: bool) -> None:
        self._busy = False
        self._reply(status, body, close)
        self._next()

    def _reply(self, status: int, body: bytes, close: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # the client gave up (timed out) before the answer
        reason = {200: "OK", 404: "Not Found", 501: "Not Implemented"}.get(status, "Status")
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        transport.write(head.encode() + (b"Connection: close\r\n\r\n" if close else b"\r\n") + body)
        self._counters[ANSWERED] += 1
        if close:
            transport.close()


def _serve_backend(port: int, counters: Counters, ready: Any) -> None:
    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _HookBackend(counters), "127.0.0.1", port, backlog=1024)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


class Backend:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.counters = ctx.Array("q", 3, lock=False)
        ready = ctx.Event()
        self.proc = ctx.Process(target=_serve_backend, args=(self.port, self.counters, ready), daemon=True)
        self.proc.start()
        if not ready.wait(30):
            self.proc.terminate()
            raise RuntimeError("the backend did not start listening within 30 s")

    @property
    def accepted(self) -> int:
        return int(self.counters[ACCEPTED])

    @property
    def answered(self) -> int:
        return int(self.counters[ANSWERED])

    def cpu(self) -> float:
        assert self.proc.pid is not None
        return proc_sample(self.proc.pid).cpu

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(5)


# --- the clients -----------------------------------------------------------------------------------


class HookHTTP(Protocol):
    """One pooled client: post() answers (status, body) or raises the library's own exception."""

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]: ...

    async def close(self) -> None: ...


class AiohttpHooks:
    def __init__(self, pool: int, timeout: float) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=pool, limit_per_host=0, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout), skip_auto_headers=("User-Agent",)
        )

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as response:
            return response.status, await response.read()

    async def close(self) -> None:
        await self._session.close()


class HttpxHooks:
    """`default_limits`: httpx's own Limits (max_connections=100, max_keepalive_connections=20), to see
    what they do under 50 calls at once (idle connections over 20 are closed as calls finish)."""

    def __init__(self, pool: int, timeout: float, default_limits: bool = False) -> None:
        import httpx

        limits = (
            httpx.Limits()
            if default_limits
            else httpx.Limits(max_connections=pool, max_keepalive_connections=pool, keepalive_expiry=30)
        )
        # httpx.Timeout(t) is t for each of connect, write, read (between two reads) and pool (waiting for
        # a connection): not one deadline for the whole call.
        self._client = httpx.AsyncClient(
            limits=limits, timeout=httpx.Timeout(timeout), trust_env=False, follow_redirects=False
        )

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        response = await self._client.post(url, content=body, headers=headers)
        return response.status_code, response.content

    async def close(self) -> None:
        await self._client.aclose()


class CurlHooks:
    def __init__(self, pool: int, timeout: float) -> None:
        from tornado.curl_httpclient import CurlAsyncHTTPClient
        from tornado.httpclient import HTTPRequest

        self._request = HTTPRequest
        self._timeout = timeout
        self._client = CurlAsyncHTTPClient(force_instance=True, max_clients=pool)

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        request = self._request(
            url,
            method="POST",
            body=body,
            headers=headers,
            connect_timeout=self._timeout,
            request_timeout=self._timeout,
            follow_redirects=False,
        )
        # raise_error=False: a non-2xx status comes back as a response (the default raises HTTPClientError
        # with .code); transport failures (code 599, CurlError) still raise.
        response = await self._client.fetch(request, raise_error=False)
        return response.code, response.body

    async def close(self) -> None:
        self._client.close()


MAKERS: dict[str, Callable[[int, float], HookHTTP]] = {
    "aiohttp": AiohttpHooks,
    "httpx": HttpxHooks,
    "curl": CurlHooks,
    "httpx-default-limits": lambda pool, timeout: HttpxHooks(pool, timeout, default_limits=True),
}


def body_bytes() -> bytes:
    """A publish-hook-like call of about 300 bytes."""
    call = {
        "hook": "publish",
        "userId": "user-000042",
        "roomId": "general",
        "claims": {"sub": "user-000042", "name": "Alice"},
        "message": {"dedupeKey": "0192f3b4-7c1e-7e2a-9d3c-5b6a7f8e9d0c", "content": "x" * 140},
    }
    raw = json.dumps(call, separators=(",", ":")).encode()
    return raw


def headers_for(i: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Request-Id": f"0192f3b4-7c1e-7e2a-9d3c-{i:012d}",
        "X-Gateway-Timestamp": "1764860000",
        "X-Gateway-Signature": "sha256=" + "5f" * 32,
    }


def describe(exc: BaseException) -> str:
    """The exception's class, and what tells a timeout apart where the class alone does not."""
    name = f"{type(exc).__module__.split('.')[0]}.{type(exc).__qualname__}"
    errno = getattr(exc, "errno", None)
    code = getattr(exc, "code", None)
    if type(exc).__name__ == "CurlError":
        name += f"(code={code}, errno={errno})"
    elif type(exc).__name__ == "HTTPClientError":
        name += f"(code={code})"
    if isinstance(exc, TimeoutError):
        name += " [is TimeoutError]"
    return name


# --- the runs ----------------------------------------------------------------------------------------


@dataclass
class Run:
    client: str
    conc: int
    round: int
    calls: int
    failed: int
    seconds: float
    cpu_us_per_call: float
    backend_cpu_us_per_call: float
    p50_ms: float
    p99_ms: float
    conns: int  # accepted by the backend during the timed calls
    warmup_conns: int

    @property
    def rate(self) -> float:
        return self.calls / self.seconds


async def drive(
    client: HookHTTP, url: str, body: bytes, first: int, n: int, conc: int
) -> tuple[list[int], int, list[BaseException]]:
    """n calls from `conc` worker tasks: (latencies in ns, failures, the first few exceptions)."""
    latencies: list[int] = []
    errors: list[BaseException] = []
    failed = 0
    taken = 0

    async def worker() -> None:
        nonlocal taken, failed
        while taken < n:
            i = first + taken
            taken += 1
            started = time.perf_counter_ns()
            try:
                status, answer = await client.post(url, body, headers_for(i))
                ok = status == 200 and answer == ANSWER
            except Exception as exc:  # counted and shown, the run goes on
                ok = False
                if len(errors) < 3:
                    errors.append(exc)
            latencies.append(time.perf_counter_ns() - started)
            if not ok:
                failed += 1

    await asyncio.gather(*(worker() for _ in range(conc)))
    return latencies, failed, errors


async def timed_run(kind: str, backend: Backend, n: int, conc: int, pool: int, rnd: int) -> Run:
    body = body_bytes()
    client = MAKERS[kind](pool, 3.0)
    try:
        before = backend.accepted
        await drive(client, backend.url, body, 0, WARMUP, conc)
        warmup_conns = backend.accepted - before
        gc.collect()
        accepted0, backend_cpu0 = backend.accepted, backend.cpu()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        latencies, failed, errors = await drive(client, backend.url, body, WARMUP, n, conc)
        seconds = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        backend_cpu = backend.cpu() - backend_cpu0
        conns = backend.accepted - accepted0
    finally:
        await client.close()
    if failed:
        log(f"{kind} c={conc}: {failed} of {n} calls failed, e.g. {[describe(e) for e in errors]}")
    latencies.sort()
    return Run(
        client=kind,
        conc=conc,
        round=rnd,
        calls=n,
        failed=failed,
        seconds=seconds,
        cpu_us_per_call=cpu / n * 1e6,
        backend_cpu_us_per_call=backend_cpu / n * 1e6,
        p50_ms=percentile(latencies, 50) / 1e6,
        p99_ms=percentile(latencies, 99) / 1e6,
        conns=conns,
        warmup_conns=warmup_conns,
    )


@dataclass
class Check:
    client: str
    check: str
    pool: int
    calls: int
    failed: int
    fastest_s: float
    median_s: float
    slowest_s: float
    outcomes: dict[str, int] = field(default_factory=dict)
    conns: int = 0  # accepted for the slow calls
    followup_ok: bool = False
    followup_ms: float = 0.0
    followup_outcome: str = ""
    followup_conns: int = 0


async def slow_check(kind: str, backend: Backend, check: str, pool: int, calls: int = 20) -> Check:
    """`calls` calls at once to a backend that answers after 2 s, client timeout 0.5 s; then one
    normal call on the same client."""
    client = MAKERS[kind](pool, 0.5)
    slow_url = backend.url + "?delay_ms=2000"
    body = body_bytes()
    outcomes: Counter[str] = Counter()
    took: list[float] = []

    async def one(i: int) -> None:
        started = time.perf_counter()
        try:
            status, _ = await client.post(slow_url, body, headers_for(i))
            outcomes[f"answered {status}"] += 1
        except Exception as exc:  # the outcome is the measurement
            outcomes[describe(exc)] += 1
        took.append(time.perf_counter() - started)

    try:
        before = backend.accepted
        await asyncio.gather(*(one(i) for i in range(calls)))
        conns = backend.accepted - before
        before = backend.accepted
        started = time.perf_counter()
        try:
            status, answer = await client.post(backend.url, body, headers_for(calls))
            followup_ok = status == 200 and answer == ANSWER
            followup_outcome = f"answered {status}"
        except Exception as exc:
            followup_ok, followup_outcome = False, describe(exc)
        followup_ms = (time.perf_counter() - started) * 1e3
        followup_conns = backend.accepted - before
    finally:
        await client.close()
    took.sort()
    return Check(
        client=kind,
        check=check,
        pool=pool,
        calls=calls,
        failed=calls - sum(v for k, v in outcomes.items() if k.startswith("answered 200")),
        fastest_s=took[0],
        median_s=statistics.median(took),
        slowest_s=took[-1],
        outcomes=dict(outcomes),
        conns=conns,
        followup_ok=followup_ok,
        followup_ms=followup_ms,
        followup_outcome=followup_outcome,
        followup_conns=followup_conns,
    )


async def error_shapes(kind: str, backend: Backend) -> dict[str, str]:
    """What the caller sees for a refused connection, a timeout and a 500."""
    closed_port = free_port()  # nothing listens there
    cases = {
        "refused": f"http://127.0.0.1:{closed_port}/hook",
        "timeout 0.5 s": backend.url + "?delay_ms=1500",
        "status 500": backend.url + "?status=500",
    }
    client = MAKERS[kind](10, 0.5)
    shapes: dict[str, str] = {}
    try:
        for case, url in cases.items():
            started = time.perf_counter()
            try:
                status, _ = await client.post(url, body_bytes(), headers_for(0))
                shape = f"returns status {status}, no exception"
            except Exception as exc:
                shape = f"raises {describe(exc)}: {str(exc)[:90]!r}"
            shapes[case] = f"{shape} ({(time.perf_counter() - started) * 1e3:.0f} ms)"
    finally:
        await client.close()
    return shapes


# --- output ------------------------------------------------------------------------------------------


def run_table(runs: Sequence[Run], with_round: bool) -> list[str]:
    head = "| client | conc | " + ("round | " if with_round else "")
    head += "calls/s | µs CPU/call | p50 ms | p99 ms | conns (timed) | conns (warm-up) | backend µs/call | failed |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        cells = [r.client, str(r.conc)] + ([str(r.round)] if with_round else [])
        cells += [
            f"{r.rate:,.0f}",
            f"{r.cpu_us_per_call:.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.conns}",
            f"{r.warmup_conns}",
            f"{r.backend_cpu_us_per_call:.0f}",
            f"{r.failed}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def medians(runs: Sequence[Run]) -> list[Run]:
    groups: dict[tuple[str, int], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.client, r.conc), []).append(r)
    out = []
    for (kind, conc), rs in groups.items():
        n = rs[0].calls
        out.append(
            Run(
                client=kind,
                conc=conc,
                round=0,
                calls=n,
                failed=sum(r.failed for r in rs),
                seconds=n / statistics.median(r.rate for r in rs),
                cpu_us_per_call=statistics.median(r.cpu_us_per_call for r in rs),
                backend_cpu_us_per_call=statistics.median(r.backend_cpu_us_per_call for r in rs),
                p50_ms=statistics.median(r.p50_ms for r in rs),
                p99_ms=statistics.median(r.p99_ms for r in rs),
                conns=int(statistics.median(r.conns for r in rs)),
                warmup_conns=int(statistics.median(r.warmup_conns for r in rs)),
            )
        )
    return out


def check_table(checks: Sequence[Check]) -> list[str]:
    rows = [
        "| client | check | pool | failed | fastest s | median s | slowest s | outcomes | conns | "
        "then a normal call | its conns |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        outcomes = "<br>".join(f"{n} x {k}" for k, n in sorted(c.outcomes.items(), key=lambda kv: -kv[1]))
        follow = f"{'ok' if c.followup_ok else 'FAILED'} in {c.followup_ms:.1f} ms ({c.followup_outcome})"
        rows.append(
            f"| {c.client} | {c.check} | {c.pool} | {c.failed}/{c.calls} | {c.fastest_s:.3f} | {c.median_s:.3f} | "
            f"{c.slowest_s:.3f} | {outcomes} | {c.conns} | {follow} | {c.followup_conns} |"
        )
    return rows


def versions() -> dict[str, str]:
    import pycurl

    names = ["tornado", "aiohttp", "httpx", "httpcore", "anyio", "h11", "pycurl", "yarl", "multidict"]
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "-"
    found["libcurl (pycurl.version)"] = pycurl.version
    return found


async def measure(args: argparse.Namespace, backend: Backend) -> dict[str, Any]:
    import tornado.ioloop

    # The gateway's loop: asyncio's, with Tornado's IOLoop wrapped around it (CurlAsyncHTTPClient needs it).
    tornado.ioloop.IOLoop.current()
    kinds = args.clients.split(",")
    concs = [int(c) for c in args.conc.split(",")]
    runs: list[Run] = []
    for rnd in range(1, args.repeat + 1):
        shift = (rnd - 1) % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            for conc in concs:
                run = await timed_run(kind, backend, args.calls, conc, args.pool, rnd)
                log(
                    f"round {rnd} {kind:8s} c={conc:<3d} {run.rate:8,.0f} calls/s "
                    f"{run.cpu_us_per_call:5.0f} µs CPU/call p50 {run.p50_ms:.2f} ms p99 {run.p99_ms:.2f} ms "
                    f"conns {run.conns} (+{run.warmup_conns} warm-up)"
                )
                runs.append(run)
    checks: list[Check] = []
    shapes: dict[str, dict[str, str]] = {}
    if not args.no_checks:
        for kind in kinds:
            for check, pool in (("timeout", args.pool), ("pool-full", 4)):
                log(f"{check} check: {kind}")
                checks.append(await slow_check(kind, backend, check, pool))
            shapes[kind] = await error_shapes(kind, backend)
    return {"runs": runs, "checks": checks, "shapes": shapes}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hook_clients")
    parser.add_argument("--calls", type=int, default=5000, help="timed calls per run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, clients in a rotated order in each")
    parser.add_argument("--conc", default="1,50", help="concurrencies (worker tasks), comma-separated")
    parser.add_argument("--clients", default="aiohttp,httpx,curl", help=f"of {','.join(MAKERS)}")
    parser.add_argument("--pool", type=int, default=200, help="pool limit (HOOK_CONCURRENCY's default)")
    parser.add_argument("--no-checks", action="store_true", help="skip the timeout, pool-full and error checks")
    parser.add_argument("--json", help="also write the results there")
    args = parser.parse_args()
    for kind in args.clients.split(","):
        if kind not in MAKERS:
            raise SystemExit(f"unknown client {kind!r}; known: {', '.join(MAKERS)}")

    python = sys.executable
    if Path(python).is_relative_to(ROOT):
        python = str(Path(python).relative_to(ROOT))
    command = " ".join([python, "-m", "bench.hook_clients", *sys.argv[1:]])
    waited, load = wait_machine_idle(max_cores=0.5, window=2.0, timeout=20.0)
    log(f"machine busy {load:.2f} cores before start (waited {waited:.0f} s)")
    backend = Backend()
    try:
        result = asyncio.run(measure(args, backend))
        answered = backend.answered
    finally:
        backend.stop()

    runs: list[Run] = result["runs"]
    found = versions()
    info = machine()
    out = [
        f"    $ {command}",
        "",
        f"{args.calls:,} timed POSTs per run ({len(body_bytes())}-byte JSON body, 4 headers, {len(ANSWER)}-byte "
        f"answer) after {WARMUP} warm-up calls, one fresh client per run, pool limit {args.pool}, timeout 3 s; "
        f"{args.repeat} rounds; backend answered {answered:,} calls in all.",
        f"Machine: {info['nproc']} cores ({info['cpu_model']}), Python {info['python']}, kernel {info['kernel']}, "
        f"busy {load:.2f} cores before start.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in found.items()),
        "",
        "Each run:",
        "",
        *run_table(runs, with_round=True),
        "",
        f"Medians over {args.repeat} rounds:",
        "",
        *run_table(medians(runs), with_round=False),
    ]
    if result["checks"]:
        out += [
            "",
            "Slow backend (answers after 2 s), client timeout 0.5 s, 20 calls at once; then one normal call:",
            "",
            *check_table(result["checks"]),
            "",
            "What the caller sees:",
            "",
            "| client | case | outcome |",
            "|---|---|---|",
        ]
        for kind, cases in result["shapes"].items():
            out += [f"| {kind} | {case} | {shape} |" for case, shape in cases.items()]
    print("\n".join(out))
    if args.json:
        doc = {
            "command": command,
            "options": vars(args),
            "machine": info,
            "versions": found,
            "runs": [asdict(r) for r in runs],
            "checks": [asdict(c) for c in result["checks"]],
            "shapes": result["shapes"],
        }
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=1)


if __name__ == "__main__":
    main()
