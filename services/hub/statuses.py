"""Statuses: presence changes as frames. A user's status in a room (online, typing, idle) is stored
and announced to the room; `typing` lapses to `online` after TYPING_TTL unless repeated; users the
store expired (a dead instance's) or restored (a Redis restart) are announced; after a bus outage
every local room gets a fresh snapshot. In a room above PRESENCE_BROADCAST_LIMIT statuses are
stored but not announced (roster.py)."""

from __future__ import annotations

import asyncio
import time

from services import frames
from services.hub.fanout import Fanout
from services.hub.members import MemberView
from services.hub.roster import Roster
from services.hub.tasks import TaskGroup
from services.ids import iso, iso_now
from services.presence import OFFLINE, ONLINE, PresenceStore
from services.settings import Settings


class Statuses:
    def __init__(
        self,
        settings: Settings,
        store: PresenceStore,
        roster: Roster,
        fanout: Fanout,
        members: MemberView,
        tasks: TaskGroup,
    ) -> None:
        self._settings = settings
        self._store = store
        self._roster = roster
        self._fanout = fanout
        self._members = members
        self._tasks = tasks
        self._typing: dict[tuple[str, str], asyncio.TimerHandle] = {}

    async def set(self, room: str, user: str, status: str) -> None:
        await self.publish(room, user, status)
        self.cancel_typing(room, user)
        if status == "typing":
            loop = asyncio.get_running_loop()
            self._typing[(room, user)] = loop.call_later(self._settings.typing_ttl, self._lapsed, room, user)

    async def publish(self, room: str, user: str, status: str) -> None:
        now = time.time()
        await self._store.set_status(room, user, status, now)
        if self._roster.announces(room):
            presence = {"roomId": room, "userId": user, "status": status, "at": iso(now)}
            await self._fanout.broadcast(room, frames.encode("presence", presence))

    def left(self, room: str, user: str, gone: bool) -> None:
        """A local connection of `user` left `room`; `gone`: the user has no connection left in it."""
        if gone:
            self.cancel_typing(room, user)
        elif (room, user) in self._typing and not self._here(room, user):
            # Still in the room through another instance, but the timer that would lapse this
            # instance's "typing" dies with its last local connection: lapse it now.
            self.cancel_typing(room, user)
            self._tasks.spawn(self.publish(room, user, ONLINE))

    def cancel_typing(self, room: str, user: str) -> None:
        timer = self._typing.pop((room, user), None)
        if timer is not None:
            timer.cancel()

    def close(self) -> None:
        for timer in self._typing.values():
            timer.cancel()
        self._typing.clear()

    def expired(self, room: str, user: str) -> None:
        """A dead instance's user (or one whose leave could not be stored): announce offline."""
        self.cancel_typing(room, user)
        self._announce(room, user, OFFLINE)

    def restored(self, room: str, user: str) -> None:
        """A user the store had lost (Redis restarted empty) and got back: announce online."""
        self._announce(room, user, ONLINE)

    async def resend_snapshots(self) -> None:
        """After a bus outage: a fresh presence_state for every local room (changes published
        meanwhile never reached us), read once our own connections are back in the store."""
        await self._store.resync()
        for room in self._members.room_ids():
            frame = self._roster.frame(room, await self._roster.page(room))
            for session in tuple(self._members.in_room(room)):
                session.send(frame)

    def _here(self, room: str, user: str) -> bool:
        return any(room in s.rooms for s in self._members.of_user(user))

    def _lapsed(self, room: str, user: str) -> None:
        self._typing.pop((room, user), None)
        if self._here(room, user):
            self._tasks.spawn(self.publish(room, user, ONLINE))

    def _announce(self, room: str, user: str, status: str) -> None:
        if not self._roster.announces(room):
            return
        frame = frames.encode("presence", {"roomId": room, "userId": user, "status": status, "at": iso_now()})
        self._tasks.spawn(self._fanout.broadcast(room, frame))
