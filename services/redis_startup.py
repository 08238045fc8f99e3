"""Redis at start-up: wait until it answers (REDIS_CONNECT_TIMEOUT, or for ever with
WAIT_FOR_REDIS), then one line and exit 2 when it never did."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from services.backoff import Backoff
from services.redis_common import COMMAND_TIMEOUT, REDIS_ERRORS, describe, make_cluster_client, single_kwargs
from services.settings import Settings


def where(settings: Settings) -> str:
    """The Redis named in log lines and errors: host:port, or the cluster's seeds."""
    if settings.redis_cluster_nodes:
        return "cluster " + ",".join(f"{h}:{p}" for h, p in settings.redis_cluster_nodes)
    return f"{settings.redis_host}:{settings.redis_port}"


def unreachable(settings: Settings, reason: str) -> str:
    """The one line printed before exit 2 when Redis is not there at start."""
    return (
        f"cannot reach Redis at {where(settings)} within "
        f"{settings.redis_connect_timeout:g}s ({reason}); start it or pass --wait-for-redis"
    )


async def ping(settings: Settings, timeout: float) -> None:
    """One connect + PING (every primary of a cluster) with its own short-lived client; raises a
    REDIS_ERRORS member on failure."""
    if settings.redis_cluster_nodes:
        cluster = make_cluster_client(settings, timeout)
        try:
            await asyncio.wait_for(cluster.ping(target_nodes=RedisCluster.PRIMARIES), timeout)
        finally:
            await cluster.aclose()
        return
    client = aioredis.Redis(**single_kwargs(settings, timeout, retries=0))
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
    redis_at = {"redis": where(settings)}
    waiting = False
    while True:
        left = deadline - time.monotonic()
        try:
            await attempt(None if settings.wait_for_redis else max(left, 0.05))
            if waiting:
                logger.info("redis reachable", extra=redis_at)
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
            logger.warning("waiting for redis", extra={**redis_at, "error": reason})
        await asyncio.sleep(backoff.next())
