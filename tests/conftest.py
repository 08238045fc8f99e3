"""Fixtures: gateways on real ports, cleaned up after each test; real Redis/Kafka from the env
that scripts/test.sh sets (skipped when absent, failed when RTG_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from tornado.ioloop import IOLoop

from services.bus.memory import MemoryNetwork
from services.dedupe import DedupeStore
from tests.helpers import RunningGateway, start_gateway, test_settings


def need_service(env_name: str, what: str) -> str:
    value = os.environ.get(env_name)
    if not value:
        if os.environ.get("RTG_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{what} is required ({env_name} unset); run the suite with `make test`")
        pytest.skip(f"{what} not available ({env_name} unset); `make test` starts it")
    return value


@pytest.fixture
def make_gateway(io_loop: IOLoop) -> Iterator[Callable[..., Awaitable[RunningGateway]]]:
    """`await make_gateway(**settings_overrides)`: an in-process gateway on a real port (pass the same
    `network`/`dedupe` to several to make them instances of one deployment); all are stopped after
    the test."""
    started: list[RunningGateway] = []

    async def factory(
        network: MemoryNetwork | None = None, dedupe: DedupeStore | None = None, **overrides: Any
    ) -> RunningGateway:
        running = await start_gateway(test_settings(**overrides), network, dedupe)
        started.append(running)
        return running

    yield factory
    for running in reversed(started):
        io_loop.run_sync(running.stop, timeout=10)


@pytest.fixture
def private_redis() -> Iterator[Any]:
    """A redis-server of the test's own on a free port (tests.redis_support.PrivateRedis), which the
    test may stop and start; never the shared one."""
    from tests.redis_support import PrivateRedis  # it imports need_service from here

    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def gw(io_loop: IOLoop, make_gateway: Callable[..., Awaitable[RunningGateway]]) -> RunningGateway:
    running: RunningGateway = io_loop.run_sync(make_gateway)
    return running
