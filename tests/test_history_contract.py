"""One contract for the room history, run against the memory one and the Redis one (real
redis-server): offsets, positions, recovery, latest entries, bounds, and a new epoch when the
history was lost."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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
async def test_redis_renews_the_epoch_of_a_room_whose_entry_was_not_stored(redis_histories: Histories) -> None:
    histories = redis_histories
    history = histories.make()
    await history.append("r", entry("a"))
    before = await history.position("r")
    down = histories.make(bus_ready=False)  # the same store while its bus is down
    with pytest.raises(StoreError):
        await down.append("r", entry("b"))
    assert await history.position("r") == before  # others do not know yet
    await down.heal()
    await down.close()  # stops its background renewal
    renewed = await history.position("r")
    assert renewed.epoch != before.epoch and renewed.offset == 0
