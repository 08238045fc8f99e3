"""Redis for tests: the shared server from the environment, a private one a test may stop and
start, and a plain client to look at what the gateway left in Redis."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from typing import Any

import redis

from tests.conftest import need_service
from tests.helpers import free_port


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


def client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True)


def numsub(port: int, channel: str) -> int:
    result: list[Any] = client(port).execute_command("PUBSUB", "NUMSUB", channel)  # type: ignore[no-untyped-call]
    return int(result[1])


class PrivateRedis:
    """A redis-server of one test's own (on a free port), which the test may stop and restart
    without touching the shared one."""

    def __init__(self, port: int | None = None) -> None:
        if shutil.which("redis-server") is None:
            need_service("RTG_NO_SUCH_VARIABLE", "redis-server")
        self.port = port or free_port()
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
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        probe = client(self.port)
        while True:
            try:
                if probe.ping():
                    return
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"private redis-server on {self.port} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
