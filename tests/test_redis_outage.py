"""Redis goes away for ~5 s under two running instances (a private redis-server, never the shared
one): messages are refused (`unavailable`) and reach nobody, presence goes on locally, other
Redis-backed requests fail with error frames, readiness is 503, and within 20 s of Redis coming
back both instances deliver across again with presence rebuilt."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tornado.ioloop import IOLoop

from tests.helpers import Client, RunningGateway, readyz, sample, wait_for
from tests.recovery_support import send_until_acked
from tests.redis_support import PrivateRedis, hkeys, pause_all, redis_overrides

OUTAGE_SECONDS = 5.0
RECOVERY_BOUND = 20.0


@pytest.fixture
def pair(
    io_loop: IOLoop, private_redis: PrivateRedis, make_gateway: Callable[..., Awaitable[RunningGateway]]
) -> list[RunningGateway]:
    common = redis_overrides(private_redis.port, presence_ttl=3.0)
    return [io_loop.run_sync(lambda n=name: make_gateway(**common, instance_id=n)) for name in ("out-a", "out-b")]


def presence_of(user: str, status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f["payload"]["userId"] == user and f["payload"]["status"] == status


async def sees_gone(c: Client, room: str, user: str, timeout: float = 5.0) -> None:
    """`user` left `room` in `c`'s view: a presence offline, or a snapshot without them."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await c.recv(max(0.01, deadline - time.monotonic()))
        assert frame is not None, "socket closed"
        payload = frame["payload"]
        if frame["type"] == "presence" and presence_of(user, "offline")(frame):
            return
        snapshot = frame["type"] == "presence_state" and payload["roomId"] == room
        if snapshot and user not in {m["userId"] for m in payload["members"]}:
            return


@pytest.mark.gen_test(timeout=60)
async def test_redis_outage_and_recovery(
    pair: list[RunningGateway], private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    a, b = pair
    alice, carol, dave = await a.client("alice"), await a.client("carol"), await a.client("dave")
    bob = await b.client("bob")
    for c in (alice, carol, bob):
        await c.join("o")
    alice.send("message", {"roomId": "o", "content": "before"})
    for member in (alice, bob):  # read here, so that `only=True` below sees the frames after it
        assert (await member.expect("message"))["payload"]["content"] == "before"
    reconnects = sample("gateway_bus_reconnects_total")
    renewals = sample("gateway_history_epoch_renewals_total", cause="lost")
    publish_failures = sample("gateway_bus_publish_failures_total")
    caplog.clear()

    private_redis.stop()
    stopped = time.monotonic()

    async def both(code: int) -> bool:
        return [(await readyz(g.http))[0] for g in (a, b)] == [code, code]

    await wait_for(lambda: both(503), what="readiness 503 on both instances")
    _, body = await readyz(a.http)
    assert body["instance"] == "out-a" and body["checks"]["bus"] is False

    # A message cannot be stored: its sender is refused, and nobody gets it, not even carol on the
    # same instance. Presence needs no Redis: it narrows to this instance, quickly, never a hang.
    began = time.monotonic()
    alice.send("message", {"roomId": "o", "content": "during", "dedupeKey": "dk"}, request_id="d1")
    refused = await alice.expect_error("unavailable")
    assert (refused["payload"]["roomId"], refused["payload"]["dedupeKey"]) == ("o", "dk")
    await carol.none_before_pong("message", match=lambda f: f["payload"]["content"] == "during")
    alice.send("presence", {"roomId": "o", "status": "typing"})
    await carol.expect("presence", match=presence_of("alice", "typing"))
    # A room already live here can be joined (members as this instance knows them); a room that
    # needs a new subscription cannot until the bus is back.
    dave.send("join", {"roomId": "o"}, request_id="j2")
    joined = await dave.expect("presence_state", match=lambda f: f["payload"]["roomId"] == "o")
    assert {m["userId"] for m in joined["payload"]["members"]} == {"alice", "carol", "dave"}
    await alice.expect("presence", match=presence_of("dave", "online"))
    dave.send("join", {"roomId": "elsewhere"}, request_id="j1")
    assert (await dave.expect_error("unavailable"))["payload"]["roomId"] == "elsewhere"
    assert time.monotonic() - began < 3.0
    assert dave.close_code is None and not dave.closed
    carol.close()  # a leave Redis cannot hear about now: announced here at once, elsewhere later
    await alice.expect("presence", match=presence_of("carol", "offline"))

    await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))  # the outage itself
    assert await both(503)
    private_redis.start()
    restarted = time.monotonic()

    await wait_for(lambda: both(200), timeout=RECOVERY_BOUND, what="both instances ready again")
    # The refused message, sent again with its dedupeKey once Redis is back, reaches everyone once.
    await send_until_acked(alice, "o", "during", "dk")
    for member in (alice, bob, dave):
        await member.expect("message", match=lambda f: f["payload"]["content"] == "during")
    bob.send("message", {"roomId": "o", "content": "after"})
    after = await alice.expect("message", match=lambda f: f["payload"]["content"] == "after", only=True)
    assert after["payload"]["senderId"] == "bob" and after["payload"]["offset"] > 0
    await bob.expect("message", match=lambda f: f["payload"]["content"] == "after", only=True)  # his echo
    alice.send("message", {"roomId": "o", "content": "after too"})
    after_too = await bob.expect("message", match=lambda f: f["payload"]["content"] == "after too", only=True)
    assert (
        after_too["payload"]["senderId"] == "alice" and after_too["payload"]["offset"] == after["payload"]["offset"] + 1
    )
    assert time.monotonic() - restarted < RECOVERY_BOUND

    # Redis came back empty (no persistence): each instance re-registers its members, and the
    # leave it could not store is announced now. An instance still reconnecting when that was
    # published hears of it through the presence_state snapshot every room gets after a resync.
    users_key = a.settings.redis_prefix + "presence:room:{o}"
    await wait_for(lambda: hkeys(private_redis.port, users_key) == {"alice", "bob", "dave"}, what="presence rebuilt")
    await sees_gone(bob, "o", "carol")
    erin = await b.client("erin")
    state = await erin.join("o")
    assert {m["userId"] for m in state["payload"]["members"]} == {"alice", "bob", "dave", "erin"}

    assert sample("gateway_bus_reconnects_total") >= reconnects + 2
    # Redis came back empty: the history was lost, and both instances saw the room's epoch change.
    assert sample("gateway_history_epoch_renewals_total", cause="lost") == renewals + 2
    assert sample("gateway_bus_publish_failures_total") >= publish_failures + 1
    # Expected failures are logged once per change of state, without tracebacks.
    assert not [r for r in caplog.records if r.exc_info], "no tracebacks"
    down = [r for r in caplog.records if r.getMessage() == "bus down, reconnecting"]
    assert len(down) == 2, [r.getMessage() for r in caplog.records]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) <= 10, [r.getMessage() for r in warnings]


