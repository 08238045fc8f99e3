"""What the Redis bus, presence and dedupe stores share: one command client, error types, and
logging that speaks once per state change instead of once per failed call.

Every command has a socket timeout and is retried at most once (for a pooled connection that went
stale across a Redis restart), so a dead or unreachable Redis costs a caller a bounded wait, never
a hang and never the library's default multi-second backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from services.settings import Settings

# A Redis call that fails with one of these is "Redis unavailable", not a bug.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)

# Seconds for one command or one connect while running. Independent of REDIS_CONNECT_TIMEOUT,
# which bounds the whole start-up wait (each attempt there is cut to what is left of it).
COMMAND_TIMEOUT = 2.0
MAX_CONNECTIONS = 128  # command pool bound; beyond it a call fails fast instead of piling up


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    """Where Redis is and how to log in; shared by the command pool and the subscriber."""
    return {
        "host": settings.redis_host,
        "port": settings.redis_port,
        "db": settings.redis_db,
        "password": settings.redis_password,
    }


def make_client(settings: Settings, instance_id: str) -> aioredis.Redis:
    """The command pool for publishes, presence and dedupe (the subscriber has its own socket)."""
    timeout = COMMAND_TIMEOUT
    return aioredis.Redis(
        **connection_kwargs(settings),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        max_connections=MAX_CONNECTIONS,
        client_name=f"rtg:{instance_id}",
    )


def describe(exc: BaseException) -> str:
    """A one-line reason for logs and errors (no traceback: these failures are expected)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text and text[0] else type(exc).__name__


class Backoff:
    """Capped exponential delays with jitter, so a fleet does not reconnect in lockstep."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * 2.0**self.attempt)
        self.attempt = min(self.attempt + 1, 30)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0


def unreachable(settings: Settings, reason: str) -> str:
    """The one line printed before exit 2 when Redis is not there at start."""
    return (
        f"cannot reach Redis at {settings.redis_host}:{settings.redis_port} within "
        f"{settings.redis_connect_timeout:g}s ({reason}); start it or pass --wait-for-redis"
    )


async def ping(settings: Settings, timeout: float) -> None:
    """One connect + PING with its own short-lived client; raises a REDIS_ERRORS member on failure."""
    client = aioredis.Redis(
        **connection_kwargs(settings),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        await asyncio.wait_for(client.ping(), timeout)
    finally:
        await client.aclose()


async def wait_for_redis(settings: Settings, logger: logging.Logger) -> None:
    """At start: return once Redis answers a PING (server.py, before forking workers)."""
    await until_redis_answers(
        settings, logger, lambda budget: ping(settings, min(budget or COMMAND_TIMEOUT, COMMAND_TIMEOUT))
    )


async def until_redis_answers(
    settings: Settings,
    logger: logging.Logger,
    attempt: Callable[[float | None], Awaitable[None]],
    errors: tuple[type[BaseException], ...] = REDIS_ERRORS,
) -> None:
    """Retry `attempt(budget)` with backoff until it succeeds. Without WAIT_FOR_REDIS the budget is
    what is left of REDIS_CONNECT_TIMEOUT, and ConnectionError (one line: exit 2) ends it; with it,
    the budget is None and we wait forever, logging once that we do. `errors` are expected."""
    deadline = time.monotonic() + settings.redis_connect_timeout
    backoff = Backoff(0.1, 2.0)
    where = {"host": settings.redis_host, "port": settings.redis_port}
    waiting = False
    while True:
        left = deadline - time.monotonic()
        try:
            await attempt(None if settings.wait_for_redis else max(left, 0.05))
            if waiting:
                logger.info("redis reachable", extra=where)
            return
        except errors as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else describe(exc)
        if not settings.wait_for_redis:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectionError(unreachable(settings, reason))
            await asyncio.sleep(min(backoff.next(), left))
            continue
        if not waiting:
            waiting = True
            logger.warning("waiting for redis", extra={**where, "error": reason})
        await asyncio.sleep(backoff.next())
