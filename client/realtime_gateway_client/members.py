"""Who is online in each joined room, as the client has been told: the same rules as the
JavaScript client's members.ts, checked by both against tests/conformance/client.json.

- A room's snapshot (`presence_state` without a requestId: the first page, sent after each join)
  replaces what was known. `complete`: it listed everybody (no `next`).
- `presence`: `offline` removes the user, any other status adds or updates them. The count follows
  a complete list. On a partial one (a first page) `offline` takes one off, whoever it names, and
  `online` from a user not listed adds one (the gateway says `online` when a user enters the room);
  `typing` or `idle` from a user not listed is someone from another page: listed, not counted, not
  "joined".
- `presence_count` (a room over the gateway's broadcast limit): the count, and the list is emptied:
  per-user frames stop until the next snapshot, so nobody on it could be taken off when they go.
- Leaving the room (left, removed, deleted) forgets it. Replies to `presence_query` change nothing:
  the application asked for a page, it did not learn of a change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from realtime_gateway_client.events import Member
from realtime_gateway_client.events import MembersChanged as Change

# What changed the list (MembersChanged.source): an application says "X joined" for PRESENCE only.
SNAPSHOT, PRESENCE, COUNT = "snapshot", "presence", "count"


@dataclass
class _Room:
    members: dict[str, Member] = field(default_factory=dict)
    told: int = 0  # the count the gateway last said (a complete list counts itself instead)
    complete: bool = True

    @property
    def count(self) -> int:
        return len(self.members) if self.complete else self.told


class Roster:
    def __init__(self) -> None:
        self._rooms: dict[str, _Room] = {}

    def members(self, room: str) -> tuple[Member, ...]:
        known = self._rooms.get(room)
        return tuple(known.members.values()) if known else ()

    def count(self, room: str) -> int:
        known = self._rooms.get(room)
        return known.count if known else 0

    def snapshot(self, room: str, members: tuple[Member, ...], count: int | None, more: bool) -> Change:
        before = self._rooms.get(room)
        old = set(before.members) if before else set()
        now = _Room({m.user_id: m for m in members}, count if count is not None else len(members), not more)
        self._rooms[room] = now
        # On a partial page, a user missing from it may simply be on another page: not "left".
        left = tuple(sorted(old - now.members.keys())) if now.complete else ()
        return Change(room, tuple(sorted(now.members.keys() - old)), left, now.count, now.complete, SNAPSHOT)

    def presence(self, room: str, user: str, status: str, at: datetime | None) -> Change | None:
        known = self._rooms.get(room)
        if known is None:
            return None  # not a room we hold a snapshot of (joined, not yet answered)
        listed = user in known.members
        if status == "offline":
            if not listed and known.complete:
                return None
            known.members.pop(user, None)
            known.told = max(0, known.told - 1)
            return Change(room, (), (user,) if listed else (), known.count, known.complete, PRESENCE)
        known.members[user] = Member(user, status, at)
        entered = not listed and status == "online"
        if entered:
            known.told += 1
        return Change(room, (user,) if entered else (), (), known.count, known.complete, PRESENCE)

    def counted(self, room: str, count: int) -> Change | None:
        known = self._rooms.get(room)
        if known is None:
            return None
        known.told, known.complete = count, False
        known.members.clear()
        return Change(room, (), (), count, False, COUNT)

    def forget(self, room: str) -> None:
        self._rooms.pop(room, None)
