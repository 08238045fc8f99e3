"""Realtime Gateway entry point: options/env -> Settings, build the Application, run the IOLoop.

    python server.py --port 3000

Bad configuration is one line on stderr and exit code 2.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from handlers.api import api_routes, body_limits
from handlers.common import NotFoundHandler, log_request
from handlers.connection_book import ConnectionBook
from handlers.dev import DevTokenHandler
from handlers.health import HealthHandler, ReadyHandler
from handlers.http_server import GatewayHTTPServer
from handlers.metrics import MetricsHandler
from handlers.socket import GatewaySocket
from handlers.sse import SseSend, SseStream
from schemas.protocol import SEND_PATH, STREAM_PATH
from services.admission import AddressCounts, descriptor_budget
from services.auth import check_secret, generate_secret, mint
from services.errors import ConfigError, StartupError
from services.gateway import Gateway
from services.ids import short_id
from services.logs import setup_logging
from services.redis_startup import wait_for_redis
from services.settings import Settings, load_settings

log = logging.getLogger("gateway.server")

DEV_TOKEN_TTL = 24 * 3600
MAX_WORKER_RESTARTS = 100


def make_app(gateway: Gateway) -> tornado.web.Application:
    """The public port: WebSockets, probes, the demo page; /metrics and /api/* too unless INTERNAL_PORT is set."""
    s = gateway.settings
    ctx = {"gateway": gateway}
    sockets = {"connections": gateway.connections}
    streams = {"connections": gateway.connections, "streams": gateway.streams}
    routes: list[Any] = [
        (r"/", GatewaySocket, sockets),
        (r"/ws", GatewaySocket, sockets),
        (STREAM_PATH, SseStream, streams),
        (SEND_PATH, SseSend, streams),
        *_probe_routes(gateway),
    ]
    if s.internal_port is None:
        routes += [(r"/metrics", MetricsHandler), *api_routes(gateway)]
    if s.dev_tokens:
        routes.append((r"/dev/token", DevTokenHandler, ctx))
    if s.demo:
        from handlers.demo import demo_routes

        routes.extend(demo_routes())
    return tornado.web.Application(
        routes,
        websocket_max_message_size=s.max_message_bytes,
        **_APP_OPTIONS,
    )


def make_internal_app(gateway: Gateway) -> tornado.web.Application:
    """INTERNAL_PORT: what only the cluster should reach (README.md, "Connection limits and the edges
    of the network")."""
    routes = [*_probe_routes(gateway), (r"/metrics", MetricsHandler), *api_routes(gateway)]
    return tornado.web.Application(routes, **_APP_OPTIONS)


def _probe_routes(gateway: Gateway) -> list[Any]:
    return [(r"/healthz", HealthHandler), (r"/readyz", ReadyHandler, {"gateway": gateway})]


_APP_OPTIONS: dict[str, Any] = {
    "log_function": log_request,
    "serve_traceback": False,
    "compress_response": False,
    "default_handler_class": NotFoundHandler,
}


def start_listening(
    gateway: Gateway, sockets: list[socket.socket], internal_sockets: list[socket.socket] | None = None
) -> list[HTTPServer]:
    """HTTP servers on the bound sockets, sharing one descriptor budget (handlers/http_server.py)."""
    s = gateway.settings
    book = ConnectionBook(descriptor_budget(), AddressCounts(s.max_connections_per_ip))
    if book.budget < s.max_connections:
        log.warning(
            "RLIMIT_NOFILE allows fewer connections than MAX_CONNECTIONS; raise the limit (ulimit -n)",
            extra={"budget": book.budget, "max_connections": s.max_connections},
        )
    options: dict[str, Any] = {
        "book": book,
        "trusted": gateway.trusted,
        "idle_connection_timeout": s.handshake_timeout,
        "body_timeout": s.handshake_timeout,
        "max_body_size": s.request_body_bytes,  # each request's own limit is set from its headers
        "body_limit": body_limits(s),
        "kept_alive_timeout": s.http_idle_timeout,
    }
    public = GatewayHTTPServer(make_app(gateway), lag=gateway.loop_lag, **options)
    public.add_sockets(sockets)
    servers: list[HTTPServer] = [public]
    if internal_sockets:
        internal = GatewayHTTPServer(make_internal_app(gateway), capped=False, **options)
        internal.add_sockets(internal_sockets)
        servers.append(internal)
    return servers


def prepare_settings(argv: Sequence[str] | None = None) -> Settings:
    settings = load_settings(argv)
    if settings.jwt_secret is None and not settings.jwt_public_key:
        if settings.require_secret and not settings.dev:
            # A production image must not quietly hand out its own tokens (README.md, "Container image").
            raise ConfigError(
                "JWT_SECRET is not set and REQUIRE_SECRET is on: set JWT_SECRET (or JWT_PUBLIC_KEY),"
                " or DEV=true for a throwaway secret generated for this run"
            )
        settings = settings.replace(jwt_secret=generate_secret(), generated_secret=True)
    check_secret(settings)
    return settings


def announce_dev_token(settings: Settings, port: int) -> None:
    assert settings.jwt_secret is not None
    token = mint(settings.jwt_secret, "dev", ttl=DEV_TOKEN_TTL)
    log.warning(
        "JWT_SECRET is not set: a random secret was generated for this run (dev mode only)",
        extra={"host": settings.listen_host},
    )
    print(
        f"\nDev token (sub=dev, valid 24 h):\n  {token}\nConnect: ws://127.0.0.1:{port}/?token={token}\n"
        f"Demo:    http://127.0.0.1:{port}/demo\nMore tokens: http://127.0.0.1:{port}/dev/token?sub=NAME\n",
        flush=True,
    )


async def serve(
    settings: Settings,
    sockets: list[socket.socket],
    internal_sockets: list[socket.socket] | None = None,
    worker: int | None = None,
) -> int:
    gateway = Gateway(settings)
    await gateway.start()  # Ctrl-C while this waits for Redis: KeyboardInterrupt, exit 130 (main)
    stop = asyncio.Event()
    signals: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        signals.append(sig)
        if len(signals) > 1:
            log.warning("second signal: exiting now")
            logging.shutdown()
            os._exit(0)  # not sys.exit: Kafka's poll threads would keep the interpreter waiting
        stop.set()

    loop = asyncio.get_running_loop()
    # Installed before `listening` is logged: whoever waits for that line may signal at once.
    # A worker hears SIGINT through the supervisor (as SIGTERM), not from the terminal as well.
    for sig in (signal.SIGTERM,) if worker is not None else (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    servers = start_listening(gateway, sockets, internal_sockets)
    port = sockets[0].getsockname()[1]
    extra: dict[str, Any] = {
        "host": settings.listen_host,
        "port": port,
        "redis": settings.redis_enabled,
        "kafka": settings.kafka_enabled,
        "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
    }
    if internal_sockets:
        extra["internal_port"] = internal_sockets[0].getsockname()[1]
    log.info("listening", extra=extra)
    if settings.generated_secret and worker in (None, 0):
        announce_dev_token(settings, port)

    await stop.wait()
    # Keep listening while draining: probes must see 503 and late upgrades get a clear 503.
    # Ctrl-C is someone at a terminal who wants the process gone: close every socket now (1012,
    # so clients come back when it does) instead of DRAIN_DELAY + DRAIN_WINDOW, which exist to
    # hand clients over to other instances without a herd. SIGTERM (an orchestrator) drains.
    await gateway.drain(at_once=signals[0] == signal.SIGINT)
    for server in servers:
        server.stop()
    await gateway.stop()
    log.info("stopped")
    return 0


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM (and drains) if the supervisor is killed without a chance to
    forward anything, instead of serving on as an orphan."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_workers(count: int) -> int:
    """Fork `count` workers that share the listening sockets (SO_REUSEPORT); returns the worker's
    index in each child. The parent stays a supervisor and never returns: it forwards SIGTERM and
    SIGINT to the workers (each then drains), restarts a worker that crashed, and exits once all
    have stopped, with 2 if one could not start."""
    children: dict[int, int] = {}
    stopping = False
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    parent = os.getpid()

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def fork(index: int) -> bool:
        """True in the new child. Signals stay blocked around the fork so none is lost."""
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _die_with_parent()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
            if os.getppid() != parent:  # the supervisor died before prctl took effect
                os._exit(0)
            return True
        children[pid] = index
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
        return False

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(count):
        if stopping:  # a signal during start-up: the workers already forked were told, fork no more
            break
        if fork(index):
            return index
    restarts = 0
    exit_code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        ended = children.pop(pid, None)
        if ended is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if code == 2:
            exit_code = 2  # a start-up error: restarting would only repeat it
            log.error("worker could not start", extra={"worker": ended})
        elif code != 0 and not stopping and restarts < MAX_WORKER_RESTARTS:
            restarts += 1
            log.warning("worker died, restarting", extra={"worker": ended, "code": code})
            if fork(ended):
                return ended
        elif code != 0 and not stopping:
            exit_code = 1
    raise SystemExit(exit_code)


def _bind(settings: Settings, port: int) -> list[socket.socket]:
    try:
        # Tornado's default backlog (128) drops the SYNs of a reconnect storm; each dropped client then
        # waits for its kernel's retransmission (1 s, 3 s, 7 s, ...): BENCHMARKS.md, "Reconnect storm".
        return bind_sockets(
            port, settings.listen_host, reuse_port=settings.workers > 1, backlog=settings.listen_backlog
        )
    except OSError as exc:
        raise ConfigError(f"cannot listen on {settings.listen_host}:{port}: {exc.strerror}") from None


def use_uvloop() -> None:
    """UVLOOP: the asyncio loops made from now on are uvloop's (Tornado runs on any asyncio loop)."""
    try:
        import uvloop
    except ImportError:
        raise ConfigError("UVLOOP is set but uvloop is not installed: pip install 'realtime-gateway[uvloop]'") from None
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def tune_gc(threshold: int) -> None:
    """Python collects its youngest objects every 700 allocations by default, and older generations
    after so many of those passes; with ten thousand connections each older pass walks millions of
    objects. Filling a room of 10,000 spent 40% of its CPU there (BENCHMARKS.md, "Filling one room").
    GC_THRESHOLD spaces the passes out; what start-up made is frozen out of them for good."""
    gc.freeze()
    gc.set_threshold(threshold, 10, 10)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = prepare_settings(argv)
        sockets = _bind(settings, settings.port)
        internal = _bind(settings, settings.internal_port) if settings.internal_port is not None else None
        if settings.uvloop:
            use_uvloop()
    except ConfigError as exc:
        print(f"server.py: error: {exc}", file=sys.stderr)
        return 2
    worker: int | None = None
    try:
        if settings.workers > 1:
            # Checked once before forking, so an absent Redis is one line and exit 2, not N
            # workers failing (and being restarted) in parallel.
            setup_logging(settings.log_level, settings.instance_id or "supervisor")
            try:
                asyncio.run(wait_for_redis(settings, log))
            except ConnectionError as exc:
                print(f"server.py: error: {exc}", file=sys.stderr)
                return 2
            worker = run_workers(settings.workers)
        # After the fork, so every worker is an instance of its own.
        instance = settings.instance_id or short_id()
        if settings.instance_id and worker is not None:
            instance = f"{instance}-{worker}"
        settings = settings.replace(instance_id=instance)
        setup_logging(settings.log_level, instance)
        tune_gc(settings.gc_threshold)
        try:
            return asyncio.run(serve(settings, sockets, internal, worker))
        except StartupError as exc:
            print(f"server.py: error: {exc}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:  # Ctrl-C while still waiting for Redis
        return 130


if __name__ == "__main__":
    sys.exit(main())
