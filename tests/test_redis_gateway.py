"""Two gateway instances (in-process, each on its own real port) sharing one real redis-server:
messages, presence, typing, dedupe and membership actions cross between them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tornado.ioloop import IOLoop

from services.bus.redis import RedisBus
from tests.helpers import Client, RunningGateway, sample, wait_for
from tests.redis_support import (
    kill_client,
    numsub,
    redis_overrides,
    shared_redis_port,
    subscriber_id,
    unique_prefix,
)

Pair = tuple[RunningGateway, RunningGateway]


@pytest.fixture
def pair(io_loop: IOLoop, make_gateway: Callable[..., Awaitable[RunningGateway]]) -> Pair:
    port = shared_redis_port()
    prefix = unique_prefix()
    a = io_loop.run_sync(lambda: make_gateway(**redis_overrides(port, prefix, instance_id="gw-a", typing_ttl=0.5)))
    b = io_loop.run_sync(lambda: make_gateway(**redis_overrides(port, prefix, instance_id="gw-b", typing_ttl=0.5)))
    return a, b


async def alice_and_bob(pair: Pair, room: str) -> tuple[Client, Client]:
    """alice on the first instance and bob on the second, both in `room`."""
    alice = await pair[0].client("alice")
    bob = await pair[1].client("bob")
    await alice.join(room)
    await bob.join(room)
    return alice, bob


def members(state: dict[str, Any]) -> dict[str, str]:
    return {m["userId"]: m["status"] for m in state["payload"]["members"]}


def in_room(room: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f["payload"]["roomId"] == room


def presence_of(user: str, status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f["payload"]["userId"] == user and f["payload"]["status"] == status


@pytest.mark.gen_test(timeout=20)
async def test_messages_cross_instances_both_ways(pair: Pair) -> None:
    a, b = pair
    assert isinstance(a.gateway.bus, RedisBus) and a.gateway.instance_id != b.gateway.instance_id
    alice, bob = await alice_and_bob(pair, "lobby")

    alice.send("message", {"roomId": "lobby", "content": "hi from A"}, request_id="m1")
    got = await bob.expect("message")
    own = await alice.expect("message")
    ack = await alice.expect("ack")
    assert got["payload"]["content"] == "hi from A" and got["payload"]["senderId"] == "alice"
    assert own["payload"]["id"] == got["payload"]["id"] == ack["payload"]["id"]
    assert ack["requestId"] == "m1"

    bob.send("message", {"roomId": "lobby", "content": "hi from B"})
    back = await alice.expect("message")
    assert back["payload"]["content"] == "hi from B" and back["payload"]["senderId"] == "bob"
    # Exactly one copy each: the echo of an instance's own publish is dropped.
    await bob.expect("message", match=lambda f: f["payload"]["content"] == "hi from B")
    bob.send("message", {"roomId": "lobby", "content": "marker"})  # one sender's messages stay in order
    for client in (alice, bob):
        await client.expect_absent(
            "message", until=lambda f: f["payload"].get("content") == "marker", match=lambda f: f["type"] == "message"
        )


@pytest.mark.gen_test(timeout=20)
async def test_presence_spans_instances(pair: Pair) -> None:
    a, b = pair
    alice = await a.client("alice")
    state = await alice.join("room1")
    assert members(state) == {"alice": "online"}

    bob = await b.client("bob")
    state = await bob.join("room1")
    assert members(state) == {"alice": "online", "bob": "online"}  # from both instances
    await alice.expect("presence", match=presence_of("bob", "online"))

    # A second connection of bob, on the other instance: not new, so no second announcement.
    bob2 = await a.client("bob")
    state = await bob2.join("room1")
    assert members(state) == {"alice": "online", "bob": "online"}
    # bob leaves on B but is still in the room through A: no offline.
    bob.send("leave", {"roomId": "room1"})
    await bob.expect("room_update", match=lambda f: f["payload"]["action"] == "left")
    carol = await b.client("carol")
    state = await carol.join("room1")
    assert members(state) == {"alice": "online", "bob": "online", "carol": "online"}
    await alice.expect("presence", match=presence_of("carol", "online"))
    carol.send("presence", {"roomId": "room1", "status": "online"})  # a later presence frame: the marker
    await alice.expect_absent(  # neither bob online again nor bob offline
        "presence", until=presence_of("carol", "online"), match=lambda f: f["payload"]["userId"] == "bob"
    )

    bob2.close()
    await alice.expect("presence", match=presence_of("bob", "offline"))
    await carol.expect("presence", match=presence_of("bob", "offline"))
    dave = await b.client("dave")
    assert members(await dave.join("room1")) == {"alice": "online", "carol": "online", "dave": "online"}


@pytest.mark.gen_test(timeout=20)
async def test_typing_and_idle_are_shared(pair: Pair) -> None:
    _, b = pair
    alice, bob = await alice_and_bob(pair, "t")
    alice.send("presence", {"roomId": "t", "status": "idle"})
    await bob.expect("presence", match=presence_of("alice", "idle"))
    alice.send("presence", {"roomId": "t", "status": "typing"})
    await bob.expect("presence", match=presence_of("alice", "typing"))
    # A newcomer on the other instance sees the status stored by the first.
    carol = await b.client("carol")
    assert members(await carol.join("t"))["alice"] == "typing"
    # typing lapses (TYPING_TTL 0.5 s here) back to online, on every instance.
    await bob.expect("presence", timeout=3, match=presence_of("alice", "online"))
    erin = await b.client("erin")
    assert members(await erin.join("t"))["alice"] == "online"


@pytest.mark.gen_test(timeout=20)
async def test_dedupe_spans_instances(pair: Pair) -> None:
    a, b = pair
    on_a = await a.client("sam")
    on_b = await b.client("sam")
    watcher_a = await a.client("wa")
    watcher_b = await b.client("wb")
    for c in (on_a, on_b, watcher_a, watcher_b):
        await c.join("d")

    on_a.send("message", {"roomId": "d", "content": "once", "dedupeKey": "k1"})
    first = await on_a.expect("ack")
    on_b.send("message", {"roomId": "d", "content": "once", "dedupeKey": "k1"})
    second = await on_b.expect("ack")
    assert second["payload"]["id"] == first["payload"]["id"]
    assert second["payload"]["createdAt"] == first["payload"]["createdAt"]

    # Both at once, one key: still one broadcast and one id.
    on_a.send("message", {"roomId": "d", "content": "race", "dedupeKey": "k2"})
    on_b.send("message", {"roomId": "d", "content": "race", "dedupeKey": "k2"})
    acks = [await on_a.expect("ack"), await on_b.expect("ack")]
    assert acks[0]["payload"]["id"] == acks[1]["payload"]["id"]

    on_a.send("message", {"roomId": "d", "content": "marker"})
    for watcher in (watcher_a, watcher_b):
        await watcher.expect("message", match=lambda f: f["payload"]["content"] == "marker")
        contents = [f["payload"]["content"] for f in watcher.backlog if f["type"] == "message"]
        assert contents == ["once", "race"], contents


@pytest.mark.gen_test(timeout=20)
async def test_room_is_subscribed_only_where_it_has_members(pair: Pair) -> None:
    a, b = pair
    port = a.settings.redis_port
    channel = a.settings.redis_prefix + "room:sparse"
    alice = await a.client("alice")
    await alice.join("sparse")
    assert numsub(port, channel) == 1  # A only: B has no member
    assert "room:sparse" not in b.gateway.hub.channels.keys

    bob = await b.client("bob")
    await bob.join("sparse")
    assert numsub(port, channel) == 2

    bob.send("leave", {"roomId": "sparse"})
    await bob.expect("room_update", match=lambda f: f["payload"]["action"] == "left")
    await wait_for(lambda: numsub(port, channel) == 1, what="B to unsubscribe after its grace")
    alice.close()  # a close, not a leave: the room keeps alice for PRESENCE_GRACE first
    grace = a.settings.presence_grace
    await wait_for(lambda: numsub(port, channel) == 0, timeout=grace + 5, what="A to unsubscribe after the graces")


@pytest.mark.gen_test(timeout=20)
async def test_one_publish_per_event_whatever_the_audience(pair: Pair) -> None:
    a, b = pair
    sent: list[str] = []
    bus = a.gateway.bus
    assert isinstance(bus, RedisBus)
    original = bus._send

    async def counting(key: str, payload: bytes) -> int:
        sent.append(key)
        return await original(key, payload)

    bus._send = counting  # type: ignore[method-assign]
    sender = await a.client("sender")
    await sender.join("big")
    audience = [await (a if i % 2 else b).client(f"u{i}") for i in range(8)]
    for c in audience:
        await c.join("big")
    sent.clear()
    appends = sample("gateway_history_appends_total")
    sender.send("message", {"roomId": "big", "content": "to all"})
    for c in audience:
        await c.expect("message", match=lambda f: f["payload"]["content"] == "to all")
    # A message is one history append, whose script also publishes it: no bus publish of its own.
    assert sample("gateway_history_appends_total") == appends + 1
    assert sent == []
    sender.send("presence", {"roomId": "big", "status": "idle"})
    for c in audience:
        await c.expect("presence", match=lambda f: f["payload"]["status"] == "idle")
    assert sent == [a.settings.redis_prefix + "room:big"]


@pytest.mark.gen_test(timeout=20)
async def test_member_removal_crosses_instances(pair: Pair) -> None:
    a = pair[0]
    alice, bob = await alice_and_bob(pair, "r")
    await a.gateway.hub.control.remove("r", "bob")
    removed = await bob.expect("room_update", match=lambda f: f["payload"]["action"] == "removed")
    assert removed["payload"]["roomId"] == "r"
    await alice.expect("presence", match=presence_of("bob", "offline"))
    bob.send("message", {"roomId": "r", "content": "still here?"})
    await bob.expect_error("not_in_room")


def _reconnects() -> float:
    return sample("gateway_bus_reconnects_total")


@pytest.mark.gen_test(timeout=20)
async def test_killed_subscriber_connection_is_rebuilt(pair: Pair) -> None:
    a = pair[0]
    port = a.settings.redis_port
    alice, bob = await alice_and_bob(pair, "k")
    before = _reconnects()
    old = subscriber_id(port, "gw-a")
    assert old is not None
    assert kill_client(port, old) == 1

    await wait_for(lambda: subscriber_id(port, "gw-a") not in (None, old), what="a new subscriber")
    await wait_for(a.gateway.bus.ready, what="A ready again")
    assert _reconnects() >= before + 1
    assert numsub(port, a.settings.redis_prefix + "room:k") == 2  # resubscribed
    bob.send("message", {"roomId": "k", "content": "after kill"})
    got = await alice.expect("message")
    assert got["payload"]["content"] == "after kill"


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_joins_reply_first_and_never_repeat_the_snapshot(pair: Pair) -> None:
    """A joiner on one instance while another user joins the same room on the other, 18 times
    (within the rate limit's burst):
    the joiner's first frames of the room are its `joined` reply and its snapshot, and it never
    gets an `online` for a user its snapshot already lists (nor misses one for a user it does not)."""
    a, b = pair
    joiner, other = await a.client("joiner"), await b.client("other")
    for i in range(18):
        room = f"race-{i}"
        other.send("join", {"roomId": room})
        joiner.send("join", {"roomId": room})
        first = await joiner.recv()  # everything of earlier rooms was read up to their markers
        assert first is not None and first["type"] == "room_update" and first["payload"]["action"] == "joined", first
        state = await joiner.recv()
        assert state is not None and state["type"] == "presence_state", state
        listed = "other" in members(state)
        await other.expect("presence_state", match=in_room(room))
        other.send("message", {"roomId": room, "content": "marker"})  # everything before it has arrived
        onlines = 0
        while True:
            frame = await joiner.recv()
            assert frame is not None
            if frame["type"] == "message" and frame["payload"]["roomId"] == room:
                break
            if frame["type"] == "presence" and frame["payload"]["roomId"] == room:
                assert frame["payload"]["userId"] == "other" and frame["payload"]["status"] == "online", frame
                onlines += 1
        assert onlines == (0 if listed else 1), (i, listed, onlines)
    joiner.close()
    other.close()
    await wait_for(lambda: not a.gateway.hub.rooms and not b.gateway.hub.rooms, what="both left every room")
