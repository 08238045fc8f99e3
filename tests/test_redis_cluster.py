"""Two gateways on a real Redis Cluster (3 primaries, 3 replicas of redis-server, started by
scripts/redis-cluster.sh): messages, presence, dedupe and recovery across them; rooms' channels are
sharded channels spread over the primaries, one subscriber connection per primary; a primary
killed with SIGKILL fails over to its replica and delivery resumes without a restart
(docs/scaling.md)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import pytest
import redis
from redis.crc import key_slot
from tornado.ioloop import IOLoop

from services.bus.redis import RedisBus
from services.bus.redis_shards import ShardedSubscribers
from tests.conftest import private_cluster
from tests.helpers import RunningGateway, readyz, sample, wait_for
from tests.recovery_support import in_room, send_until_acked
from tests.redis_support import client, cluster_client, cluster_overrides, unique_prefix

Pair = tuple[RunningGateway, RunningGateway]


@pytest.fixture
def pair(io_loop: IOLoop, make_gateway: Callable[..., Awaitable[RunningGateway]], redis_cluster: str) -> Pair:
    prefix = unique_prefix()
    a = io_loop.run_sync(lambda: make_gateway(**cluster_overrides(redis_cluster, prefix, instance_id="cl-a")))
    b = io_loop.run_sync(lambda: make_gateway(**cluster_overrides(redis_cluster, prefix, instance_id="cl-b")))
    return a, b


# redis-py's sync cluster client is untyped: these wrap what the tests ask of it.


def primaries(seeds: str) -> list[tuple[str, int]]:
    nodes = cluster_client(seeds).get_primaries()  # type: ignore[no-untyped-call]
    return [(n.host, int(n.port)) for n in nodes]


def owner(seeds: str, key: str) -> tuple[str, int]:
    node = cluster_client(seeds).get_node_from_key(key)  # type: ignore[no-untyped-call]
    return node.host, int(node.port)


def command(node: tuple[str, int], *args: str | int) -> Any:
    return on_node(node).execute_command(*args)  # type: ignore[no-untyped-call]


def pubsub(node: tuple[str, int], *args: str) -> list[Any]:
    return cast("list[Any]", command(node, "PUBSUB", *args))


def on_node(node: tuple[str, int]) -> redis.Redis:
    return client(node[1], node[0])


@pytest.mark.gen_test(timeout=40)
async def test_messages_presence_dedupe_and_recovery_cross_instances(pair: Pair) -> None:
    a, b = pair
    assert isinstance(a.gateway.bus, RedisBus) and a.gateway.bus.sharded
    alice, bob = await a.client("alice"), await b.client("bob")
    await alice.join("deck")
    state = await bob.join("deck")
    assert state["payload"]["count"] == 2 and {m["userId"] for m in state["payload"]["members"]} == {"alice", "bob"}

    alice.send("message", {"roomId": "deck", "content": "one", "dedupeKey": "k1"}, request_id="m1")
    got = await bob.expect("message")
    first = await alice.expect("ack", match=lambda f: f.get("requestId") == "m1")
    assert got["payload"]["content"] == "one" and got["payload"]["offset"] == 1
    alice.send("message", {"roomId": "deck", "content": "one", "dedupeKey": "k1"}, request_id="m2")
    again = await alice.expect("ack", match=lambda f: f.get("requestId") == "m2")
    assert again["payload"]["id"] == first["payload"]["id"]  # the dedupe store is shared
    epoch = got["payload"]["epoch"]

    bob.close()  # bob drops; alice goes on talking on the other instance
    alice.send("message", {"roomId": "deck", "content": "two"})
    alice.send("message", {"roomId": "deck", "content": "three"})
    await alice.expect("message", match=lambda f: f["payload"]["content"] == "three")
    back = await b.client("bob")
    back.send("join", {"roomId": "deck", "since": {"offset": 1, "epoch": epoch}})
    joined = await back.expect("room_update")
    assert joined["payload"]["recovered"] is True and joined["payload"]["offset"] == 3
    replayed = [await back.expect("message") for _ in range(2)]
    assert [m["payload"]["content"] for m in replayed] == ["two", "three"]

    alice.send("leave", {"roomId": "deck"})
    gone = await back.expect("presence", match=lambda f: f["payload"]["userId"] == "alice")
    assert gone["payload"]["status"] == "offline"


@pytest.mark.gen_test(timeout=40)
async def test_rooms_are_sharded_channels_spread_over_the_primaries(pair: Pair, redis_cluster: str) -> None:
    a, b = pair
    prefix = a.settings.redis_prefix
    clients = [await a.client(f"u{i}") for i in range(3)]
    rooms = [f"spread-{i}" for i in range(30)]
    for i, room in enumerate(rooms):
        await clients[i % 3].join(room)

    per_node: dict[tuple[str, int], int] = {}
    channels: dict[tuple[str, int], int] = {}  # rooms, the control channel and A's own: what A subscribed there
    for node in primaries(redis_cluster):
        rooms_here = pubsub(node, "SHARDCHANNELS", f"{prefix}room:*")
        control_here = pubsub(node, "SHARDCHANNELS", f"{prefix}control:*")
        control_here += pubsub(node, "SHARDCHANNELS", f"{prefix}relay:{{{a.gateway.streams.route}}}")
        classic = pubsub(node, "CHANNELS", f"{prefix}*")
        assert classic == []  # nothing on classic pub/sub, which every node would carry
        per_node[node] = len(rooms_here)
        channels[node] = len(rooms_here) + len(control_here)
        names = [c["name"] for c in cast("list[dict[str, Any]]", on_node(node).client_list())]
        assert names.count("rtg-sub:cl-a") == 1 and names.count("rtg-sub:cl-b") == 1  # one per primary
    assert sum(per_node.values()) == len(rooms)
    assert sum(1 for n in per_node.values() if n) >= 2, per_node  # spread, not all on one node
    subs = a.gateway.bus.subscribers  # type: ignore[attr-defined]
    assert isinstance(subs, ShardedSubscribers)
    assert sorted(subs.channels_per_primary().values()) == sorted(channels.values())

    # A message in each room reaches a member on the other instance.
    watcher = await b.client("watcher")
    for room in rooms[:6]:
        await watcher.join(room)
    for i, room in enumerate(rooms[:6]):
        clients[i % 3].send("message", {"roomId": room, "content": f"to {room}"})
        got = await watcher.expect("message", match=in_room(room))
        assert got["payload"]["content"] == f"to {room}"


def move_slot(seeds: str, slot: int, to: tuple[str, int]) -> None:
    """What `redis-cli --cluster reshard` does for one slot: mark it importing and migrating, move its
    keys, then give it to the target on every primary."""
    nodes = {n: str(command(n, "CLUSTER", "MYID")) for n in primaries(seeds)}
    source = owner_of_slot(seeds, slot)
    if source == to:
        return
    command(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", nodes[source])
    command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", nodes[to])
    while keys := cast("list[str]", command(source, "CLUSTER", "GETKEYSINSLOT", slot, 100)):
        command(source, "MIGRATE", to[0], to[1], "", 0, 5000, "KEYS", *keys)
    for node in nodes:
        command(node, "CLUSTER", "SETSLOT", slot, "NODE", nodes[to])


def owner_of_slot(seeds: str, slot: int) -> tuple[str, int]:
    for start, end, primary, *_ in cast("list[list[Any]]", command(primaries(seeds)[0], "CLUSTER", "SLOTS")):
        if start <= slot <= end:
            return str(primary[0]), int(primary[1])
    raise AssertionError(f"slot {slot} has no owner")


@pytest.mark.gen_test(timeout=60)
async def test_a_room_whose_slot_moves_keeps_delivering_and_recovering(pair: Pair, redis_cluster: str) -> None:
    a, b = pair
    prefix = a.settings.redis_prefix
    room = "moving"
    slot = key_slot(f"{prefix}room:{{{room}}}".encode())
    alice, bob = await a.client("alice"), await b.client("bob")
    await alice.join(room)
    await bob.join(room)
    alice.send("message", {"roomId": room, "content": "before the move"})
    before = await bob.expect("message")
    source = owner_of_slot(redis_cluster, slot)
    target = next(n for n in primaries(redis_cluster) if n != source)

    reconnects = sample("gateway_bus_reconnects_total")
    move_slot(redis_cluster, slot, target)  # Redis tells both subscribers: sunsubscribe

    def both_resubscribed() -> bool:
        now = sample("gateway_bus_reconnects_total")
        return now >= reconnects + 2 and a.gateway.bus.ready() and b.gateway.bus.ready()

    await wait_for(both_resubscribed, timeout=20, what="both instances resubscribed where the slot lives now")
    assert owner_of_slot(redis_cluster, slot) == target
    assert int(pubsub(target, "SHARDNUMSUB", f"{prefix}room:{{{room}}}")[1]) == 2
    alice.send("message", {"roomId": room, "content": "after the move"})
    after = await bob.expect("message")
    # The history moved with the slot (MIGRATE): same epoch, the next offset.
    assert after["payload"]["epoch"] == before["payload"]["epoch"]
    assert after["payload"]["offset"] == before["payload"]["offset"] + 1
    carol = await b.client("carol")
    carol.send(
        "join", {"roomId": room, "since": {"offset": before["payload"]["offset"], "epoch": after["payload"]["epoch"]}}
    )
    joined = await carol.expect("room_update")
    assert joined["payload"]["recovered"] is True
    assert (await carol.expect("message"))["payload"]["content"] == "after the move"


@pytest.fixture
def own_cluster() -> Iterator[str]:
    """A cluster of this test's own: it kills one of its primaries."""
    with private_cluster("failover") as seeds:
        yield seeds


