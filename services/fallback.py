"""Degraded mode for the shared stores: while Redis is unreachable, presence and dedupe narrow to
this instance instead of refusing joins, presence changes and messages (DESIGN: "Redis outage:
local delivery keeps working"). The Redis stores reconcile what they missed once Redis is back."""

from __future__ import annotations

from services.dedupe import DedupeStore, MemoryDedupe
from services.errors import StoreError
from services.presence import ExpiredHandler, Member, MemoryPresence, PresenceStore


class FallbackDedupe:
    """The shared store; during an outage a process-local one, so a retry on the same instance is
    still recognised (a retry landing on another instance then may be delivered twice)."""

    def __init__(self, shared: DedupeStore, local: DedupeStore | None = None) -> None:
        self.shared = shared
        self.local = local or MemoryDedupe(max_entries=100_000)

    async def reserve(self, key: str, value: str, ttl: float) -> str | None:
        try:
            return await self.shared.reserve(key, value, ttl)
        except StoreError:
            return await self.local.reserve(key, value, ttl)

    async def get(self, key: str) -> str | None:
        try:
            return await self.shared.get(key)
        except StoreError:
            return await self.local.get(key)

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


class FallbackPresence:
    """The shared store, mirrored by a local one that answers while the shared store cannot: who
    is in a room and with which status, as far as this instance knows."""

    def __init__(self, shared: PresenceStore) -> None:
        self.shared = shared
        self.local = MemoryPresence()

    async def start(self, on_expired: ExpiredHandler, on_restored: ExpiredHandler | None = None) -> None:
        await self.shared.start(on_expired, on_restored)

    async def join(self, room: str, user: str, conn_id: str, now: float) -> bool:
        new_here = await self.local.join(room, user, conn_id, now)
        try:
            return await self.shared.join(room, user, conn_id, now)
        except StoreError:
            return new_here

    async def leave(self, room: str, user: str, conn_id: str) -> bool:
        gone_here = await self.local.leave(room, user, conn_id)
        try:
            return await self.shared.leave(room, user, conn_id)
        except StoreError:
            return gone_here

    async def set_status(self, room: str, user: str, status: str, now: float) -> None:
        await self.local.set_status(room, user, status, now)
        try:
            await self.shared.set_status(room, user, status, now)
        except StoreError:
            pass

    async def resync(self) -> None:
        try:
            await self.shared.resync()
        except StoreError:
            pass  # still failing: the periodic reconcile finishes the job later

    async def members(self, room: str) -> list[Member]:
        try:
            return await self.shared.members(room)
        except StoreError:
            return await self.local.members(room)

    async def close(self) -> None:
        await self.local.close()
        await self.shared.close()
