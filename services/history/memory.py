"""MemoryHistory: the history of one process. Its epoch is new at every start: a restarted
process has lost what it held, and says so."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque

from services.history import POSITION_TTL, Position, Replay, recovery_check, with_position

SWEEP_INTERVAL = 60.0  # seconds between sweeps of expired entries and forgotten rooms


class _Room:
    __slots__ = ("entries", "last", "offset")

    def __init__(self, size: int) -> None:
        self.offset = 0
        self.last = 0.0  # monotonic time of the last append
        self.entries: deque[tuple[float, bytes]] = deque(maxlen=size)  # (appended at, frame)


class MemoryHistory:
    publishes = False

    def __init__(self, size: int, ttl: float) -> None:
        self._size = size
        self._ttl = ttl
        self._epoch = secrets.token_hex(6)
        self._rooms: dict[str, _Room] = {}
        self._sweeper: asyncio.Future[None] | None = None

    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep_loop())

    async def heal(self) -> None:
        pass  # nothing is ever lost in one process

    async def append(self, room: str, frame: bytes) -> tuple[Position, bytes]:
        state = self._rooms.get(room)
        if state is None:
            state = self._rooms[room] = _Room(self._size)
        state.offset += 1
        state.last = now = time.monotonic()
        full = with_position(frame, state.offset, self._epoch)
        state.entries.append((now, full))
        self._expire(state, now)
        return Position(state.offset, self._epoch), full

    async def position(self, room: str) -> Position:
        state = self._rooms.get(room)
        return Position(state.offset if state else 0, self._epoch)

    async def recover(self, room: str, since: Position, limit: int) -> Replay:
        current = await self.position(room)
        verdict = recovery_check(since, current)
        if verdict is not None:
            return Replay(current, [] if verdict else None)
        state = self._rooms[room]
        self._expire(state, time.monotonic())
        wanted = current.offset - since.offset
        if wanted > limit or wanted > len(state.entries):
            return Replay(current, None)
        return Replay(current, [frame for _, frame in list(state.entries)[-wanted:]])

    async def latest(self, room: str, limit: int) -> tuple[Position, list[bytes]]:
        current = await self.position(room)
        state = self._rooms.get(room)
        if state is None:
            return current, []
        self._expire(state, time.monotonic())
        held = list(state.entries)
        return current, [frame for _, frame in held[max(0, len(held) - limit) :]]

    def sweep(self) -> None:
        """Drop expired entries, and rooms quiet for POSITION_TTL (bounds memory over days)."""
        now = time.monotonic()
        for room, state in list(self._rooms.items()):
            if now - state.last > max(POSITION_TTL, self._ttl):
                del self._rooms[room]
            else:
                self._expire(state, now)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self.sweep()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _expire(self, state: _Room, now: float) -> None:
        entries = state.entries
        while entries and now - entries[0][0] > self._ttl:
            entries.popleft()