def _pid_of(node: tuple[str, int]) -> int:
    return int(cast("dict[str, Any]", on_node(node).info("server"))["process_id"])


def _replicated(node: tuple[str, int]) -> bool:
    """Every write of this primary has reached its replica."""
    info = cast("dict[str, Any]", on_node(node).info("replication"))
    replica = info.get("slave0")
    return isinstance(replica, dict) and int(replica["offset"]) == int(info["master_repl_offset"])


@pytest.mark.gen_test(timeout=120)
async def test_a_killed_primary_fails_over_and_delivery_resumes(
    own_cluster: str, make_gateway: Callable[..., Awaitable[RunningGateway]]
) -> None:
    """A failover that kept the data: messages sent meanwhile are refused (`unavailable`), never
    delivered to some; the one sent again after it is the room's next entry in the same epoch.
    (`own_cluster` first: it is set up before the gateways and torn down after them.)"""
    prefix = unique_prefix()
    a = await make_gateway(**cluster_overrides(own_cluster, prefix, instance_id="fo-a"))
    b = await make_gateway(**cluster_overrides(own_cluster, prefix, instance_id="fo-b"))
    alice, bob = await a.client("alice"), await b.client("bob")
    room = "failover"
    victim = owner(own_cluster, f"{prefix}room:{{{room}}}")
    await alice.join(room)
    await bob.join(room)
    alice.send("message", {"roomId": room, "content": "before"})
    before = await bob.expect("message")
    assert before["payload"]["content"] == "before"
    await wait_for(lambda: _replicated(victim), what="the replica has the history")
    refused = sample("gateway_unavailable_total")

    os.kill(_pid_of(victim), signal.SIGKILL)
    killed = time.monotonic()

    async def both(code: int) -> bool:
        return [(await readyz(g.http))[0] for g in (a, b)] == [code, code]

    await wait_for(lambda: both(503), timeout=10, what="readiness 503 while the shard is unreachable")
    ack = await send_until_acked(alice, room, "during the failover", "k-1")
    # docs/scaling.md: delivery resumes within 20 s of the primary's death (cluster-node-timeout 5 s).
    assert time.monotonic() - killed < 20.0
    assert sample("gateway_unavailable_total") > refused  # refused meanwhile, not lost
    got = await bob.expect("message", timeout=10, match=lambda f: f["payload"]["content"] == "during the failover")
    assert got["payload"]["id"] == ack["payload"]["id"]
    assert (got["payload"]["offset"], got["payload"]["epoch"]) == (
        before["payload"]["offset"] + 1,
        before["payload"]["epoch"],
    )  # the replica kept the history: no renewal
    await bob.none_before_pong("message", match=lambda f: f["payload"]["content"] == "during the failover")
    await wait_for(lambda: both(200), timeout=20, what="readiness 200 again")
    survivors = ",".join(s for s in own_cluster.split(",") if s != f"{victim[0]}:{victim[1]}")
    assert owner(survivors, f"{prefix}room:{{{room}}}") != victim  # its replica serves the slot now
