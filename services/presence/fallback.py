"""FallbackPresence: the shared store, mirrored by a local one that answers while Redis is
unreachable, so joins and presence are not refused during an outage (README: "Scaling out"). The
Redis store reconciles what it missed once Redis is back."""

from __future__ import annotations

from services.errors import StoreError
from services.presence import ExpiredHandler, Page, PresenceStore
from services.presence.memory import MemoryPresence


class FallbackPresence:
    """The shared store, mirrored by a local one that answers while the shared store cannot: who
    is in a room and with which status, as far as this instance knows."""

    def __init__(self, shared: PresenceStore) -> None:
        self.shared = shared
        self.local = MemoryPresence()

    async def start(self, on_expired: ExpiredHandler, on_restored: ExpiredHandler | None = None) -> None:
        await self.shared.start(on_expired, on_restored)

    async def join(self, room: str, user: str, conn_id: str, now: float) -> tuple[bool, int]:
        here = await self.local.join(room, user, conn_id, now)
        try:
            return await self.shared.join(room, user, conn_id, now)
        except StoreError:
            return here

    async def leave(self, room: str, user: str, conn_id: str) -> tuple[bool, int]:
        here = await self.local.leave(room, user, conn_id)
        try:
            return await self.shared.leave(room, user, conn_id)
        except StoreError:
            return here

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

    async def page(self, room: str, after: str | None, limit: int) -> Page:
        try:
            return await self.shared.page(room, after, limit)
        except StoreError:
            return await self.local.page(room, after, limit)

    async def counts(self, rooms: list[str]) -> list[int]:
        try:
            return await self.shared.counts(rooms)
        except StoreError:
            return await self.local.counts(rooms)

    async def close(self) -> None:
        await self.local.close()
        await self.shared.close()
