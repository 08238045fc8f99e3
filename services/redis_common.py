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


class StateLog:
    """Logs a warning when something starts failing and an info line when it recovers: one line per
    change of state, however many calls fail in between."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._log = logger
        self._what = what
        self.failing = False
        self.failures = 0
        self._since = 0.0

    def failed(self, exc: BaseException, **extra: Any) -> None:
        self.failures += 1
        if not self.failing:
            self.failing = True
            self._since = time.monotonic()
            self._log.warning(f"{self._what} failing", extra={"error": describe(exc), **extra})

    def ok(self, **extra: Any) -> None:
        if self.failing:
            self.failing = False
            self._log.info(
                f"{self._what} recovered",
                extra={
                    "failures": self.failures,
                    "seconds": round(time.monotonic() - self._since, 1),
                    **extra,
                },
            )
            self.failures = 0


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
    """At start: return once Redis answers. Without WAIT_FOR_REDIS give up after
    REDIS_CONNECT_TIMEOUT with ConnectionError (exit 2); with it, wait forever, logging once."""
    deadline = time.monotonic() + settings.redis_connect_timeout
    backoff = Backoff(0.1, 2.0)
    waiting_logged = False
    while True:
        left = deadline - time.monotonic()
        attempt = COMMAND_TIMEOUT if settings.wait_for_redis else max(0.05, min(left, COMMAND_TIMEOUT))
        try:
            await ping(settings, attempt)
            if waiting_logged:
                logger.info("redis reachable", extra={"host": settings.redis_host, "port": settings.redis_port})
            return
        except REDIS_ERRORS as exc:
            reason = describe(exc)
        if not settings.wait_for_redis:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectionError(unreachable(settings, reason))
            await asyncio.sleep(min(backoff.next(), left))
            continue
        if not waiting_logged:
            waiting_logged = True
            logger.warning(
                "waiting for redis",
                extra={"host": settings.redis_host, "port": settings.redis_port, "error": reason},
            )
        await asyncio.sleep(backoff.next())
