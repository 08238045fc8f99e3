"""MemoryHistory: the history of one process, bounded in bytes.

- per room: HISTORY_SIZE entries and HISTORY_ROOM_BYTES of them, the oldest dropped first;
- per process: HISTORY_MEMORY_BYTES for every room's entries and kept positions together (each
  counted at its frame's length plus an estimate of the Python objects around it). Over it, the
  least recently used rooms (written to, or read by a recovery or a `history`) lose their entries
  first (a recovery that needed them answers `recovered: false`), then, if positions alone fill it,
  their positions too;
- entries expire HISTORY_TTL after they were appended, positions POSITION_TTL after the room's
  last entry.

A room's epoch is chosen when its position is created, so a room whose position was dropped
(evicted or expired) starts again under a new epoch: a client holding the old one is told
`recovered: false`, never replayed a different room's offsets. The epoch of a room with no
position yet changes each time a position is dropped (the room may be one of them), and at
every start: a restarted process has lost what it held, and says so (issue: one user kept 24 h of
positions for 133 new rooms a second, and 1000 x 63 KB per room for ten minutes).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict, deque

from services.history import POSITION_TTL, Position, Replay, recovery_check, with_position
from services.metrics import METRICS

SWEEP_INTERVAL = 60.0  # seconds between sweeps of expired entries and forgotten rooms
# Estimated bytes of Python objects beyond a frame's own: an entry's tuple, float and bytes header;
# a room's slots, its dict entries and its id; a room's deque once it has entries.
ENTRY_COST = 120
ROOM_COST = 300
DEQUE_COST = 640


class _Room:
    __slots__ = ("bytes", "entries", "epoch", "last", "offset")

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.offset = 0
        self.last = 0.0  # monotonic time of the last append
        self.bytes = 0  # what `entries` costs, in bytes (ENTRY_COST each included)
        self.entries: deque[tuple[float, bytes]] | None = None  # (appended at, frame); made when needed


class MemoryHistory:
    publishes = False

    def __init__(self, size: int, ttl: float, room_bytes: int, memory_bytes: int) -> None:
        self._size = size
        self._ttl = ttl
        self._room_bytes = room_bytes
        self._memory_bytes = memory_bytes
        self._base = secrets.token_hex(6)
        self._generation = 0  # positions dropped so far: part of the epoch of rooms created since
        self._rooms: OrderedDict[str, _Room] = OrderedDict()  # least recently used first
        self._filled: OrderedDict[str, _Room] = OrderedDict()  # the rooms with entries, in that order
        self.held = 0  # bytes: entries and positions
        self._sweeper: asyncio.Future[None] | None = None
        METRICS.history_bytes.set_function(lambda: self.held)

    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep_loop())

    def _epoch(self) -> str:
        return self._base if not self._generation else f"{self._base}.{self._generation}"

    async def append(
        self, room: str, frame: bytes, message_id: str = "", known: Position | None = None
    ) -> tuple[Position, bytes]:
        state = self._rooms.get(room)
        if state is None:
            state = self._rooms[room] = _Room(self._epoch())
            self.held += ROOM_COST
        else:
            self._rooms.move_to_end(room)
        state.offset += 1
        state.last = now = time.monotonic()
        full = with_position(frame, state.offset, state.epoch)
        cost = len(full) + ENTRY_COST
        if cost > self._room_bytes:
            # Kept entries must end at the room's offset: what came before cannot be replayed past it.
            self._clear(room, state)
        else:
            if state.entries is None:
                state.entries = deque()
                self.held += DEQUE_COST
            state.entries.append((now, full))
            state.bytes += cost
            self.held += cost
            self._filled[room] = state
            self._filled.move_to_end(room)
            self._trim(room, state, now)
        self._evict()
        return Position(state.offset, state.epoch), full

    async def position(self, room: str, known: Position | None = None) -> Position:
        state = self._rooms.get(room)
        return Position(state.offset, state.epoch) if state is not None else Position(0, self._epoch())

    async def recover(
        self, room: str, since: Position, limit: int, max_bytes: int | None = None, known: Position | None = None
    ) -> Replay:
        current = await self.position(room)
        verdict = recovery_check(since, current)
        if verdict is not None:
            return Replay(current, [] if verdict else None)
        held = self._held_entries(room)
        wanted = current.offset - since.offset
        if wanted > limit or wanted > len(held):
            return Replay(current, None)
        frames = held[-wanted:]
        if max_bytes is not None and sum(map(len, frames)) > max_bytes:
            return Replay(current, None)
        return Replay(current, frames)

    async def latest(self, room: str, limit: int, max_bytes: int | None = None) -> tuple[Position, list[bytes]]:
        current = await self.position(room)
        held = self._held_entries(room)[-limit:] if limit > 0 else []
        if max_bytes is not None:
            held = newest_within(held, max_bytes)
        return current, held

    def _held_entries(self, room: str) -> list[bytes]:
        state = self._rooms.get(room)
        if state is None or not state.entries:
            return []
        self._rooms.move_to_end(room)  # read: used as much as written
        self._filled.move_to_end(room)
        self._trim(room, state, time.monotonic())
        return [frame for _, frame in state.entries or ()]

    def sweep(self) -> None:
        """Drop expired entries, and rooms quiet for POSITION_TTL (bounds memory over days)."""
        now = time.monotonic()
        for room, state in list(self._rooms.items()):
            if now - state.last > max(POSITION_TTL, self._ttl):
                self._drop_room(room, state)
            else:
                self._trim(room, state, now)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self.sweep()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    # -- the bounds --------------------------------------------------------------------------

    def _trim(self, room: str, state: _Room, now: float) -> None:
        """The room's expired entries, and its oldest past HISTORY_SIZE or HISTORY_ROOM_BYTES."""
        entries = state.entries
        if entries is None:
            return
        freed = 0
        while entries and (
            now - entries[0][0] > self._ttl or len(entries) > self._size or state.bytes - freed > self._room_bytes
        ):
            freed += len(entries.popleft()[1]) + ENTRY_COST
        if freed:
            state.bytes -= freed
            self.held -= freed
        if not entries:
            self._clear(room, state)

    def _clear(self, room: str, state: _Room) -> None:
        """Drop every entry of the room (its position stays)."""
        if state.entries is None:
            return
        self.held -= state.bytes + DEQUE_COST
        state.bytes = 0
        state.entries = None
        self._filled.pop(room, None)

    def _evict(self) -> None:
        """Over HISTORY_MEMORY_BYTES: the least recently used rooms' entries go first, then (only
        positions left) their positions."""
        while self.held > self._memory_bytes and self._filled:
            room, state = next(iter(self._filled.items()))
            self._clear(room, state)
            METRICS.history_evictions.labels("entries").inc()
        while self.held > self._memory_bytes and self._rooms:
            room, state = next(iter(self._rooms.items()))
            self._drop_room(room, state)
            METRICS.history_evictions.labels("position").inc()
            METRICS.epoch_renewals.labels("evicted").inc()

    def _drop_room(self, room: str, state: _Room) -> None:
        self._clear(room, state)
        del self._rooms[room]
        self.held -= ROOM_COST
        self._generation += 1


def newest_within(frames: list[bytes], max_bytes: int) -> list[bytes]:
    """The newest of `frames` (oldest first) whose lengths add up to at most `max_bytes`."""
    total = 0
    start = len(frames)
    while start > 0 and total + len(frames[start - 1]) <= max_bytes:
        start -= 1
        total += len(frames[start])
    return frames[start:]
