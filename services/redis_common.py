"""What the Redis bus, presence, dedupe and history stores share: the command client (one Redis,
or a Redis Cluster), how to log in (ACL, TLS), error types (the start-up wait: redis_startup.py).

Every command goes through the process's `Breaker` (services/breaker.py): it is cut after
COMMAND_TIMEOUT whatever the library's own retries would do, and after a failure the next
commands fail at once until a probe gets through, so a hung or unreachable Redis costs one
caller a bounded wait and everyone else nothing (docs/scaling.md, "Redis trouble").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from services.breaker import Breaker, CircuitOpen
from services.errors import StoreError
from services.logs import StateLog
from services.settings import Settings

# A Redis call that fails with one of these is "Redis unavailable", not a bug.
# (A cluster client raises RedisClusterException, which is not a RedisError, when it has no map of
# the slots, for example while a primary fails over.)
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    asyncio.TimeoutError,
    CircuitOpen,
)


class GuardedRedis(aioredis.Redis):
    """One Redis whose every command goes through the breaker (pipelines: `guarded`)."""

    breaker: Breaker

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        command = super().execute_command  # typed loosely by redis-py
        return await self.breaker.call(lambda: command(*args, **options))  # type: ignore[no-untyped-call]

    async def ping_past_breaker(self) -> object:
        return await super().execute_command("PING")  # type: ignore[no-untyped-call]

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        self.breaker.stop()
        await super().aclose(close_connection_pool)


class GuardedCluster(RedisCluster):
    """A Redis Cluster client whose every command goes through the breaker."""

    breaker: Breaker
    seeds: tuple[tuple[str, int], ...] = ()  # REDIS_CLUSTER_NODES

    async def initialize(self) -> GuardedCluster:
        self.restore_seeds()
        await super().initialize()
        return self

    async def refresh_slots(self) -> None:
        """A fresh slot map (the bus's subscribers, after a failover or a resharding)."""
        self.restore_seeds()
        await self.nodes_manager.initialize()

    def restore_seeds(self) -> None:
        """redis-py drops a node from the nodes it refreshes the slot map from at each connection
        error on it, and refills them only from a refresh that succeeded, with the nodes that
        CLUSTER SLOTS listed (the primaries alone while the replicas have replicated nothing). A
        dead primary's error closes every node's connections, so the commands then under way on
        the other primaries fail too and drop theirs: with none left no refresh can ever succeed
        ("Redis Cluster cannot be connected"). The seeds are put back before every refresh."""
        nodes = self.nodes_manager.startup_nodes
        for host, port in self.seeds:
            name = f"{host}:{port}"
            if name not in nodes:
                nodes[name] = ClusterNode(host, port, **self.nodes_manager.connection_kwargs)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        command = super().execute_command
        return await self.breaker.call(lambda: command(*args, **kwargs))

    async def ping_past_breaker(self) -> object:
        """Every primary answers (a slot without one refuses its commands anyway)."""
        return await super().execute_command("PING", target_nodes=RedisCluster.PRIMARIES)

    async def aclose(self) -> None:
        self.breaker.stop()
        await super().aclose()


# The command client of either mode. The stores use what both have: scripts, plain commands,
# pipelines without transactions, `execute_command` for PUBLISH / SPUBLISH.
RedisClient = GuardedRedis | GuardedCluster

T = TypeVar("T")

# Seconds for one command or one connect while running. Independent of REDIS_CONNECT_TIMEOUT,
# which bounds the whole start-up wait (each attempt there is cut to what is left of it).
COMMAND_TIMEOUT = 2.0
MAX_CONNECTIONS = 128  # command pool bound; beyond it a call fails fast instead of piling up


def uses_tls(settings: Settings) -> bool:
    """REDIS_TLS, or a CA given for it (a CA is only ever given to verify a TLS server)."""
    return settings.redis_tls or settings.redis_tls_ca is not None


def login_kwargs(settings: Settings) -> dict[str, Any]:
    """How to log in and talk to any Redis node: ACL user and password, TLS with its CA. Shared by
    the command clients (one Redis or a cluster) and the subscriber sockets."""
    kwargs: dict[str, Any] = {"username": settings.redis_username, "password": settings.redis_password}
    if uses_tls(settings):
        kwargs["ssl_ca_certs"] = settings.redis_tls_ca
        kwargs["ssl_cert_reqs"] = "required"
    return kwargs


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    """Where the one Redis is (REDIS_HOST mode) and how to log in."""
    return {"host": settings.redis_host, "port": settings.redis_port, "db": settings.redis_db, **login_kwargs(settings)}


def connection_class(settings: Settings) -> type[Connection]:
    """One socket to one node (the subscriber's): TLS or plain."""
    return SSLConnection if uses_tls(settings) else Connection


def make_client(settings: Settings, instance_id: str) -> RedisClient:
    """The command pool for publishes, presence, dedupe and history (subscribers have their own
    sockets): a cluster client with REDIS_CLUSTER_NODES, else one Redis; behind one breaker."""
    timeout = COMMAND_TIMEOUT
    if settings.redis_cluster_nodes:
        return make_cluster_client(settings, timeout, client_name=f"rtg:{instance_id}")
    client = GuardedRedis(
        **single_kwargs(settings, timeout, retries=1), max_connections=MAX_CONNECTIONS, client_name=f"rtg:{instance_id}"
    )
    client.breaker = new_breaker(timeout, client.ping_past_breaker)
    return client


async def guarded(client: RedisClient, work: Callable[[], Awaitable[T]]) -> T:
    """`work` (a pipeline's execute, which does not pass through `execute_command`) behind the
    client's breaker."""
    return await client.breaker.call(work)


def new_breaker(timeout: float, probe: Callable[[], Awaitable[object]]) -> Breaker:
    """One per command client: every store of a process shares it (a Redis in trouble is in trouble
    for all of them)."""
    return Breaker(timeout, REDIS_ERRORS, trips, logging.getLogger("gateway.redis"), probe)


def trips(exc: BaseException) -> bool:
    """Whether a failure says Redis is unavailable (the breaker opens), not that one command was
    wrong: a script error, a wrong type or an out-of-memory reply fails that call only."""
    if isinstance(exc, ResponseError):
        return isinstance(exc, ReadOnlyError | ClusterDownError | TryAgainError)
    return isinstance(exc, REDIS_ERRORS)


def single_kwargs(settings: Settings, timeout: float, retries: int) -> dict[str, Any]:
    """How to reach the one Redis (REDIS_HOST mode); `retries` for a pooled connection gone stale."""
    return {
        **connection_kwargs(settings),
        "ssl": uses_tls(settings),
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), retries, supported_errors=(RedisConnectionError,)),
    }


