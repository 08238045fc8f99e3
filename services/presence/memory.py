"""MemoryPresence: who is in which room, for one process."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.presence import ONLINE, ExpiredHandler, Member


@dataclass(slots=True)
class _Entry:
    status: str
    since: float
    conns: set[str] = field(default_factory=set)


class MemoryPresence:
    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, _Entry]] = {}

    async def start(self, on_expired: ExpiredHandler, on_restored: ExpiredHandler | None = None) -> None:
        return None  # one process: nothing can die without us, nothing is lost

    async def join(self, room: str, user: str, conn_id: str, now: float) -> bool:
        users = self._rooms.setdefault(room, {})
        entry = users.get(user)
        if entry is None:
            users[user] = _Entry(ONLINE, now, {conn_id})
            return True
        entry.conns.add(conn_id)
        return False

    async def leave(self, room: str, user: str, conn_id: str) -> bool:
        users = self._rooms.get(room)
        entry = users.get(user) if users else None
        if users is None or entry is None:
            return False
        entry.conns.discard(conn_id)
        if entry.conns:
            return False
        del users[user]
        if not users:
            del self._rooms[room]
        return True

    async def set_status(self, room: str, user: str, status: str, now: float) -> None:
        entry = self._rooms.get(room, {}).get(user)
        if entry is not None and entry.status != status:
            entry.status = status
            entry.since = now

    async def resync(self) -> None:
        """One process: nothing can have been lost."""

    async def members(self, room: str) -> list[Member]:
        return [Member(u, e.status, e.since) for u, e in sorted(self._rooms.get(room, {}).items())]

    async def close(self) -> None:
        self._rooms.clear()
