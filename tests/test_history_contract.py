"""One contract for the room history, run against the memory one and the Redis one (real
redis-server): offsets, positions, recovery, latest entries, bounds, a new epoch when (and only
when) the history was lost, and one entry per message id."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
from tornado.ioloop import IOLoop

from services import frames
from services.errors import StoreError
from services.history import History, Position, with_position
from services.history.memory import MemoryHistory
from services.history.redis import RedisHistory
from services.redis_common import make_client
from tests.helpers import test_settings as settings_for
from tests.redis_support import backend_overrides, client, cluster_client, shared_redis_port, unique_prefix

SIZE = 4


class Histories:
    """Makes histories of one kind; `fresh()` is the same deployment after losing its history."""

    def __init__(self, kind: str, redis_client: Any, seeds: str = "") -> None:
        self.kind = kind
        self.seeds = seeds
        self.redis_client = redis_client
        self.prefix = unique_prefix()

    def make(self, size: int = SIZE, bus_ready: bool = True, room_bytes: int = 1 << 20) -> History:
        if self.kind == "memory":
            return MemoryHistory(size, ttl=600.0, room_bytes=room_bytes, memory_bytes=1 << 28)
        return RedisHistory(
            self.redis_client, self.prefix, "hist-test", size, 600.0, lambda: bus_ready, room_bytes=room_bytes
        )

    def lose_everything(self) -> History:
        if self.kind != "memory":
            keys = cluster_client(self.seeds) if self.kind == "cluster" else client(shared_redis_port())
            for key in keys.scan_iter(f"{self.prefix}*"):
                keys.delete(key)
            return self.make()
        return self.make()  # a new process


@pytest.fixture(params=["memory", "redis", "cluster"])
def histories(request: pytest.FixtureRequest, io_loop: IOLoop) -> Iterator[Histories]:
    if request.param == "memory":
        yield Histories("memory", None)
        return
    yield from _redis_histories(io_loop, request, request.param)


@pytest.fixture(params=["redis", "cluster"])
def redis_histories(request: pytest.FixtureRequest, io_loop: IOLoop) -> Iterator[Histories]:
    yield from _redis_histories(io_loop, request, request.param)


def _redis_histories(io_loop: IOLoop, request: pytest.FixtureRequest, kind: str) -> Iterator[Histories]:
    redis_client = make_client(settings_for(**backend_overrides(kind, request)), "hist-test")
    seeds = request.getfixturevalue("redis_cluster") if kind == "cluster" else ""
    yield Histories(kind, redis_client, seeds)
    io_loop.run_sync(redis_client.aclose)


def entry(text: str) -> bytes:
    return frames.encode("message", {"roomId": "r", "content": text})


def contents(entries: list[bytes] | None) -> list[str]:
    import orjson

    return [orjson.loads(e)["payload"]["content"] for e in entries or []]


@pytest.mark.gen_test
async def test_offsets_start_at_one_and_frames_carry_them(histories: Histories) -> None:
    history = histories.make()
    first = await history.position("r")
    assert first.offset == 0 and first.epoch
    placed = [await history.append("r", entry(t)) for t in ("a", "b", "c")]
    assert [p.offset for p, _ in placed] == [1, 2, 3]
    assert {p.epoch for p, _ in placed} == {first.epoch}
    assert placed[1][1] == with_position(entry("b"), 2, first.epoch)
    assert await history.position("r") == Position(3, first.epoch)
    assert (await history.position("other")).offset == 0


@pytest.mark.gen_test
async def test_recover_replays_only_when_everything_after_since_is_held(histories: Histories) -> None:
    history = histories.make()
    for t in "abcdef":
        await history.append("r", entry(t))
    epoch = (await history.position("r")).epoch
    assert contents((await history.recover("r", Position(3, epoch), 100)).entries) == ["d", "e", "f"]
    assert (await history.recover("r", Position(6, epoch), 100)).entries == []  # nothing missed
    assert contents((await history.recover("r", Position(2, epoch), 100)).entries) == ["c", "d", "e", "f"]
    assert (await history.recover("r", Position(1, epoch), 100)).entries is None  # 2 is gone (SIZE 4)
    assert (await history.recover("r", Position(3, epoch), 2)).entries is None  # over the limit
    assert (await history.recover("r", Position(7, epoch), 100)).entries is None  # ahead
    assert (await history.recover("r", Position(3, "other"), 100)).entries is None
    assert (await history.recover("r", Position(3, epoch), 100)).position == Position(6, epoch)


@pytest.mark.gen_test
async def test_latest_is_oldest_first_and_bounded(histories: Histories) -> None:
    history = histories.make()
    assert (await history.latest("r", 10))[1] == []
    for t in "abcdef":
        await history.append("r", entry(t))
    position, entries = await history.latest("r", 3)
    assert position.offset == 6 and contents(entries) == ["d", "e", "f"]
    assert contents((await history.latest("r", 50))[1]) == ["c", "d", "e", "f"]


@pytest.mark.gen_test
async def test_a_room_keeps_at_most_its_bytes_and_reads_stay_within_theirs(histories: Histories) -> None:
    """Entries of about 1 KB: a room that keeps 2.5 KB holds the newest two; an entry bigger than
    that alone empties the room (what is kept ends at the room's offset); a replay over its
    bytes is refused, a latest read keeps the newest that fit."""
    history = histories.make(size=10, room_bytes=2500)
    for t in "abcd":
        await history.append("r", entry(t * 1000))
    epoch = (await history.position("r")).epoch
    assert [c[0] for c in contents((await history.latest("r", 10))[1])] == ["c", "d"]
    assert (await history.recover("r", Position(1, epoch), 10)).entries is None
    assert len((await history.recover("r", Position(2, epoch), 10)).entries or []) == 2
    assert (await history.recover("r", Position(2, epoch), 10, max_bytes=1500)).entries is None
    assert [c[0] for c in contents((await history.latest("r", 10, max_bytes=1500))[1])] == ["d"]
    await history.append("r", entry("e" * 3000))
    assert (await history.latest("r", 10))[1] == []
    await history.append("r", entry("f"))
    assert contents((await history.recover("r", Position(5, epoch), 10)).entries) == ["f"]
    assert (await history.recover("r", Position(4, epoch), 10)).entries is None


@pytest.mark.gen_test
async def test_a_lost_history_has_a_new_epoch(histories: Histories) -> None:
    history = histories.make()
    await history.append("r", entry("a"))
    before = await history.position("r")
    after = histories.lose_everything()
    now = await after.position("r")
    assert now.epoch != before.epoch and now.offset == 0
    assert (await after.recover("r", before, 100)).entries is None


@pytest.mark.gen_test
async def test_redis_keeps_the_epoch_when_an_entry_could_not_be_stored(redis_histories: Histories) -> None:
    """The refused entry reached nobody (the sender got `unavailable`): the history has no hole,
    so nothing is renewed, now or later."""
    history = redis_histories.make()
    await history.append("r", entry("a"))
    before = await history.position("r")
    down = redis_histories.make(bus_ready=False)  # the same store while its bus is down
    with pytest.raises(StoreError):
        await down.append("r", entry("b"))
    position, _ = await history.append("r", entry("c"))
    assert position == Position(before.offset + 1, before.epoch)
    assert contents((await history.recover("r", before, 10)).entries) == ["c"]


@pytest.mark.gen_test
async def test_redis_stores_a_message_id_once(redis_histories: Histories) -> None:
    """A retry of an append whose answer was lost (cut by the timeout, run by Redis later) finds
    the entry instead of storing it twice."""
    history = redis_histories.make()
    first, frame = await history.append("r", entry("a"), message_id="m-1")
    again, same = await history.append("r", entry("a"), message_id="m-1")
    assert (again, same) == (first, frame)
    other, _ = await history.append("r", entry("b"), message_id="m-2")
    assert other.offset == first.offset + 1
    assert contents((await history.recover("r", Position(0, first.epoch), 10)).entries) == ["a", "b"]


@pytest.mark.gen_test
async def test_redis_forgets_the_ids_of_trimmed_entries(redis_histories: Histories) -> None:
    """The id index is bounded by the stream: an id trimmed away is stored again."""
    history = redis_histories.make(size=2)
    first, _ = await history.append("r", entry("a"), message_id="m-1")
    await history.append("r", entry("b"), message_id="m-2")
    await history.append("r", entry("c"), message_id="m-3")
    again, _ = await history.append("r", entry("a"), message_id="m-1")
    assert again.offset == first.offset + 3
    keys = client(shared_redis_port()) if redis_histories.kind == "redis" else cluster_client(redis_histories.seeds)
    index = f"{redis_histories.prefix}history:{{r}}:ids"
    ids = cast("list[bytes | str]", keys.hkeys(index))
    assert sorted(i if isinstance(i, str) else i.decode() for i in ids) == ["m-1", "m-3"]
    # An index entry that names another message's offset (left by whatever emptied the stream
    # without it) is not believed: the message is stored, not taken for that one.
    keys.hset(index, "m-9", str(again.offset))
    stored, _ = await history.append("r", entry("d"), message_id="m-9")
    assert stored.offset == again.offset + 1


@pytest.mark.gen_test
async def test_redis_renews_the_epoch_of_a_history_behind_what_was_delivered(redis_histories: Histories) -> None:
    """A failover to a replica without the last entries: the history is behind the position an
    instance already delivered, and its next offsets would repeat ones members saw."""
    history = redis_histories.make()
    position, _ = await history.append("r", entry("a"))
    seen = Position(position.offset + 2, position.epoch)  # entries the replica never got
    renewed, _ = await history.append("r", entry("b"), known=seen)
    assert renewed.epoch != position.epoch and renewed.offset == 1
    still, _ = await history.append("r", entry("c"), known=renewed)
    assert still == Position(2, renewed.epoch)
    assert (await history.recover("r", seen, 10, known=seen)).entries is None  # another epoch now
    assert (await history.position("r")).epoch == renewed.epoch  # an old `known` renews nothing
