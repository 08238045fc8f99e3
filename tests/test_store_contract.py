"""One contract for the presence and dedupe stores, run against the memory ones and the Redis
ones (real redis-server), plus what only the Redis presence store has to do: clean up after a
previous life of the same instance id."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from tornado.ioloop import IOLoop

from services.dedupe import DedupeStore
from services.dedupe.memory import MemoryDedupe
from services.dedupe.redis import RedisDedupe
from services.presence import Member, PresenceStore
from services.presence.memory import MemoryPresence
from services.presence.redis import RedisPresence
from services.redis_common import make_client
from tests.helpers import test_settings as settings_for
from tests.helpers import wait_for
from tests.redis_support import backend_overrides, unique_prefix


@pytest.fixture(params=["memory", "redis", "cluster"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def redis_client(kind: str, io_loop: IOLoop, request: pytest.FixtureRequest) -> Iterator[Any]:
    if kind == "memory":
        yield None
        return
    settings = settings_for(**backend_overrides(kind, request))
    client = make_client(settings, "store-test")
    yield client
    io_loop.run_sync(client.aclose)


Expired = list[tuple[str, str]]
PresenceFactory = Callable[[str], Awaitable[tuple[PresenceStore, Expired]]]


@pytest.fixture
def make_presence(kind: str, redis_client: Any, io_loop: IOLoop) -> Iterator[PresenceFactory]:
    prefix = unique_prefix()
    started: list[PresenceStore] = []

    async def factory(instance_id: str) -> tuple[PresenceStore, Expired]:
        expired: Expired = []
        store: PresenceStore
        if kind == "memory":
            store = MemoryPresence()
        else:
            store = RedisPresence(redis_client, prefix, instance_id, ttl=30.0)
        await store.start(lambda room, user: expired.append((room, user)))
        started.append(store)
        return store, expired

    yield factory
    for store in started:
        io_loop.run_sync(store.close)


async def members(store: PresenceStore, room: str) -> list[Member]:
    return (await store.page(room, None, 1000)).members


@pytest.mark.gen_test(timeout=15)
async def test_presence_counts_connections_per_user(make_presence: PresenceFactory) -> None:
    p, _ = await make_presence("i1")
    assert (await p.join("r", "ann", "c1", 100.0))[0] is True
    assert (await p.join("r", "ann", "c2", 101.0))[0] is False  # another connection: not new
    assert (await p.join("r", "ann", "c2", 102.0))[0] is False  # the same again: idempotent
    assert (await p.join("r", "ben", "c3", 103.0))[0] is True
    assert (await p.join("other", "ann", "c1", 104.0))[0] is True  # rooms are separate
    assert [(m.user_id, m.status, m.since) for m in await members(p, "r")] == [
        ("ann", "online", 100.0),
        ("ben", "online", 103.0),
    ]
    assert (await p.leave("r", "ann", "c1"))[0] is False  # c2 still in
    assert (await p.leave("r", "ann", "c1"))[0] is False  # unknown connection: nothing happens
    assert (await p.leave("r", "ann", "c2"))[0] is True
    assert [m.user_id for m in await members(p, "r")] == ["ben"]
    assert [m.user_id for m in await members(p, "other")] == ["ann"]
    assert await members(p, "nobody-here") == []


@pytest.mark.gen_test(timeout=15)
async def test_presence_pages_are_sorted_counted_and_continue_after_a_user(make_presence: PresenceFactory) -> None:
    p, _ = await make_presence("i1")
    users = [f"u{i:03d}" for i in range(25)]
    for i, user in enumerate(reversed(users)):
        assert await p.join("big", user, f"c-{user}", 100.0) == (True, i + 1)
    assert await p.join("big", "u000", "c-extra", 101.0) == (False, 25)  # a second connection
    first = await p.page("big", None, 10)
    assert (first.count, [m.user_id for m in first.members], first.more) == (25, users[:10], True)
    after = await p.page("big", first.members[-1].user_id, 10)
    assert [m.user_id for m in after.members] == users[10:20]
    last = await p.page("big", users[19], 10)
    assert ([m.user_id for m in last.members], last.more) == (users[20:], False)
    assert (await p.page("big", "u0105", 10)).members[0].user_id == "u011"  # after any string
    assert await p.counts(["big", "nobody", "big"]) == [25, 0, 25]
    assert await p.leave("big", "u003", "c-u003") == (True, 24)
    assert await p.leave("big", "u000", "c-u000") == (False, 24)  # c-extra keeps u000 in


@pytest.mark.gen_test(timeout=15)
async def test_the_first_page_follows_every_change(kind: str, make_presence: PresenceFactory) -> None:
    """The memory store hands out one first page until the room changes (joiners share its
    encoding); every change must show in the next one."""
    p, _ = await make_presence("i1")
    await p.join("r", "ann", "c1", 100.0)
    await p.join("r", "ben", "c2", 100.0)
    first = await p.page("r", None, 10)
    if kind == "memory":
        assert await p.page("r", None, 10) is first
    assert [m.user_id for m in (await p.page("r", None, 1)).members] == ["ann"]  # another size: not that page
    await p.set_status("r", "ben", "idle", 101.0)
    assert [(m.user_id, m.status) for m in (await p.page("r", None, 10)).members] == [
        ("ann", "online"),
        ("ben", "idle"),
    ]
    await p.join("r", "abe", "c3", 102.0)
    assert [m.user_id for m in (await p.page("r", None, 10)).members] == ["abe", "ann", "ben"]
    await p.join("r", "abe", "c4", 103.0)  # a second connection changes nothing listed
    await p.leave("r", "ann", "c1")
    page = await p.page("r", None, 10)
    assert ([m.user_id for m in page.members], page.count) == (["abe", "ben"], 2)


@pytest.mark.gen_test(timeout=15)
async def test_presence_status_is_kept_per_user(make_presence: PresenceFactory) -> None:
    p, _ = await make_presence("i1")
    await p.join("r", "ann", "c1", 100.0)
    await p.set_status("r", "ann", "typing", 105.0)
    await p.set_status("r", "ann", "typing", 106.0)  # unchanged status keeps its `since`
    await p.set_status("r", "ghost", "idle", 107.0)  # not a member: not created
    assert [(m.user_id, m.status, m.since) for m in await members(p, "r")] == [("ann", "typing", 105.0)]


@pytest.mark.gen_test(timeout=15)
@pytest.mark.parametrize("kind", ["redis", "cluster"])  # the memory store is one process's own
async def test_presence_is_shared_between_instances(kind: str, make_presence: PresenceFactory) -> None:
    a, _ = await make_presence("ia")
    b, _ = await make_presence("ib")
    assert (await a.join("r", "ann", "ca", 100.0))[0] is True
    assert (await b.join("r", "ann", "cb", 101.0))[0] is False  # ann is in through instance a
    await b.set_status("r", "ann", "idle", 102.0)
    assert [(m.user_id, m.status) for m in await members(a, "r")] == [("ann", "idle")]
    assert (await a.leave("r", "ann", "ca"))[0] is False
    assert (await b.leave("r", "ann", "cb"))[0] is True


@pytest.mark.gen_test(timeout=15)
@pytest.mark.parametrize("kind", ["redis", "cluster"])  # nothing outlives a memory store
async def test_restart_under_the_same_instance_id_expires_its_old_connections(
    kind: str, make_presence: PresenceFactory
) -> None:
    old, _ = await make_presence("pod-1")
    await old.join("r", "ghost", "c-old", 100.0)
    assert isinstance(old, RedisPresence)
    for task in old._tasks:  # it crashes: no leave, no close
        task.cancel()
    new, expired = await make_presence("pod-1")  # back within PRESENCE_TTL, heartbeat still there
    await wait_for(lambda: expired == [("r", "ghost")], what="the old connection announced offline")
    assert await members(new, "r") == []


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("kind", ["redis", "cluster"])  # a memory store dies with its process
async def test_a_dead_instances_connections_are_swept_room_by_room(kind: str, redis_client: Any) -> None:
    prefix = unique_prefix()
    dead = RedisPresence(redis_client, prefix, "dead", ttl=0.6)
    await dead.start(lambda room, user: None)
    await dead.join("r1", "ann", "c1", 1.0)
    await dead.join("r2", "bob", "c2", 1.0)
    await dead.join("r2", "ann", "c3", 1.0)
    for task in dead._tasks:  # it crashes: its heartbeat lapses after 0.6 s
        task.cancel()
    expired: Expired = []
    live = RedisPresence(redis_client, prefix, "live", ttl=0.6)
    await live.start(lambda room, user: expired.append((room, user)))
    try:
        await live.join("r2", "cat", "c4", 2.0)
        want = [("r1", "ann"), ("r2", "ann"), ("r2", "bob")]
        await wait_for(lambda: sorted(expired) == want, timeout=10, what="the dead instance's users offline")
        assert [m.user_id for m in await members(live, "r2")] == ["cat"]
        assert await live.counts(["r1", "r2"]) == [0, 1]
    finally:
        await live.close()


@pytest.fixture
def dedupe(kind: str, redis_client: Any) -> DedupeStore:
    return MemoryDedupe() if kind == "memory" else RedisDedupe(redis_client, unique_prefix())


@pytest.mark.gen_test(timeout=15)
async def test_dedupe_reserve_is_first_wins(dedupe: DedupeStore) -> None:
    assert await dedupe.reserve("dk:sam:k", "pending", 30) is None
    assert await dedupe.reserve("dk:sam:k", "pending", 30) == "pending"
    await dedupe.put("dk:sam:k", "id-1 2026-01-01T00:00:00.000Z", 30)
    assert await dedupe.reserve("dk:sam:k", "pending", 30) == "id-1 2026-01-01T00:00:00.000Z"
    await dedupe.release("dk:sam:k")
    assert await dedupe.reserve("dk:sam:k", "pending", 30) is None  # free again after release


@pytest.mark.gen_test(timeout=15)
async def test_dedupe_entries_expire(dedupe: DedupeStore) -> None:
    await dedupe.put("id:m1", "1", 0.2)
    assert await dedupe.reserve("id:m1", "2", 30) == "1"  # still there: reserve answers its value
    await wait_for(_reserved_anew(dedupe, "id:m1", "2"), timeout=3, what="the entry to expire")
    assert await dedupe.reserve("id:m1", "3", 30) == "2"


def _reserved_anew(store: DedupeStore, key: str, value: str) -> Callable[[], Awaitable[bool]]:
    """True once `key` had expired: the reserve then stores `value` and answers None."""

    async def check() -> bool:
        return await store.reserve(key, value, 30) is None

    return check


@pytest.mark.gen_test(timeout=15)
async def test_room_ids_cannot_reach_other_rooms_or_control_keys(make_presence: PresenceFactory) -> None:
    p, _ = await make_presence("iz")
    await p.join("secret", "ann", "c1", 100.0)
    for room in ("secret:n", "count:secret", "room:secret", "sweep", "instances", "alive:iz", "instance:iz"):
        assert (await p.join(room, "eve", f"c-{room}", 101.0))[0] is True, room
        assert [m.user_id for m in await members(p, room)] == ["eve"], room
    assert [m.user_id for m in await members(p, "secret")] == ["ann"]
    assert (await p.leave("secret", "ann", "c1"))[0] is True
