"""Real `python server.py` processes against real redis-servers: a kill -9'd instance's users go
offline, start-up without Redis, --wait-for-redis, and --workers sharing one port."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.helpers import SECRET, Client, GatewayProcess, free_port, spawn_server, token, wait_for
from tests.redis_support import PrivateRedis, exists, server_args, shared_redis_port, smembers, unique_prefix

PRESENCE_TTL = 3.0
SWEEP_INTERVAL = 0.5  # max(0.5, min(5, PRESENCE_TTL / 6))


async def exited(gp: GatewayProcess, timeout: float = 15) -> int:
    """Wait for the process without blocking the IOLoop (our clients must answer its close frames)."""
    await wait_for(lambda: gp.proc.poll() is not None, timeout, what="the server to exit")
    return gp.proc.wait()


def presence_of(user: str, status: str):
    return lambda f: f["payload"]["userId"] == user and f["payload"]["status"] == status


@pytest.mark.gen_test(timeout=30)
async def test_killed_instance_users_go_offline_within_ttl(processes: list[GatewayProcess]) -> None:
    port = shared_redis_port()
    prefix = unique_prefix()
    args = server_args(port, "--presence-ttl", str(PRESENCE_TTL), prefix=prefix)
    doomed = spawn_server(*args)
    survivor = spawn_server(*args)
    processes += [doomed, survivor]

    alice = await Client.connect(doomed.url, token("alice"))
    await alice.join("k9")
    bob = await Client.connect(survivor.url, token("bob"))
    state = await bob.join("k9")
    assert {m["userId"] for m in state["payload"]["members"]} == {"alice", "bob"}

    doomed.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    bound = PRESENCE_TTL + 2 * SWEEP_INTERVAL
    offline = await bob.expect("presence", timeout=bound + 3, match=presence_of("alice", "offline"))
    elapsed = time.monotonic() - killed
    assert offline["payload"]["roomId"] == "k9"
    assert elapsed <= bound + 1.0, f"offline after {elapsed:.1f}s, bound {bound}s"

    carol = await Client.connect(survivor.url, token("carol"))
    state = await carol.join("k9")
    assert {m["userId"] for m in state["payload"]["members"]} == {"bob", "carol"}
    assert not exists(port, f"{prefix}presence:rooms:{{{doomed_instance(doomed)}}}")


def doomed_instance(gp: GatewayProcess) -> str:
    return str(gp.logged("listening")[0]["instance"])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_redis_down_at_start_is_one_line_and_exit_2(workers: str) -> None:
    nobody = free_port()  # nothing listens there
    started = time.monotonic()
    gp = spawn_server(*server_args(nobody, "--redis-connect-timeout", "1", "--workers", workers), wait_listening=False)
    _, err = gp.proc.communicate(timeout=20)
    elapsed = time.monotonic() - started
    assert gp.proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"server.py: error: cannot reach Redis at 127.0.0.1:{nobody} within 1s"), err
    assert "--wait-for-redis" in lines[0]
    assert 1.0 <= elapsed < 1.0 + 4.0  # tried for the whole timeout, then gave up (+ interpreter start)


def test_workers_without_redis_is_one_line_and_exit_2() -> None:
    gp = spawn_server("--port", "0", "--jwt-secret", SECRET, "--workers", "2", wait_listening=False)
    _, err = gp.proc.communicate(timeout=20)
    assert gp.proc.returncode == 2
    assert err.strip().splitlines() == [
        "server.py: error: WORKERS > 1 needs Redis: set REDIS_HOST or REDIS_CLUSTER_NODES"
    ]


@pytest.mark.gen_test(timeout=40)
async def test_wait_for_redis_waits_then_serves(processes: list[GatewayProcess]) -> None:
    redis = PrivateRedis()  # not started yet: its port is where the gateway looks
    gp = spawn_server(
        *server_args(redis.port, "--wait-for-redis", "--redis-connect-timeout", "0.5"),
        wait_listening=False,
        collect=True,
    )
    processes.append(gp)
    try:
        await wait_for(lambda: gp.logged("waiting for redis"), timeout=15, what="the waiting log line")
        await asyncio.sleep(1.0)  # well past REDIS_CONNECT_TIMEOUT (0.5 s): it must still be waiting
        assert gp.proc.poll() is None and gp.port == 0
        assert len(gp.logged("waiting for redis")) == 1  # said once, not once per attempt
        redis.start()
        await wait_for(lambda: gp.port != 0, timeout=15, what="listening once Redis is there")
        alice = await Client.connect(gp.url, token("alice"))
        await alice.join("w")
        response = await AsyncHTTPClient().fetch(gp.http + "/readyz", raise_error=False)
        assert response.code == 200
        gp.signal(signal.SIGTERM)
        assert await exited(gp) == 0
    finally:
        redis.stop()


@pytest.mark.gen_test(timeout=40)
async def test_workers_share_the_port_and_messages_cross(processes: list[GatewayProcess]) -> None:
    port = shared_redis_port()
    prefix = unique_prefix()
    gp = spawn_server(*server_args(port, "--workers", "2", prefix=prefix))
    processes.append(gp)
    await wait_for(lambda: len(gp.logged("listening")) == 2, what="both workers listening")
    listening = gp.logged("listening")
    instances = {r["instance"] for r in listening}
    assert len(instances) == 2 and {r["port"] for r in listening} == {gp.port}

    # /readyz names the instance: new connections reach both workers on the one port.
    seen: set[str] = set()
    for _ in range(100):
        response = await AsyncHTTPClient(force_instance=True).fetch(gp.http + "/readyz")
        seen.add(json.loads(response.body)["instance"])
        if seen == instances:
            break
    assert seen == instances

    # Find a client on each worker: each joins a room of its own, and Redis presence says which
    # instance holds its connection.
    by_instance: dict[str, Client] = {}
    for i in range(60):
        c = await Client.connect(gp.url, token(f"u{i}"))
        await c.join(f"where-{i}")
        owner = [inst for inst in instances if smembers(port, f"{prefix}presence:conns:{{where-{i}}}:{inst}")]
        assert len(owner) == 1
        by_instance.setdefault(owner[0], c)
        if len(by_instance) == 2:
            break
    assert len(by_instance) == 2, "every connection landed on one worker"
    first, second = by_instance.values()
    await first.join("cross")
    await second.join("cross")
    first.send("message", {"roomId": "cross", "content": "worker to worker"})
    got = await second.expect("message", match=lambda f: f["payload"]["roomId"] == "cross")
    assert got["payload"]["content"] == "worker to worker"
    await first.expect("ack")  # a client that leaves frames unread would hold up the drain below

    gp.signal(signal.SIGTERM)  # the supervisor passes it on; both workers drain and exit
    assert await exited(gp) == 0
    closes = [await c.wait_closed() for c in by_instance.values()]
    assert closes == [1012, 1012]
    await wait_for(lambda: len(gp.logged("stopped")) == 2, what="both workers stopped")
