"""FallbackDedupe: the shared store, narrowed to this instance while Redis is unreachable, so
messages are not refused during an outage (README: "Scaling out")."""

from __future__ import annotations

from services.dedupe import DedupeStore
from services.dedupe.memory import MemoryDedupe
from services.errors import StoreError


class FallbackDedupe:
    """The shared store; during an outage a process-local one, so a retry on the same instance is
    still recognised (a retry landing on another instance then may be delivered twice)."""

    def __init__(self, shared: DedupeStore, local: DedupeStore | None = None) -> None:
        self.shared = shared
        self.local = local or MemoryDedupe(max_bytes=16 * 1024 * 1024)  # an outage's worth, not a day's

    async def reserve(self, key: str, value: str, ttl: float) -> str | None:
        try:
            return await self.shared.reserve(key, value, ttl)
        except StoreError:
            return await self.local.reserve(key, value, ttl)

    async def put(self, key: str, value: str, ttl: float) -> None:
        try:
            await self.shared.put(key, value, ttl)
        except StoreError:
            await self.local.put(key, value, ttl)

    async def release(self, key: str) -> None:
        await self.local.release(key)
        try:
            await self.shared.release(key)
        except StoreError:
            pass

    async def close(self) -> None:
        await self.local.close()
        await self.shared.close()