def make_cluster_client(settings: Settings, timeout: float, client_name: str | None = None) -> GuardedCluster:
    """redis-py's cluster client: it maps slots to primaries from the seeds, follows MOVED, and
    refreshes the map after a connection error (a failover). One retry, no backoff: a caller
    waits a bounded time and the bus's own backoff paces reconnection."""
    cluster = GuardedCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in settings.redis_cluster_nodes],
        **login_kwargs(settings),
        ssl=uses_tls(settings),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        max_connections=MAX_CONNECTIONS,
        client_name=client_name,
    )
    cluster.breaker = new_breaker(timeout, cluster.ping_past_breaker)
    cluster.seeds = tuple(settings.redis_cluster_nodes)
    return cluster


def register(client: RedisClient, source: str) -> AsyncScript:
    """A Lua script run by EVALSHA (loaded on a NOSCRIPT reply: on every primary of a cluster).
    redis-py types `register_script` for one Redis only; the cluster client has the same method."""
    return AsyncScript(cast("aioredis.Redis", client), source)


def text(value: bytes | str) -> str:
    """A reply as a str (the clients do not decode replies: frames stay bytes)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def describe(exc: BaseException) -> str:
    """A one-line reason for logs and errors (no traceback: these failures are expected)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text and text[0] else type(exc).__name__


class StoreHealth(StateLog):
    """A Redis store's health (`redis {what} failing` / `recovered`, one line per change), and the
    StoreError its callers catch: the same three lines every store wrote for itself."""

    def __init__(self, logger: logging.Logger, what: str, error: str) -> None:
        super().__init__(logger, f"redis {what}")
        self._error = error

    def unavailable(self, exc: BaseException) -> StoreError:
        self.failed(describe(exc))
        return StoreError(f"{self._error} unavailable: {describe(exc)}")
