"""MemoryDedupe: an expiring map with a heap of expiry times, for one process, bounded in bytes.

Every record costs its key, its value, RECORD_COST and its heap entry's HEAP_COST; past
DEDUPE_MEMORY_BYTES the records that expire soonest go first (all share one TTL, so: the
oldest). A dedupeKey forgotten that way lets a late retry through as a new message, which is
what happens after DEDUPE_TTL anyway (issue: every message of the clients carries a dedupeKey,
and a record was kept 24 h whatever its size).
"""

from __future__ import annotations

import heapq
import time

# Bytes around a record beyond its strings: its dict slot, tuple and float; and its heap entry (a record
# overwritten or released leaves its heap entry until it expires, so entries are counted on their own).
RECORD_COST = 150
HEAP_COST = 100


class MemoryDedupe:
    """Expiring map with a heap of expiry times, so sweeping costs only what has expired."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._data: dict[str, tuple[float, str]] = {}
        self._expiry: list[tuple[float, str]] = []
        self._max_bytes = max_bytes
        self.held = 0  # bytes of the records and of the heap's entries

    def _sweep(self, now: float) -> None:
        while self._expiry and (self._expiry[0][0] <= now or self.held > self._max_bytes):
            expires, key = heapq.heappop(self._expiry)
            self.held -= len(key) + HEAP_COST
            item = self._data.get(key)
            if item is not None and item[0] == expires:
                self._drop(key, item[1])

    def _live(self, key: str, now: float) -> str | None:
        item = self._data.get(key)
        if item is None or item[0] <= now:
            return None
        return item[1]

    def _set(self, key: str, value: str, expires: float) -> None:
        old = self._data.get(key)
        if old is not None:
            self.held -= len(old[1]) + RECORD_COST
        self._data[key] = (expires, value)
        heapq.heappush(self._expiry, (expires, key))
        self.held += len(value) + RECORD_COST + len(key) + HEAP_COST

    def _drop(self, key: str, value: str) -> None:
        del self._data[key]
        self.held -= len(value) + RECORD_COST

    async def reserve(self, key: str, value: str, ttl: float) -> str | None:
        now = time.monotonic()
        existing = self._live(key, now)
        if existing is not None:
            return existing
        self._set(key, value, now + ttl)
        self._sweep(now)
        return None

    async def put(self, key: str, value: str, ttl: float) -> None:
        now = time.monotonic()
        self._set(key, value, now + ttl)
        self._sweep(now)

    async def release(self, key: str) -> None:
        item = self._data.get(key)
        if item is not None:
            self._drop(key, item[1])

    async def close(self) -> None:
        self._data.clear()
        self._expiry.clear()
        self.held = 0
