"""Control: what the control plane does to one user's sessions, on every instance (docs/protocol.md,
"Sessions"). One implementation each, for the HTTP control API and the Kafka events alike:

    disconnect   every socket of the user closed with 4003 (they may come back with any valid token)
    revoke       the user's tokens issued before a moment refused (store), their sockets closed 4003
    remove       the user out of a room, and its older tokens kept out of it (room.member_removed)

Each is stored first (revoke, remove), applied to this instance's sessions, then published on the
user's bus channel: exactly the instances holding a socket of the user are subscribed to it. The
records in force for users with local sockets are kept here, kept current by those events, so a
join asks no store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from schemas.protocol import CLOSE_REVOKED
from services import frames
from services.auth import Identity
from services.bus import BusEvent
from services.errors import StoreError
from services.metrics import METRICS
from services.revocation import NOTHING, TOKENS, Revocations, RevocationStore
from services.session import Session

log = logging.getLogger("gateway.control")

ACTION_DISCONNECT = "disconnect"
ACTION_REVOKE = "revoke"
ACTION_REMOVE_USER = "remove_user"
MAX_REASON_BYTES = 120  # a close frame's reason is at most 123 bytes


class Control:
    def __init__(
        self,
        store: RevocationStore,
        ttl: float,
        instance_id: str,
        users: dict[str, set[Session]],
        publish: Callable[[str, BusEvent], Awaitable[None]],
        leave: Callable[[str, list[Session]], None],
    ) -> None:
        """`users` is the hub's (user -> local sessions); `publish(user, event)` goes on the user's
        channel; `leave(room, sessions)` takes sessions out of a room, announced to the others."""
        self.store = store
        self._ttl = ttl
        self._instance = instance_id
        self._users = users
        self._publish = publish
        self._leave = leave
        self.known: dict[str, Revocations] = {}  # only users with local sockets and a record

    # -- what a token may do -------------------------------------------------------------------

    async def load(self, user: str) -> Revocations:
        """The user's records, for a handshake or a refresh. A store that cannot answer refuses
        nothing: sockets keep opening during a Redis outage (its log line says the store is down)."""
        try:
            found = await self.store.load(user)
        except StoreError:
            found = Revocations()
        for key, moment in self.known.get(user, NOTHING).before.items():
            found.add(key, moment)
        return found

    def connected(self, user: str, found: Revocations) -> None:
        """A socket of `user` opened with what its handshake loaded."""
        if found.before:
            mine = self.known.setdefault(user, Revocations())
            for key, moment in found.before.items():
                mine.add(key, moment)

    def forget(self, user: str) -> None:
        """The user's last local socket closed."""
        self.known.pop(user, None)

    def refuses_room(self, identity: Identity, room: str) -> bool:
        return self.known.get(identity.user_id, NOTHING).refuses_room(room, identity.issued_at)

    # -- the control plane's actions -----------------------------------------------------------

    async def disconnect(self, user: str, reason: str | None = None) -> None:
        METRICS.revocations.labels("disconnect").inc()
        event = BusEvent(origin=self._instance, action=ACTION_DISCONNECT, user=user, reason=_reason(reason))
        await self._act(user, event)

    async def revoke(self, user: str, issued_before: float) -> None:
        """Raises StoreError when the revocation could not be stored (nothing was done)."""
        await self.store.add(user, TOKENS, issued_before, self._ttl)
        METRICS.revocations.labels("tokens").inc()
        await self._act(user, BusEvent(origin=self._instance, action=ACTION_REVOKE, user=user, at=issued_before))

    async def remove(self, room: str, user: str) -> None:
        """The room's sockets of `user` leave it (room_update removed); older tokens may not join it
        again. Stored first; if the store fails, the sockets still leave (the removal is logged as
        not remembered)."""
        now = time.time()
        try:
            await self.store.add(user, room, now, self._ttl)
        except StoreError:
            log.warning("room removal not remembered: the store is unavailable", extra={"room": room})
        METRICS.revocations.labels("room").inc()
        frame = frames.encode("room_update", {"roomId": room, "action": "removed"})
        event = BusEvent(frame=frame, origin=self._instance, action=ACTION_REMOVE_USER, user=user, room=room, at=now)
        await self._act(user, event)

    async def _act(self, user: str, event: BusEvent) -> None:
        self.apply(user, event)
        await self._publish(user, event)

    def apply(self, user: str, event: BusEvent) -> None:
        """An action on `user` (from here or another instance) applied to the local sessions."""
        sessions = list(self._users.get(user, ()))
        if event.action == ACTION_DISCONNECT:
            for session in sessions:
                session.close(CLOSE_REVOKED, event.reason or "disconnected")
        elif event.action == ACTION_REVOKE and event.at is not None:
            self._remember(user, TOKENS, event.at)
            revoked = Revocations({TOKENS: event.at})
            for session in sessions:
                if revoked.refuses(session.identity.issued_at):
                    session.close(CLOSE_REVOKED, "token revoked")
        elif event.action == ACTION_REMOVE_USER and event.room is not None and event.at is not None:
            self._remember(user, event.room, event.at)
            inside = [s for s in sessions if event.room in s.rooms]
            for session in inside:
                if event.frame is not None:
                    session.send(event.frame)
            if inside:
                self._leave(event.room, inside)

    def _remember(self, user: str, key: str, moment: float) -> None:
        if user in self._users:
            self.known.setdefault(user, Revocations()).add(key, moment)


def _reason(reason: str | None) -> str:
    """A close reason fits in a close frame: at most MAX_REASON_BYTES of UTF-8, cut on a character."""
    text = reason or "disconnected"
    return text.encode()[:MAX_REASON_BYTES].decode("utf-8", "ignore")
