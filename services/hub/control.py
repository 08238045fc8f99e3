"""Control: what a user's tokens allow, and what the control plane does to one user's sessions on
every instance (docs/protocol.md, "Sessions"). One implementation each, for the HTTP control API and
the Kafka events alike:

    disconnect   every socket of the user closed with 4003 (they may come back with any valid token)
    revoke       the user's tokens issued before a moment refused (store), their sockets closed 4003
    remove       the user out of a room, and its older tokens kept out of it (room.member_removed)

Each is stored first (revoke, remove), applied to this instance's sessions, then published on the
control channel, which every instance listens to from start to stop. The records in force for
users with local sockets are kept here, kept current by those events, so a join asks no store.

A socket being opened is checked against the store at its handshake, and registered with the hub
a moment later: an action that arrived between the two is kept here for RECENT seconds and applied
to it when it registers (issue: a revocation published in that gap left the socket open until exp).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Sequence
from typing import Protocol

from schemas.protocol import CLOSE_REVOKED, control_channel
from services import frames
from services.auth import Identity
from services.bus import Bus, BusEvent
from services.errors import StoreError
from services.hooks.join_cache import JoinDecisions
from services.hub.members import MemberView
from services.metrics import METRICS
from services.revocation import NOTHING, TOKENS, Revocations, RevocationStore, older
from services.session import Session
from services.settings import Settings

log = logging.getLogger("gateway.control")

ACTION_DISCONNECT = "disconnect"
ACTION_REVOKE = "revoke"
ACTION_REMOVE_USER = "remove_user"
ACTIONS = frozenset({ACTION_DISCONNECT, ACTION_REVOKE, ACTION_REMOVE_USER})
MAX_REASON_BYTES = 120  # a close frame's reason is at most 123 bytes
RECENT = 60.0  # seconds an action is kept for sockets whose handshake began before it arrived


class Exits(Protocol):
    """How sessions are taken out of a room (departures.py)."""

    def remove(self, room: str, sessions: Sequence[Session], frame: bytes | None, announce: bool) -> None: ...


class Control:
    def __init__(
        self,
        store: RevocationStore,
        settings: Settings,
        bus: Bus,
        members: MemberView,
        departures: Exits,
        decisions: JoinDecisions | None = None,
    ) -> None:
        """Actions go on the bus's control channel (BusError when they cannot); sessions an action
        takes out of a room leave through `departures`, announced to the others."""
        self.store = store
        self._ttl = settings.revocation_ttl
        self._room_access = settings.room_access
        self._bus = bus
        self._instance = bus.instance_id
        self._members = members
        self._departures = departures
        self._decisions = decisions  # the join hook's cached answers, dropped by every action
        self.known: dict[str, Revocations] = {}  # only users with local sockets and a record
        self._recent: collections.deque[tuple[float, BusEvent]] = collections.deque()  # (arrived, action)
        self._recent_by_user: dict[str, list[tuple[float, BusEvent]]] = {}

    # -- what a token may do -------------------------------------------------------------------

    async def load(self, user: str) -> Revocations:
        """The user's records, for a handshake or a refresh. A store that cannot answer refuses
        nothing: sockets keep opening during a Redis outage (its log line says the store is down)."""
        try:
            found = await self.store.load(user)
        except StoreError:
            found = Revocations()
        found.merge(self.known.get(user, NOTHING))
        return found

    def connected(self, session: Session, found: Revocations, since: float | None) -> None:
        """A socket of the user registered, with what its handshake (begun at `since`) loaded; the
        actions that arrived since are applied to it (none without `since`)."""
        user = session.user_id
        if found.before:
            self.known.setdefault(user, Revocations()).merge(found)
        if since is None:
            return
        for arrived, event in self._recent_by_user.get(user, ()):
            if arrived >= since:
                self._note(user, event)
                self._apply_to([session], event)

    def forget(self, user: str) -> None:
        """The user's last local socket closed."""
        self.known.pop(user, None)

    def refuses_room(self, identity: Identity, room: str) -> bool:
        return self.known.get(identity.user_id, NOTHING).refuses_room(room, identity.issued_at)

    def reauthorize(self, session: Session, identity: Identity) -> None:
        """A refreshed token replaces the socket's; with ROOM_ACCESS=token the rooms its `rooms` claim
        no longer allows are left (`room_update removed`, offline to the others)."""
        before, session.identity = session.identity.rooms, identity
        if self._room_access != "token" or identity.rooms == before:
            return  # the same claim allows the same rooms (issue: a re-sent token re-checked them all)
        for room in sorted(session.rooms):
            if not identity.may_join(room):
                self._departures.remove(room, [session], _removed(room), announce=True)

    # -- the control plane's actions -----------------------------------------------------------

    async def disconnect(self, user: str, reason: str | None = None) -> None:
        """Raises BusError when the other instances could not be told (this one's sockets are closed)."""
        METRICS.revocations.labels("disconnect").inc()
        await self._act(BusEvent(origin=self._instance, action=ACTION_DISCONNECT, user=user, reason=_reason(reason)))

    async def revoke(self, user: str, issued_before: float) -> None:
        """Stored, then applied everywhere. The sockets are closed even when the store fails; then
        StoreError says the revocation is not remembered for later handshakes."""
        METRICS.revocations.labels("tokens").inc()
        event = BusEvent(origin=self._instance, action=ACTION_REVOKE, user=user, at=issued_before)
        await self._store_and_act(user, TOKENS, event)

    async def remove(self, room: str, user: str) -> None:
        """The room's sockets of `user` leave it (room_update removed); older tokens may not join it
        again. Like revoke: applied even when the store fails, then StoreError."""
        METRICS.revocations.labels("room").inc()
        frame = _removed(room)
        now = time.time()
        event = BusEvent(frame=frame, origin=self._instance, action=ACTION_REMOVE_USER, user=user, room=room, at=now)
        await self._store_and_act(user, room, event)

    async def _store_and_act(self, user: str, key: str, event: BusEvent) -> None:
        assert event.at is not None
        failed: StoreError | None = None
        try:
            await self.store.add(user, key, event.at, self._ttl)
        except StoreError as exc:
            failed = exc
        await self._act(event)
        if failed is not None:
            raise failed

    async def _act(self, event: BusEvent) -> None:
        self.apply(event)
        await self._bus.publish(control_channel().key, event)

    def apply(self, event: BusEvent) -> None:
        """An action (from here or another instance) applied to the local sessions of its user, and
        kept a while for sockets still being opened."""
        user = event.user
        if user is None or event.action not in ACTIONS:
            return
        if self._decisions is not None:
            self._decisions.forget(user, event.room if event.action == ACTION_REMOVE_USER else None)
        self._remember_recent(time.time(), user, event)
        sessions = list(self._members.of_user(user))
        if sessions:
            self._note(user, event)
            self._apply_to(sessions, event)

    def _note(self, user: str, event: BusEvent) -> None:
        """A revocation or a removal joins the records kept for the user's local sockets."""
        if event.at is None:
            return
        expires = time.time() + self._ttl  # REVOCATION_TTL, the same on every instance
        if event.action == ACTION_REVOKE:
            self.known.setdefault(user, Revocations()).add(TOKENS, event.at, expires)
        elif event.action == ACTION_REMOVE_USER and event.room is not None:
            self.known.setdefault(user, Revocations()).add(event.room, event.at, expires)

    def _apply_to(self, sessions: list[Session], event: BusEvent) -> None:
        if event.action == ACTION_DISCONNECT:
            for session in sessions:
                session.close(CLOSE_REVOKED, event.reason or "disconnected")
        elif event.action == ACTION_REVOKE and event.at is not None:
            for session in sessions:
                if older(session.identity.issued_at, event.at):
                    session.close(CLOSE_REVOKED, "token revoked")
        elif event.action == ACTION_REMOVE_USER and event.room is not None:
            inside = [s for s in sessions if event.room in s.rooms]
            if inside:
                self._departures.remove(event.room, inside, event.frame or _removed(event.room), announce=True)

    def _remember_recent(self, now: float, user: str, event: BusEvent) -> None:
        while self._recent and self._recent[0][0] < now - RECENT:
            _, old = self._recent.popleft()
            entries = self._recent_by_user.get(old.user or "")
            if entries:
                entries.pop(0)
                if not entries:
                    del self._recent_by_user[old.user or ""]
        self._recent.append((now, event))
        self._recent_by_user.setdefault(user, []).append((now, event))


def _removed(room: str) -> bytes:
    return frames.encode("room_update", {"roomId": room, "action": "removed"})


def _reason(reason: str | None) -> str:
    """A close reason fits in a close frame: at most MAX_REASON_BYTES of UTF-8, cut on a character."""
    text = reason or "disconnected"
    return text.encode()[:MAX_REASON_BYTES].decode("utf-8", "ignore")
