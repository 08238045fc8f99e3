"""Presence store: who is in a room, with which status, across every instance.

A user is a member of a room while any of their connections (on any instance) is in it.
The memory store serves one process; services/redis_presence.py shares it through Redis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

ONLINE = "online"
OFFLINE = "offline"


@dataclass(slots=True)
class Member:
    user_id: str
    status: str
    since: float  # epoch seconds of the last status change

    def as_json(self) -> dict[str, object]:
        from services.ids import iso

        return {"userId": self.user_id, "status": self.status, "since": iso(self.since)}


# Called with (room, user): `on_expired` for users whose owning instance died (the hub announces
# them offline), `on_restored` for users a store had lost and re-registered (announced online).
ExpiredHandler = Callable[[str, str], None]


class PresenceStore(Protocol):
    """What the hub needs. Implementations handed to the hub never raise StoreError (a store that
    can fail goes behind services/fallback.py)."""

    async def join(self, room: str, user: str, conn_id: str, now: float) -> bool:
        """Record the connection in the room; True when the user is new to the room."""

    async def leave(self, room: str, user: str, conn_id: str) -> bool:
        """Forget the connection; True when the user has no connection left in the room."""

    async def set_status(self, room: str, user: str, status: str, now: float) -> None: ...

    async def members(self, room: str) -> list[Member]: ...

    async def start(self, on_expired: ExpiredHandler, on_restored: ExpiredHandler | None = None) -> None: ...

    async def resync(self) -> None:
        """After an outage: make the shared store hold this instance's connections again, now,
        so a snapshot read next includes them (issue: the snapshot after a Redis restart lacked
        the receiving client's own user)."""

    async def close(self) -> None: ...


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
