"""Departures: a session leaving a room, however it happens (a `leave`, a disconnect, a removal, a
deleted room, a narrowed token).

    detach(session, room)    the local, synchronous half: from here on nothing of the room reaches it
    leave(session, room)     detach, then tell the stores and announce offline when it was the last
    remove(room, sessions, frame, announce)
                             taken out by an event: told with `frame`, detached now, forgotten by
                             the stores in the background

One place for it, so the hub and the control plane (control.py) take sessions out the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.protocol import room_channel
from services.hub.channels import Subscriptions
from services.hub.fanout import Fanout
from services.hub.joins import Holds
from services.hub.members import Members
from services.hub.roster import Roster
from services.hub.statuses import Statuses
from services.hub.tasks import TaskGroup
from services.session import Session


class Departures:
    def __init__(
        self,
        members: Members,
        holds: Holds,
        fanout: Fanout,
        roster: Roster,
        statuses: Statuses,
        channels: Subscriptions,
        tasks: TaskGroup,
    ) -> None:
        self._members = members
        self._holds = holds
        self._fanout = fanout
        self._roster = roster
        self._statuses = statuses
        self._channels = channels
        self._tasks = tasks

    def detach(self, session: Session, room: str) -> None:
        session.rooms.discard(room)
        self._holds.drop(room, session)
        if self._members.remove_from_room(room, session):
            self._fanout.forget(room)
            self._roster.forget(room)

    async def leave(self, session: Session, room: str) -> None:
        """Remove one session from a room; announce offline when it was the user's last connection."""
        self.detach(session, room)
        await self.after_detach(session, room)

    async def after_detach(self, session: Session, room: str, announce: bool = True) -> None:
        user = session.user_id
        gone = await self._roster.exit(room, user, session.conn_id, announce)
        self._statuses.left(room, user, gone)
        await self.drop_channel(room)

    async def drop_channel(self, room: str) -> None:
        """Unsubscribe the room's channel when no local session is in the room (any more)."""
        await self._channels.drop_if_unused(room_channel(room), lambda: bool(self._members.in_room(room)))

    def remove(self, room: str, sessions: Sequence[Session], frame: bytes | None, announce: bool) -> None:
        for session in sessions:
            if frame is not None:
                session.send(frame)
            self.detach(session, room)
        if sessions:
            self._tasks.spawn(self._forget(room, list(sessions), announce))

    async def _forget(self, room: str, sessions: list[Session], announce: bool) -> None:
        for session in sessions:
            await self.after_detach(session, room, announce)
