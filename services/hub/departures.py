"""Departures: a session leaving a room, however it happens (a `leave`, a disconnect, a removal, a
deleted room, a narrowed token).

    detach(session, room)    the local, synchronous half: from here on nothing of the room reaches it
    leave(session, room)     detach, then tell the stores and announce offline when it was the last
    closed(session)          a closed socket: detached now; the stores told after PRESENCE_GRACE,
                             so a member that comes back meanwhile was never gone (Graces)
    remove(room, sessions, frame, announce)
                             taken out by an event: told with `frame`, detached now, forgotten by
                             the stores in the background

One place for it, so the hub and the control plane (control.py) take sessions out the same way.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence

from schemas.protocol import CLOSE_CODES, Retry, room_channel
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
        grace: float = 0.0,
        longest: float = 0.0,
    ) -> None:
        self._members = members
        self._holds = holds
        self._fanout = fanout
        self._roster = roster
        self._statuses = statuses
        self._channels = channels
        self._tasks = tasks
        self.graces = Graces(self.forget, tasks, grace, max(grace, longest), lambda: members.opened)

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
        await self.forget(session.user_id, session.conn_id, room, announce)

    async def forget(self, user: str, conn_id: str, room: str, announce: bool = True) -> None:
        """The stores' half of a departure: the connection out of the room's presence, offline
        announced when it was the user's last, the channel dropped when no local member is left."""
        gone = await self._roster.exit(room, user, conn_id, announce)
        self._statuses.left(room, user, gone)
        await self.drop_channel(room)

    def closed(self, session: Session) -> None:
        """A closed socket out of its rooms. A close after which the client comes back (a network
        drop, 1012, 4008, an expired token) is graced; one that ends the user's session (4003,
        policy closes) is announced at once."""
        rooms = tuple(session.rooms)
        for room in rooms:
            self.detach(session, room)
        code = CLOSE_CODES.get(session.close_code or 0)
        self.graces.add(session.user_id, session.conn_id, rooms, code is None or code.retry != Retry.GIVE_UP)

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


class Graces:
    """Closed sockets whose rooms still count their user for PRESENCE_GRACE seconds: a member that
    reconnects meanwhile (to any instance) joins a room it never left in the stores, so neither
    `offline` nor `online` is sent, and its room's channel stays subscribed. In a reconnect storm
    that is two frames to every other member of the room per reconnect that are not sent: 81
    socket writes per reconnect in rooms of 100 before (BENCHMARKS.md, "Reconnect storm").

    While connections arrive faster than STORM_ARRIVALS a second, a storm is under way and its
    clients may still be in the listen backlog: departures wait longer, checked each second, up to
    `longest` (OFFLINE_GRACE) after their close. An ordinary close is announced after the grace.

    Holds ids, not sessions (a closed socket's buffers go at once), in one deque in deadline order
    with one timer. Bounded: past MAX_PENDING rooms (a safety net; a storm of 10,000 clients in
    10 rooms each is 100,000) departures are told at once, as without a grace."""

    MAX_PENDING = 200_000
    STORM_ARRIVALS = 100.0  # connections opened per second on this instance

    def __init__(
        self,
        forget: Callable[[str, str, str], Awaitable[None]],
        tasks: TaskGroup,
        grace: float,
        longest: float,
        opened: Callable[[], int],
    ) -> None:
        self._forget_one = forget
        self._tasks = tasks
        self._grace = grace
        self._longest = longest
        self._opened = opened
        self._seen = (0.0, 0)  # (loop time, connections opened) at the last look
        self._pending: collections.deque[tuple[float, str, str, tuple[str, ...]]] = collections.deque()
        self._count = 0  # rooms pending
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return self._count

    def add(self, user: str, conn_id: str, rooms: tuple[str, ...], graced: bool) -> None:
        if not rooms:
            return
        if not graced or self._grace <= 0 or self._count + len(rooms) > self.MAX_PENDING:
            self._tasks.spawn(self._forget([(user, conn_id, rooms)]))
            return
        loop = asyncio.get_running_loop()
        self._pending.append((loop.time() + self._grace, user, conn_id, rooms))
        self._count += len(rooms)
        if self._timer is None:
            self._seen = (loop.time(), self._opened())
            self._timer = loop.call_at(self._pending[0][0], self._expire)

    def flush(self) -> None:
        """Tell every pending departure now (a draining instance, before its stores close)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._take(float("inf"))

    def _storming(self, now: float) -> bool:
        then, opened_then = self._seen
        opened = self._opened()
        self._seen = (now, opened)
        return now > then and (opened - opened_then) / (now - then) >= self.STORM_ARRIVALS

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._storming(now):
            self._take(now - (self._longest - self._grace))  # only those closed `longest` ago
            self._timer = loop.call_at(now + 1.0, self._expire)
            return
        self._take(now)
        if self._pending:
            self._timer = loop.call_at(max(self._pending[0][0], now + 0.05), self._expire)

    def _take(self, until: float) -> None:
        due = []
        while self._pending and self._pending[0][0] <= until:
            _, user, conn_id, rooms = self._pending.popleft()
            self._count -= len(rooms)
            due.append((user, conn_id, rooms))
        if due:
            self._tasks.spawn(self._forget(due))

    async def _forget(self, due: list[tuple[str, str, tuple[str, ...]]]) -> None:
        for user, conn_id, rooms in due:
            for room in rooms:
                await self._forget_one(user, conn_id, room)
