"""Who is connected here: rooms -> local sessions, users -> local sessions.

    MemberView   the read-only questions the hub's parts ask (fanout, roster, statuses, control)
    Members      the one owner of both maps; only the hub changes it (joins, leaves, connects)

A read-only view instead of the hub's dicts handed around by reference (issue: four parts held the
same two dicts, and a reader could not tell which of them changed membership).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from services.metrics import METRICS
from services.session import Session

_NONE: frozenset[Session] = frozenset()


class MemberView(Protocol):
    def in_room(self, room: str) -> Collection[Session]:
        """The room's local sessions (empty when none): do not keep it, it changes."""

    def of_user(self, user: str) -> Collection[Session]:
        """The user's local sessions (empty when none)."""

    def room_ids(self) -> list[str]:
        """Every room with a local member, as a list taken now."""


class Members:
    def __init__(self) -> None:
        self.rooms: dict[str, set[Session]] = {}
        self.users: dict[str, set[Session]] = {}
        self.opened = 0  # sessions ever registered: how fast connections arrive (departures.Graces)

    def in_room(self, room: str) -> Collection[Session]:
        return self.rooms.get(room, _NONE)

    def of_user(self, user: str) -> Collection[Session]:
        return self.users.get(user, _NONE)

    def room_ids(self) -> list[str]:
        return list(self.rooms)

    def add_user(self, session: Session, most: int) -> int:
        """Register a session; the user's count of local sessions after it, or 0 when the user
        already has `most` (the session is then not added)."""
        mine = self.users.setdefault(session.user_id, set())
        if len(mine) >= most:
            if not mine:
                del self.users[session.user_id]
            return 0
        mine.add(session)
        self.opened += 1
        return len(mine)

    def remove_user(self, session: Session) -> bool | None:
        """None when the session was not registered; else whether it was the user's last here."""
        mine = self.users.get(session.user_id)
        if mine is None or session not in mine:
            return None
        mine.discard(session)
        if mine:
            return False
        del self.users[session.user_id]
        return True

    def add_to_room(self, room: str, session: Session) -> None:
        self.rooms.setdefault(room, set()).add(session)
        METRICS.rooms.set(len(self.rooms))

    def remove_from_room(self, room: str, session: Session) -> bool:
        """True when the room has no local member left (and is forgotten here)."""
        members = self.rooms.get(room)
        if members is None:
            return False
        members.discard(session)
        if members:
            return False
        del self.rooms[room]
        METRICS.rooms.set(len(self.rooms))
        return True
