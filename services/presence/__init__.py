"""Presence store: who is in a room, with which status, across every instance.

A user is a member of a room while any of their connections (on any instance) is in it.
The memory store (memory.py) serves one process; redis.py shares it through Redis. Members are
read a page at a time, sorted by user id, so a join costs the same in a room of ten or of ten
thousand (docs/protocol.md, "Large rooms").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from services.ids import iso

ONLINE = "online"
OFFLINE = "offline"


@dataclass(slots=True)
class Member:
    user_id: str
    status: str
    since: float  # epoch seconds of the last status change
    _json: dict[str, object] | None = field(default=None, compare=False, repr=False)

    def as_json(self) -> dict[str, object]:
        """Made once per Member: the memory store hands out the same Member until the user's status
        changes, so a room's first page is not formatted again for every join. Shared: not to be
        changed by the caller."""
        if self._json is None:
            self._json = {"userId": self.user_id, "status": self.status, "since": iso(self.since)}
        return self._json


@dataclass(frozen=True, slots=True)
class Page:
    """Up to a page of a room's members, sorted by user id, after some user id; `count` is how many
    users the room has, `more` whether members follow the page."""

    count: int
    members: list[Member]
    more: bool


# Called with (room, user): `on_expired` for users whose owning instance died (the hub announces
# them offline), `on_restored` for users a store had lost and re-registered (announced online).
ExpiredHandler = Callable[[str, str], None]


class PresenceStore(Protocol):
    """What the hub needs. Implementations handed to the hub never raise StoreError (a store that
    can fail goes behind fallback.py)."""

    async def join(self, room: str, user: str, conn_id: str, now: float) -> tuple[bool, int]:
        """Record the connection in the room: (the user is new to the room, users in the room)."""

    async def leave(self, room: str, user: str, conn_id: str) -> tuple[bool, int]:
        """Forget the connection: (the user has no connection left in the room, users in it)."""

    async def set_status(self, room: str, user: str, status: str, now: float) -> None: ...

    async def page(self, room: str, after: str | None, limit: int) -> Page:
        """The room's members with a user id greater than `after` (from the first without), at
        most `limit` of them."""

    async def counts(self, rooms: list[str]) -> list[int]:
        """Users in each room (one round trip for all)."""

    async def start(self, on_expired: ExpiredHandler, on_restored: ExpiredHandler | None = None) -> None: ...

    async def resync(self) -> None:
        """After an outage: make the shared store hold this instance's connections again, now,
        so a snapshot read next includes them (issue: the snapshot after a Redis restart lacked
        the receiving client's own user)."""

    async def close(self) -> None: ...


def announce(handler: ExpiredHandler | None, room: str, user: str) -> None:
    """Tell the hub of a user who went (or came back) in a room; its failure is logged, never raised
    into the store's loops (a safety net)."""
    if handler is None:
        return
    try:
        handler(room, user)
    except Exception:
        logging.getLogger("gateway.presence").exception("presence handler failed", extra={"room": room})
