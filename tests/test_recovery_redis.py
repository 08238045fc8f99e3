"""History and recovery over a real Redis with two gateway instances: offsets every instance agrees
on, one order for every member, replay across instances, drains and slow-consumer closes, and an
honest `recovered: false` after Redis lost (or never stored) entries."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
from tornado.ioloop import IOLoop

from services import frames
from services.bus.wire import entry_head
from services.history import redis as redis_history
from tests.helpers import RawWebSocket, RunningGateway, sample, token, wait_for
from tests.recovery_support import in_room, messages, position, rejoin, say, seen_then_gone
from tests.redis_support import (
    PrivateRedis,
    client,
    kill_client,
    redis_overrides,
    shared_redis_port,
    subscriber_id,
    unique_prefix,
)

Pair = tuple[RunningGateway, RunningGateway]


async def _pair(make_gateway: Callable[..., Awaitable[RunningGateway]], port: int, **extra: Any) -> Pair:
    prefix = unique_prefix()
    settings = {"rate_limit": 1000.0, "rate_burst": 1000, **extra}
    a = await make_gateway(**redis_overrides(port, prefix, instance_id="rec-a", **settings))
    b = await make_gateway(**redis_overrides(port, prefix, instance_id="rec-b", **settings))
    return a, b


@pytest.fixture
def pair(io_loop: IOLoop, make_gateway: Callable[..., Awaitable[RunningGateway]]) -> Pair:
    running: Pair = io_loop.run_sync(lambda: _pair(make_gateway, shared_redis_port()))
    return running


@pytest.mark.gen_test(timeout=30)
async def test_missed_messages_are_replayed_through_the_other_instance(pair: Pair) -> None:
    a, b = pair
    alice, bob = await a.client("alice"), await b.client("bob")
    last = await seen_then_gone(alice, bob, "r")
    await say(bob, "r", "m1", "m2")
    back = await b.client("alice")
    joined, between = await rejoin(back, "r", last)
    assert joined["payload"]["recovered"] is True
    assert [(f["payload"]["content"], f["payload"]["offset"]) for f in between] == [("m1", 2), ("m2", 3)]
    assert {f["payload"]["epoch"] for f in between} == {last["epoch"]}


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_publishers_on_two_instances_give_every_member_one_order(pair: Pair) -> None:
    a, b = pair
    watchers = [await a.client("w-a"), await b.client("w-b")]
    senders = [await a.client("s-a"), await b.client("s-b")]
    for c in (*watchers, *senders):
        await c.join("busy")
    per_sender = 60
    for i in range(per_sender):  # interleaved, without waiting for acks
        for s in senders:
            s.send("message", {"roomId": "busy", "content": f"{s is senders[0]}-{i}"})
    seen = [await messages(w, "busy", 2 * per_sender) for w in watchers]
    for got in seen:
        assert [m["payload"]["offset"] for m in got] == list(range(1, 2 * per_sender + 1))
    assert [m["payload"]["id"] for m in seen[0]] == [m["payload"]["id"] for m in seen[1]]
    for s in senders:  # and each sender's own messages in the order sent
        assert [
            m["payload"]["content"] for m in seen[0] if m["payload"]["content"].startswith(str(s is senders[0]))
        ] == [f"{s is senders[0]}-{i}" for i in range(per_sender)]


@pytest.mark.gen_test(timeout=120)
async def test_rejoining_under_continuous_publishing_never_gaps_or_repeats(pair: Pair) -> None:
    """A reader drops and re-joins (alternating instances) twenty times while both instances
    publish: the offsets it sees, over all its connections, are 1..N once each, in order."""
    a, b = pair
    publishers = [await a.client("p-a"), await b.client("p-b")]
    for p in publishers:
        await p.join("stream")
    stop = asyncio.Event()
    sent = [0, 0]

    async def publish(index: int) -> None:
        p = publishers[index]
        while not stop.is_set():
            p.send("message", {"roomId": "stream", "content": f"{index}-{sent[index]}"})
            sent[index] += 1
            await asyncio.sleep(random.uniform(0.001, 0.006))  # pacing, not waiting for a condition

    tasks = [asyncio.ensure_future(publish(i)) for i in (0, 1)]
    rng = random.Random(7)
    offsets: list[int] = []
    replayed = 0
    since: dict[str, Any] | None = None
    try:
        for cycle in range(20):
            reader = await (a if cycle % 2 else b).client("reader")
            if since is None:
                reader.send("join", {"roomId": "stream"}, request_id="first")
                joined = await reader.expect("room_update", match=lambda f: f.get("requestId") == "first")
                start = joined["payload"]["offset"]
                since = position(joined)
            else:
                joined, between = await rejoin(reader, "stream", since)
                assert joined["payload"]["recovered"] is True, f"cycle {cycle}"
                offsets += [f["payload"]["offset"] for f in between if f["type"] == "message"]
                replayed += len(between)
            for frame in await messages(reader, "stream", rng.randint(1, 8)):
                offsets.append(frame["payload"]["offset"])
            since = {"offset": offsets[-1], "epoch": since["epoch"]}
            reader.close()
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert offsets == list(range(start + 1, start + 1 + len(offsets)))
    assert len(offsets) > 40
    assert replayed > 0  # the drops did miss messages: the seams were exercised


@pytest.mark.gen_test(timeout=40)
async def test_an_instance_that_missed_entries_on_the_bus_reads_them_back(pair: Pair) -> None:
    """B's subscriber socket dies and entries are published before it is back: B reads them from
    the history after its resync, and its members get every offset once, in order."""
    a, b = pair
    alice, bob = await a.client("alice"), await b.client("bob")
    await alice.join("r")
    await bob.join("r")
    await say(alice, "r", "first")
    assert (await messages(bob, "r", 1))[0]["payload"]["offset"] == 1
    port = shared_redis_port()
    sub = subscriber_id(port, "rec-b")
    assert sub is not None
    # Blocking calls: the gateways (on this event loop) run again only after all of them. Another
    # instance's appends, with the gateway's own script, while B is not subscribed.
    filled = sample("gateway_gap_fill_entries_total")
    assert kill_client(port, sub) == 1
    prefix = b.settings.redis_prefix
    stream = f"{prefix}history:{{r}}"
    for text in ("missed-1", "missed-2", "missed-3"):
        message = {"id": text, "roomId": "r", "senderType": "system", "senderId": "ops", "content": text}
        frame = frames.encode("message", {**message, "attachments": [], "createdAt": "2026-12-01T00:00:00.000Z"})
        args: list[Any] = [stream, stream + ":pos", stream + ":ids", "unused", "", 0, 86_400_000, 1000, 600_000]
        args += [f"{prefix}room:r", entry_head("elsewhere"), frame[:-2], "PUBLISH", 1 << 20, text]
        client(port).eval(redis_history._APPEND, 3, *args)
    got = await messages(bob, "r", 3)
    assert [(m["payload"]["content"], m["payload"]["offset"]) for m in got] == [
        ("missed-1", 2),
        ("missed-2", 3),
        ("missed-3", 4),
    ]
    await say(alice, "r", "after")
    assert (await messages(bob, "r", 1))[0]["payload"]["offset"] == 5
    await bob.none_before_pong("message")
    assert sample("gateway_gap_fill_entries_total") == filled + 3


@pytest.mark.gen_test(timeout=40)
async def test_a_drained_instances_clients_recover_on_the_other(
    make_gateway: Callable[..., Awaitable[RunningGateway]],
) -> None:
    a, b = await _pair(make_gateway, shared_redis_port(), drain_delay=0.0, drain_window=0.2)
    alice, bob = await a.client("alice"), await b.client("bob")
    await alice.join("r")
    await bob.join("r")
    await say(bob, "r", "before")
    last = position((await messages(alice, "r", 1))[0])
    draining = asyncio.ensure_future(a.gateway.drain())
    assert await alice.wait_closed() == 1012
    await say(bob, "r", "during-1", "during-2")
    await draining
    back = await b.client("alice")
    joined, between = await rejoin(back, "r", last)
    assert joined["payload"]["recovered"] is True
    assert [f["payload"]["content"] for f in between] == ["during-1", "during-2"]


@pytest.mark.gen_test(timeout=60)
async def test_a_slow_consumer_closed_4008_recovers_everything_on_reconnect(
    make_gateway: Callable[..., Awaitable[RunningGateway]],
) -> None:
    """More was missed than the outbound queue holds: the replay is paced to the socket, not
    closed 4008 again."""
    a, b = await _pair(make_gateway, shared_redis_port(), outbound_queue_frames=40)
    bob = await b.client("bob")
    await bob.join("r")
    slow = await asyncio.to_thread(RawWebSocket, a.port, token("slow"))
    slow.send_text(json.dumps({"type": "join", "payload": {"roomId": "r"}}))
    await wait_for(lambda: bool(a.gateway.hub.rooms.get("r")), what="the slow client to join")
    slow_session = next(s for s in a.gateway.sessions if s.user_id == "slow")
    body = "x" * 3500

    def read_all() -> tuple[list[dict[str, Any]], int | None]:
        frames: list[dict[str, Any]] = []
        while True:
            got = slow.recv_frame(timeout=20)
            if got is None or got[0] == 0x8:
                code = int.from_bytes(got[1][:2], "big") if got and len(got[1]) >= 2 else None
                return frames, code
            frames.append(json.loads(got[1]))

    reading = None
    for chunk in range(100):  # ~17 MB at most: more than the kernel buffers plus the 40-frame bound
        for i in range(50):
            bob.send("message", {"roomId": "r", "content": f"{chunk}-{i}-{body}"})
        await messages(bob, "r", 50)
        if slow_session.closed:
            # Read at once: the server gives a non-reading client a few seconds to take the close frame.
            reading = asyncio.ensure_future(asyncio.to_thread(read_all))
            break
    assert reading is not None, "the slow client was never closed"
    frames, code = await reading
    slow.close()
    assert code == 4008
    seen = [f for f in frames if f["type"] == "message"]
    last = position(seen[-1]) if seen else position(next(f for f in frames if f["type"] == "room_update"))
    await say(bob, "r", "after")
    back = await a.client("slow")
    joined, between = await rejoin(back, "r", last)
    assert joined["payload"]["recovered"] is True
    replayed = [f["payload"]["offset"] for f in between if f["type"] == "message"]
    assert replayed == list(range(last["offset"] + 1, joined["payload"]["offset"] + 1))
    assert len(replayed) > 40  # more than the queue's bound


@pytest.mark.gen_test(timeout=60)
async def test_flushed_redis_starts_a_new_epoch(
    make_gateway: Callable[..., Awaitable[RunningGateway]], private_redis: PrivateRedis
) -> None:
    a, b = await _pair(make_gateway, private_redis.port)
    alice, bob = await a.client("alice"), await b.client("bob")
    await alice.join("r")
    await bob.join("r")
    await say(bob, "r", "old")
    last = position((await messages(alice, "r", 1))[0])
    client(private_redis.port).flushall()
    await say(bob, "r", "new")
    fresh = (await messages(alice, "r", 1))[0]
    assert fresh["payload"]["offset"] == 1 and fresh["payload"]["epoch"] != last["epoch"]
    alice.close()
    back = await b.client("alice")
    joined, between = await rejoin(back, "r", last)
    assert joined["payload"]["recovered"] is False
    assert position(joined) == position(fresh)
    assert between == []


@pytest.mark.gen_test(timeout=30)
async def test_history_is_shared_and_bounded(make_gateway: Callable[..., Awaitable[RunningGateway]]) -> None:
    port = shared_redis_port()
    a, b = await _pair(make_gateway, port, history_size=5, history_ttl=60.0)
    alice, bob = await a.client("alice"), await b.client("bob")
    await alice.join("r")
    await bob.join("r")
    await say(alice, "r", *[str(i) for i in range(8)])
    bob.send("history", {"roomId": "r", "limit": 100}, request_id="h")
    reply = await bob.expect("history", match=lambda f: f.get("requestId") == "h")
    assert [e["payload"]["content"] for e in reply["payload"]["entries"]] == ["3", "4", "5", "6", "7"]
    assert reply["payload"]["offset"] == 8
    keys = client(port)
    stream = f"{a.settings.redis_prefix}history:{{r}}"
    assert keys.xlen(stream) == 5
    assert 0 < cast(int, keys.pttl(stream)) <= 60_000
    assert 60_000 < cast(int, keys.pttl(stream + ":pos")) <= 86_400_000  # the position outlives the entries
    assert in_room("r")(reply)
