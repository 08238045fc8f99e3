"""Redis for tests: the shared server from the environment, a private one a test may stop and
start, and a plain client to look at what the gateway left in Redis."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import uuid
from typing import Any, cast

import pytest
import redis
from redis.cluster import RedisCluster

from tests.conftest import need_service
from tests.helpers import SECRET, free_port


def shared_redis_port() -> int:
    return int(need_service("RTG_TEST_REDIS_PORT", "Redis"))


def unique_prefix() -> str:
    """Each test gets its own keys and channels on the shared server."""
    return f"t{uuid.uuid4().hex[:10]}:"


def redis_overrides(port: int, prefix: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "redis_host": "127.0.0.1",
        "redis_port": port,
        "redis_prefix": prefix or unique_prefix(),
        "redis_connect_timeout": 3.0,
    }
    out.update(extra)
    return out


def cluster_overrides(seeds: str, prefix: str | None = None, **extra: Any) -> dict[str, Any]:
    """Settings for a gateway on the Redis Cluster whose seeds are `seeds` (host:port,...)."""
    nodes = tuple((h, int(p)) for h, _, p in (s.rpartition(":") for s in seeds.split(",")))
    out: dict[str, Any] = {
        "redis_cluster_nodes": nodes,
        "redis_prefix": prefix or unique_prefix(),
        "redis_connect_timeout": 5.0,
    }
    out.update(extra)
    return out


def backend_overrides(kind: str, request: pytest.FixtureRequest, prefix: str | None = None) -> dict[str, Any]:
    """Settings for the contract tests' Redis kinds: "redis" (the shared server) or "cluster"."""
    if kind == "cluster":
        return cluster_overrides(request.getfixturevalue("redis_cluster"), prefix)
    return redis_overrides(shared_redis_port(), prefix)


def cluster_client(seeds: str) -> RedisCluster:
    host, _, port = seeds.split(",")[0].rpartition(":")
    return RedisCluster(host=host, port=int(port), socket_timeout=5, decode_responses=True)


def server_args(redis_port: int, *extra: str, prefix: str | None = None) -> list[str]:
    """`python server.py` arguments for a gateway process on the Redis at 127.0.0.1:`redis_port`."""
    return [
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--jwt-secret",
        SECRET,
        "--redis-host",
        "127.0.0.1",
        "--redis-port",
        str(redis_port),
        "--redis-prefix",
        prefix or unique_prefix(),
        "--drain-delay",
        "0",
        "--drain-window",
        "0",
        *extra,
    ]


def client(port: int, host: str = "127.0.0.1") -> redis.Redis:
    return redis.Redis(host=host, port=port, socket_timeout=5, decode_responses=True)


# Typed reads for assertions (redis-py types its sync commands as `Awaitable[T] | T`).


def numsub(port: int, channel: str) -> int:
    result = cast("list[Any]", client(port).pubsub_numsub(channel))
    return int(result[0][1])


def smembers(port: int, key: str) -> set[str]:
    return cast("set[str]", client(port).smembers(key))


def hkeys(port: int, key: str) -> set[str]:
    return set(cast("list[str]", client(port).hkeys(key)))


def exists(port: int, key: str) -> bool:
    return bool(cast("int", client(port).exists(key)))


def subscriber_id(port: int, instance: str) -> int | None:
    """The client id of an instance's subscriber socket (it is named `rtg-sub:{instance}`)."""
    for entry in cast("list[dict[str, Any]]", client(port).client_list()):
        if entry.get("name") == f"rtg-sub:{instance}":
            return int(entry["id"])
    return None


def kill_client(port: int, client_id: int) -> int:
    return int(cast("int", client(port).client_kill_filter(_id=str(client_id))))


def pause_all(port: int, seconds: float) -> bool:
    """CLIENT PAUSE ... ALL: Redis keeps its sockets open but answers nobody for a while."""
    return bool(cast("bool", client(port).client_pause(int(seconds * 1000), all=True)))


def command_calls(port: int, command: str) -> int:
    stats = cast("dict[str, Any]", client(port).info("commandstats"))
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


class PrivateRedis:
    """A redis-server of one test's own (on a free port), which the test may stop and restart
    without touching the shared one. `args` are more redis-server options (TLS, ACL users), and
    `probe` the client that can tell it has started (default: plain, no password)."""

    def __init__(self, port: int | None = None, args: tuple[str, ...] = (), probe: redis.Redis | None = None) -> None:
        if shutil.which("redis-server") is None:
            need_service("RTG_NO_SUCH_VARIABLE", "redis-server")
        self.port = port or free_port()
        self.args = args
        self.probe = probe
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        probe = self.probe or client(self.port)
        while True:
            try:
                if probe.ping():
                    return
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"private redis-server on {self.port} did not start")
            time.sleep(0.02)

    def freeze(self) -> None:
        """SIGSTOP: Redis hangs with its sockets open, like a partition that drops packets."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: Redis answers again, with everything it had (and runs what it was sent)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.thaw()
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
