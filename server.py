"""Realtime Gateway entry point: options/env -> Settings, build the Application, run the IOLoop.

    python server.py --port 3000

Bad configuration is one line on stderr and exit code 2.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.process import fork_processes, task_id

from handlers.common import log_request
from handlers.dev import DevTokenHandler
from handlers.health import HealthHandler, ReadyHandler
from handlers.metrics import MetricsHandler
from handlers.socket import GatewaySocket
from services.auth import check_secret, generate_secret, mint
from services.gateway import Gateway, StartupError
from services.ids import short_id
from services.logs import setup_logging
from services.settings import ConfigError, Settings, load_settings

log = logging.getLogger("gateway.server")

DEV_TOKEN_TTL = 24 * 3600


def make_app(gateway: Gateway) -> tornado.web.Application:
    s = gateway.settings
    ctx = {"gateway": gateway}
    routes: list[Any] = [
        (r"/", GatewaySocket, ctx),
        (r"/ws", GatewaySocket, ctx),
        (r"/healthz", HealthHandler),
        (r"/readyz", ReadyHandler, ctx),
        (r"/metrics", MetricsHandler),
    ]
    if s.dev_tokens:
        routes.append((r"/dev/token", DevTokenHandler, ctx))
    if s.demo:
        from handlers.demo import demo_routes

        routes.extend(demo_routes())
    return tornado.web.Application(
        routes,
        websocket_ping_interval=s.ping_interval or None,
        websocket_ping_timeout=s.ping_timeout,
        websocket_max_message_size=s.max_message_bytes,
        log_function=log_request,
        serve_traceback=False,
        compress_response=False,
    )


def prepare_settings(argv: Sequence[str] | None = None) -> Settings:
    settings = load_settings(argv)
    if settings.jwt_secret is None and not settings.jwt_public_key:
        settings = settings.replace(jwt_secret=generate_secret(), generated_secret=True)
    check_secret(settings)
    return settings


def announce_dev_token(settings: Settings, port: int) -> None:
    assert settings.jwt_secret is not None
    token = mint(settings.jwt_secret, "dev", ttl=DEV_TOKEN_TTL)
    log.warning("JWT_DEV is not set: a random secret was generated for this run (dev mode only)")
    print(
        f"\nDev token (sub=dev, valid 24 h):\n  {token}\nConnect: ws://127.0.0.1:{port}/?token={token}\n"
        f"Demo:    http://127.0.0.1:{port}/demo\nMore tokens: http://127.0.0.1:{port}/dev/token?sub=NAME\n",
        flush=True,
    )


async def serve(settings: Settings, sockets: list[socket.socket]) -> int:
    gateway = Gateway(settings)
    await gateway.start()
    app = make_app(gateway)
    server = HTTPServer(
        app,
        xheaders=True,
        idle_connection_timeout=settings.handshake_timeout,
        body_timeout=settings.handshake_timeout,
    )
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    log.info("listening", extra={"port": port, "redis": settings.redis_enabled, "kafka": settings.kafka_enabled})
    if settings.generated_secret and task_id() in (None, 0):
        announce_dev_token(settings, port)

    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second signal: exiting now")
            sys.exit(0)
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()
    # Keep listening while draining: probes must see 503 and late upgrades get a clear 503.
    await gateway.drain()
    server.stop()
    await gateway.stop()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = prepare_settings(argv)
        sockets = bind_sockets(settings.port, settings.host, reuse_port=settings.workers > 1)
    except ConfigError as exc:
        print(f"server.py: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"server.py: error: cannot listen on {settings.host}:{settings.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 2
    if settings.workers > 1:
        fork_processes(settings.workers, max_restarts=100)
    # After the fork, so every worker is an instance of its own.
    instance = settings.instance_id or short_id()
    if settings.instance_id and task_id() is not None:
        instance = f"{instance}-{task_id()}"
    settings = settings.replace(instance_id=instance)
    setup_logging(settings.log_level, instance)
    try:
        return asyncio.run(serve(settings, sockets))
    except StartupError as exc:
        print(f"server.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
