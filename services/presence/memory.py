"""MemoryPresence: who is in which room, for one process. Each room keeps its user ids sorted
(bisect), so a page is a slice and a join or leave is one binary search."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from services.presence import ONLINE, ExpiredHandler, Member, Page


@dataclass(slots=True)
class _Entry:
    status: str
    since: float
    conns: set[str] = field(default_factory=set)
    member: Member | None = None  # what pages hand out, until the status changes

    def as_member(self, user: str) -> Member:
        if self.member is None:
            self.member = Member(user, self.status, self.since)
        return self.member


@dataclass(slots=True)
class _Room:
    users: dict[str, _Entry] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # user ids, sorted
    first: Page | None = None  # the first page, until the room changes (a storm's joiners share it)


class MemoryPresence:
    def __init__(self) -> None:
        self._rooms: dict[str, _Room] = {}

    async def start(self, on_expired: ExpiredHandler, on_restored: ExpiredHandler | None = None) -> None:
        return None  # one process: nothing can die without us, nothing is lost

    async def join(self, room: str, user: str, conn_id: str, now: float) -> tuple[bool, int]:
        state = self._rooms.get(room)
        if state is None:
            state = self._rooms[room] = _Room()
        entry = state.users.get(user)
        if entry is None:
            state.users[user] = _Entry(ONLINE, now, {conn_id})
            state.first = None
            bisect.insort(state.order, user)
            return True, len(state.order)
        entry.conns.add(conn_id)
        return False, len(state.order)

    async def leave(self, room: str, user: str, conn_id: str) -> tuple[bool, int]:
        state = self._rooms.get(room)
        entry = state.users.get(user) if state else None
        if state is None or entry is None:
            return False, len(state.order) if state else 0
        entry.conns.discard(conn_id)
        if entry.conns:
            return False, len(state.order)
        del state.users[user]
        state.first = None
        del state.order[bisect.bisect_left(state.order, user)]
        if not state.users:
            del self._rooms[room]
        return True, len(state.order)

    async def set_status(self, room: str, user: str, status: str, now: float) -> None:
        state = self._rooms.get(room)
        entry = state.users.get(user) if state else None
        if state is not None and entry is not None and entry.status != status:
            entry.status = status
            entry.since = now
            entry.member = None
            state.first = None

    async def resync(self) -> None:
        """One process: nothing can have been lost."""

    async def page(self, room: str, after: str | None, limit: int) -> Page:
        state = self._rooms.get(room)
        if state is None:
            return Page(0, [], False)
        first = state.first
        if after is None and first is not None and len(first.members) == min(limit, first.count):
            return first
        start = 0 if after is None else bisect.bisect_right(state.order, after)
        ids = state.order[start : start + limit]
        users = state.users
        members = [users[u].as_member(u) for u in ids]
        page = Page(len(state.order), members, start + limit < len(state.order))
        if after is None:
            state.first = page
        return page

    async def counts(self, rooms: list[str]) -> list[int]:
        return [len(self._rooms[r].order) if r in self._rooms else 0 for r in rooms]

    async def close(self) -> None:
        self._rooms.clear()
