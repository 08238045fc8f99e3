"""Access: who may join which room, asked in the order docs/protocol.md gives.

    check(session, room)  at once: ROOM_ACCESS=token's `rooms` claim, and removals (control.py)
    admit(session, room)  a room the connection is not in yet: MAX_ROOMS, then ROOM_ACCESS=hook's
                          join hook
    still(session, room)  the same once the join is about to take effect, after it waited

A join of a room the connection is already in is answered from its membership without asking the
backend again: it was asked when the connection joined, and a removal since took it out of the room.
"""

from __future__ import annotations

from services.errors import ClientError, HookUnavailable
from services.hooks import Hooks
from services.hub.control import Control
from services.session import Session
from services.settings import Settings


class Access:
    def __init__(self, settings: Settings, control: Control, hooks: Hooks) -> None:
        self._by_token = settings.room_access == "token"
        self._max_rooms = settings.max_rooms
        self._control = control
        self._hooks = hooks

    def check(self, session: Session, room: str) -> None:
        if self._by_token and not session.identity.may_join(room):
            raise ClientError("forbidden_room", "this token does not allow joining the room", roomId=room)
        if self._control.refuses_room(session.identity, room):
            raise ClientError("forbidden_room", "removed from the room: a token issued since is needed", roomId=room)

    async def admit(self, session: Session, room: str) -> None:
        """Nothing when the connection may join the room; ClientError otherwise."""
        self._room_left(session, room)
        if self._hooks.join_url is None:
            return
        try:
            reason = await self._hooks.join(session, room)
        except HookUnavailable:
            raise ClientError("unavailable", "the backend did not answer; join again later", roomId=room) from None
        if reason is not None:
            raise ClientError("forbidden_room", reason, roomId=room, details={"reason": reason})

    def still(self, session: Session, room: str) -> ClientError | None:
        """The refusal the join gets now, after it waited: closed, removed meanwhile, or MAX_ROOMS."""
        if session.closed:
            return ClientError("not_in_room", "the connection closed while joining", roomId=room)
        try:
            self.check(session, room)
            self._room_left(session, room)
        except ClientError as exc:
            return exc
        return None

    def _room_left(self, session: Session, room: str) -> None:
        if len(session.rooms) >= self._max_rooms:
            raise ClientError("too_many_rooms", f"at most {self._max_rooms} rooms per connection", roomId=room)