@pytest.fixture
def lone(
    io_loop: IOLoop, private_redis: PrivateRedis, make_gateway: Callable[..., Awaitable[RunningGateway]]
) -> RunningGateway:
    running: RunningGateway = io_loop.run_sync(
        lambda: make_gateway(**redis_overrides(private_redis.port), instance_id="lone")
    )
    return running


@pytest.mark.gen_test(timeout=30)
async def test_unresponsive_redis_degrades_within_seconds_not_a_hang(
    lone: RunningGateway, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis accepts connections but answers nothing (CLIENT PAUSE): the first request that needs
    it is refused after the command timeout (about 2 s), the next ones at once (the circuit breaker
    is open), and what needs no Redis is answered meanwhile."""
    alice, bob = await lone.client("alice"), await lone.client("bob")
    await alice.join("here")
    await bob.join("here")
    pause = 11.0
    assert pause_all(private_redis.port, pause)
    paused = time.monotonic()

    bob.send("message", {"roomId": "here", "content": "k", "dedupeKey": "k"}, request_id="m")
    assert (await bob.reply_to("m", timeout=pause))["payload"]["code"] == "unavailable"
    alice.send("join", {"roomId": "new-room"}, request_id="j")  # a new room needs the bus
    assert (await alice.reply_to("j", timeout=pause))["payload"]["code"] == "unavailable"
    bob.send("presence", {"roomId": "here", "status": "typing"})  # needs no Redis to reach alice
    await alice.expect("presence", timeout=pause, match=lambda f: f["payload"]["status"] == "typing")
    assert time.monotonic() - paused < pause - 4.0  # refused and answered, not waiting for the pause
    await alice.none_before_pong("message")  # nothing of the refused message reached alice

    await wait_for(lone.gateway.bus.ready, timeout=15, what="the bus back after the pause")
    alice.send("join", {"roomId": "new-room"}, request_id="j2")
    await alice.expect("room_update", match=lambda f: f.get("requestId") == "j2")
    await send_until_acked(bob, "here", "k", "k")  # the breaker may still wait for its probe
    assert (await alice.expect("message", match=lambda f: f["payload"]["roomId"] == "here"))["payload"][
        "content"
    ] == "k"
    assert not [r for r in caplog.records if r.exc_info], "no tracebacks"


@pytest.mark.gen_test(timeout=60)
async def test_snapshot_after_redis_comes_back_empty_lists_the_instances_own_users(
    pair: list[RunningGateway], private_redis: PrivateRedis
) -> None:
    """The presence_state every room gets after a bus resync is read only once the instance has
    put its own connections back into the (empty) Redis: it lists the receiving client itself."""
    a, b = pair
    alice, bob = await a.client("alice"), await b.client("bob")
    for c in (alice, bob):
        await c.join("s")
    private_redis.stop()

    async def both(code: int) -> bool:
        return [(await readyz(g.http))[0] for g in (a, b)] == [code, code]

    await wait_for(lambda: both(503), what="readiness 503 on both instances")
    private_redis.start()  # no persistence: Redis is back empty
    await wait_for(lambda: both(200), timeout=RECOVERY_BOUND, what="both instances ready again")
    for client, me in ((alice, "alice"), (bob, "bob")):
        state = await client.expect("presence_state", match=lambda f: f["payload"]["roomId"] == "s")
        assert me in {m["userId"] for m in state["payload"]["members"]}, state
