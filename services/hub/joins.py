"""JoinHold: what a joiner is sent while its join is under way, and just after (README.md,
"Decisions"): the reply and the snapshot first, then the room's frames held meanwhile, less the
presence the snapshot already shows."""

from __future__ import annotations

import asyncio
import time

import orjson

from services.history import Position
from services.ids import iso
from services.presence import OFFLINE
from services.session import Session

_PRESENCE_PREFIX = b'{"type":"presence",'
JOIN_FILTER_GRACE = 1.0  # seconds a joiner's snapshot keeps filtering late presence from other instances
# Above this many members a joiner keeps no snapshot after its join: holding one per joiner for the
# grace made filling a room O(N^2) in memory.
JOIN_FILTER_MAX_MEMBERS = 200


def presence_fields(frame: bytes) -> tuple[str, str, str] | None:
    """(userId, status, at) of a presence frame; None for any other frame."""
    if not frame.startswith(_PRESENCE_PREFIX):
        return None
    payload = orjson.loads(frame)["payload"]
    return str(payload.get("userId")), str(payload.get("status")), str(payload.get("at", ""))


def _reached(position: Position | None, seen: Position | None) -> bool:
    return position is not None and seen is not None and position.epoch == seen.epoch and position.offset <= seen.offset


class JoinHold:
    """A joiner's view of one room while its join is under way, and for a grace after.

    Until `release`, the room's frames are held, so the reply and the snapshot go first; of the
    held presence frames those the snapshot already reflects are dropped: the same status for a
    user it lists with a `since` at or after the frame's `at` (both stamped by the instance that
    made the change, so clocks do not matter), or offline for a user it does not list. In a room
    of at most JOIN_FILTER_MAX_MEMBERS the first rule keeps filtering late frames from other
    instances for JOIN_FILTER_GRACE, for the listed users whose state changed in the last moments
    (only their frames can still be in flight), each until news of them gets through. Held frames
    count like queued ones: more than OUTBOUND_QUEUE_FRAMES sets `overflowed`.

    History entries at or below the position the joiner was told (`floor`: it has them from the
    history) are dropped, held or late: the history's reply and the bus's events come over two
    Redis connections, so an entry the history already counted can still be on its way on the
    bus. Such a hold is kept for the grace unless the instance already delivered the floor."""

    __slots__ = ("floor", "frames", "limit", "overflowed", "snapshot")

    def __init__(self, limit: int) -> None:
        self.frames: list[tuple[bytes, tuple[str, str, str] | None, Position | None]] | None = []
        self.limit = limit
        self.overflowed = False
        self.snapshot: dict[str, tuple[str, str]] | None = None  # listed user -> (status, since)
        self.floor: Position | None = None

    def admit(self, frame: bytes, presence: tuple[str, str, str] | None, position: Position | None = None) -> bool:
        """True: deliver now. False: held, or dropped as already known."""
        if self.frames is not None:
            if len(self.frames) >= self.limit:
                self.overflowed = True
            else:
                self.frames.append((frame, presence, position))
            return False
        if _reached(position, self.floor):
            return False
        return presence is None or not self._known_late(presence)

    def release(
        self, snapshot: list[dict[str, object]], now: float, complete: bool = True, seen: Position | None = None
    ) -> list[bytes]:
        """The held frames to send now, less what the snapshot shows and the entries up to `seen`.
        `complete`: the snapshot lists the whole room (not a first page), so a user it does not
        list is known to be offline.
        Afterwards only the listed users whose state changed lately are kept for the grace: older
        changes are not in flight."""
        held, self.frames = self.frames or [], None
        self.floor = seen
        users = {presence[0] for _, presence, _ in held if presence is not None}
        listed = {str(m["userId"]): (str(m["status"]), str(m["since"])) for m in snapshot if m["userId"] in users}
        kept: list[bytes] = []
        passed: set[str] = set()
        for frame, presence, position in held:
            if _reached(position, seen):
                continue
            if presence is not None and presence[0] not in passed:
                user, status, at = presence
                entry = listed.get(user)
                if status == OFFLINE:
                    known = entry is None and complete
                else:
                    known = entry is not None and entry[0] == status and at <= entry[1]
                if known:
                    continue
                passed.add(user)
            kept.append(frame)
        if len(snapshot) <= JOIN_FILTER_MAX_MEMBERS:
            recent = iso(now - JOIN_FILTER_GRACE - 1.0)
            self.snapshot = {
                str(m["userId"]): (str(m["status"]), str(m["since"]))
                for m in snapshot
                if str(m["since"]) >= recent and m["userId"] not in passed
            } or None
        return kept

    def _known_late(self, presence: tuple[str, str, str]) -> bool:
        user, status, at = presence
        snapshot = self.snapshot
        if snapshot is None or (listed := snapshot.get(user)) is None:
            return False
        if status == listed[0] and at <= listed[1]:
            return True
        del snapshot[user]  # news of them: no longer filtered
        return False


class Holds:
    """The JoinHolds of a hub, by room (what Fanout consults once per broadcast)."""

    def __init__(self) -> None:
        self.by_room: dict[str, dict[Session, JoinHold]] = {}

    def start(self, room: str, session: Session, limit: int) -> JoinHold:
        hold = self.by_room.setdefault(room, {})[session] = JoinHold(limit)
        return hold

    def release(
        self,
        room: str,
        session: Session,
        hold: JoinHold,
        snapshot: list[dict[str, object]],
        complete: bool,
        seen: Position | None = None,
        delivered: Position | None = None,
    ) -> None:
        """Send what was held; keep filtering for the grace when the hold kept a snapshot, or when
        entries up to `seen` may still arrive (this instance has `delivered` less so far)."""
        for frame in hold.release(snapshot, time.time(), complete, seen):
            session.send(frame)
        if hold.snapshot or (seen is not None and not _reached(seen, delivered)):
            asyncio.get_running_loop().call_later(JOIN_FILTER_GRACE, self._end, room, session, hold)
        else:
            self._end(room, session, hold)

    def in_room(self, room: str) -> dict[Session, JoinHold] | None:
        return self.by_room.get(room)

    def drop(self, room: str, session: Session) -> None:
        holds = self.by_room.get(room)
        if holds is not None and holds.pop(session, None) is not None and not holds:
            del self.by_room[room]

    def _end(self, room: str, session: Session, hold: JoinHold) -> None:
        holds = self.by_room.get(room)
        if holds is not None and holds.get(session) is hold:
            self.drop(room, session)
