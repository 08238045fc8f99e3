"""Fixtures: gateways on real ports, cleaned up after each test; real Redis/Kafka from the env
that scripts/test.sh sets (skipped when absent, failed when RTG_REQUIRE_SERVICES=1).

Tiers: `slow` marks what needs a service (Redis, a cluster, Kafka, helm, Chromium, the image
tools), a subprocess or long real-clock waits; `pytest` alone runs the rest (the inner loop, in
parallel: `make test-fast`), `make test` runs everything (docs/testing.md)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from tornado.ioloop import IOLoop

from services.bus.memory import MemoryNetwork
from services.dedupe import DedupeStore
from tests.helpers import ROOT, GatewayProcess, RunningGateway, start_gateway, test_settings

# Modules whose tests need a service, a subprocess or long waits throughout (the full tier only).
SLOW_MODULES = frozenset(
    {
        "test_asyncapi",
        "test_bench",
        "test_chaos",
        "test_chart",
        "test_client_cli",
        "test_client_sdk",
        "test_control_redis",
        "test_dashboard",
        "test_demo_browser",
        "test_demo_routes",
        "test_example_backend",
        "test_fuzz",
        "test_image",
        "test_install",
        "test_kafka",
        "test_prerequisites",
        "test_presence_events",
        "test_readme_snippets",
        "test_recovery_redis",
        "test_redis_bus",
        "test_redis_cluster",
        "test_redis_gateway",
        "test_redis_outage",
        "test_redis_processes",
        "test_redis_tls",
        "test_redis_trouble",
        "test_server",
        "test_sse_proxy",
        "test_sse_redis",
    }
)
SERVICE_PARAMS = frozenset({"redis", "cluster"})  # contract tests run each backend: these need one


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.stem
        params = getattr(getattr(item, "callspec", None), "params", {}).values()
        if module in SLOW_MODULES or any(isinstance(p, str) and p in SERVICE_PARAMS for p in params):
            item.add_marker(pytest.mark.slow)


def unavailable(reason: str) -> NoReturn:
    """Something a test needs is missing: skip, or fail under `make test` (RTG_REQUIRE_SERVICES=1),
    which installs and starts everything, so a missing part there is a broken setup, not a skip."""
    if os.environ.get("RTG_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}; `make test` provides it")
    pytest.skip(reason)


def need_service(env_name: str, what: str) -> str:
    value = os.environ.get(env_name)
    if not value:
        unavailable(f"{what} not available ({env_name} unset)")
    return value


def helm_path() -> Path:
    raw = Path(os.environ.get("RTG_HELM") or ".cache/bin/helm")
    return raw if raw.is_absolute() else Path(ROOT) / raw


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary (scripts/helm.sh ensure builds it into .cache/bin; RTG_HELM overrides)."""
    path = helm_path()
    if not (path.is_file() and os.access(path, os.X_OK)):
        unavailable(f"helm binary not found at {path} (build it with: scripts/helm.sh ensure)")
    return str(path)


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


@pytest.fixture(scope="session")
def brokers() -> str:
    """The shared Kafka broker (RTG_TEST_KAFKA_BROKERS, started by scripts/test.sh)."""
    return need_service("RTG_TEST_KAFKA_BROKERS", "Kafka")


@pytest.fixture
def private_redis() -> Iterator[Any]:
    """A redis-server of the test's own on a free port (tests.redis_support.PrivateRedis), which the
    test may stop and start; never the shared one."""
    from tests.redis_support import PrivateRedis  # it imports need_service from here

    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


def start_cluster(folder: str, **env_extra: str) -> str:
    """scripts/redis-cluster.sh in `folder`: 3 primaries and 3 replicas; returns the seeds.
    `env_extra`: the script's TLS and ACL settings (CLUSTER_TLS_CERT=..., CLUSTER_USER=...)."""
    if shutil.which("redis-server") is None:
        need_service("RTG_NO_SUCH_VARIABLE", "redis-server (for a Redis Cluster)")
    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", "redis-cluster.sh")
    env = {**os.environ, "CLUSTER_DIR": folder, **env_extra}
    subprocess.run([script, "start"], env=env, check=True, capture_output=True, timeout=60)
    with open(os.path.join(folder, "nodes")) as f:
        return f.read().strip()


def stop_cluster(folder: str, **env_extra: str) -> None:
    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", "redis-cluster.sh")
    env = {**os.environ, "CLUSTER_DIR": folder, **env_extra}
    subprocess.run([script, "stop"], env=env, check=False, timeout=60)


@contextlib.contextmanager
def private_cluster(name: str, **env_extra: str) -> Iterator[str]:
    """A cluster in a temporary folder for as long as the block runs; yields its seeds."""
    folder = tempfile.mkdtemp(prefix=f"rtg-{name}-")
    try:
        yield start_cluster(folder, **env_extra)
    finally:
        stop_cluster(folder, **env_extra)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[str]:
    """The seeds of a Redis Cluster shared by the tests that need one: RTG_TEST_REDIS_CLUSTER, or one
    started here on first use (and stopped at the end), so a run without cluster tests pays nothing."""
    seeds = os.environ.get("RTG_TEST_REDIS_CLUSTER")
    if seeds:
        yield seeds
        return
    with private_cluster("cluster") as started:
        yield started


@pytest.fixture
def gw(io_loop: IOLoop, make_gateway: Callable[..., Awaitable[RunningGateway]]) -> RunningGateway:
    running: RunningGateway = io_loop.run_sync(make_gateway)
    return running


@pytest.fixture
def processes() -> Iterator[list[GatewayProcess]]:
    """Gateway processes a test started; stopped with SIGTERM (then SIGKILL) afterwards."""
    started: list[GatewayProcess] = []
    yield started
    for gp in started:
        if gp.proc.poll() is None:
            gp.signal(signal.SIGTERM)
    for gp in started:
        try:
            gp.wait(15)
        except Exception:
            gp.kill()
