"""MemoryDedupe: an expiring map with a heap of expiry times, for one process."""

from __future__ import annotations

import heapq
import time


class MemoryDedupe:
    """Expiring map with a heap of expiry times, so sweeping costs only what has expired."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self._data: dict[str, tuple[float, str]] = {}
        self._expiry: list[tuple[float, str]] = []
        self._max = max_entries

    def _sweep(self, now: float) -> None:
        while self._expiry and (self._expiry[0][0] <= now or len(self._data) > self._max):
            expires, key = heapq.heappop(self._expiry)
            item = self._data.get(key)
            if item is not None and item[0] == expires:
                del self._data[key]

    def _live(self, key: str, now: float) -> str | None:
        item = self._data.get(key)
        if item is None or item[0] <= now:
            return None
        return item[1]

    def _set(self, key: str, value: str, expires: float) -> None:
        self._data[key] = (expires, value)
        heapq.heappush(self._expiry, (expires, key))

    async def reserve(self, key: str, value: str, ttl: float) -> str | None:
        now = time.monotonic()
        self._sweep(now)
        existing = self._live(key, now)
        if existing is not None:
            return existing
        self._set(key, value, now + ttl)
        return None

    async def put(self, key: str, value: str, ttl: float) -> None:
        now = time.monotonic()
        self._sweep(now)
        self._set(key, value, now + ttl)

    async def release(self, key: str) -> None:
        self._data.pop(key, None)

    async def close(self) -> None:
        self._data.clear()
        self._expiry.clear()
