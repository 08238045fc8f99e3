"""Roster: what a room's members are told about each other (docs/protocol.md, "Large rooms").

A room's members are listed a page at a time (`presence_state {roomId, count, members, next?}`,
sorted by user id, `next` an opaque cursor). Per-user `presence` frames go out only while the room
has at most PRESENCE_BROADCAST_LIMIT users: above it, announcing every join to everyone would make
filling a room cost O(N^2). Instead, every PRESENCE_COUNT_INTERVAL this instance reads the count
of each of its rooms (one round trip for all) and sends `presence_count` to its members of the
large ones whose count changed; a room that falls back to the limit gets a fresh first page, and
per-user frames resume.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Collection
from typing import Any

from services import frames
from services.errors import ClientError, StoreError
from services.hub.fanout import Fanout
from services.hub.members import MemberView
from services.hub.tasks import TaskGroup
from services.ids import iso, iso_now
from services.presence import OFFLINE, ONLINE, Page, PresenceStore
from services.session import Session
from services.settings import Settings


def encode_cursor(user: str) -> str:
    return base64.urlsafe_b64encode(user.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The user id a cursor continues after; ClientError for a cursor this gateway did not make."""
    try:
        user = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
        if user:
            return user
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise ClientError("validation_failed", "invalid cursor", details={"cursor": ["invalid cursor"]})


class Roster:
    def __init__(
        self,
        settings: Settings,
        store: PresenceStore,
        fanout: Fanout,
        members: MemberView,
        tasks: TaskGroup,
    ) -> None:
        """`tasks` runs a bus publish of the tick in the background: a hung bus must not hold the
        tick of every other room."""
        self._tasks = tasks
        self._store = store
        self._fanout = fanout
        self._members = members
        self.page_size = settings.presence_page
        self.limit = settings.presence_broadcast_limit
        self._interval = settings.presence_count_interval
        self._counts: dict[str, int] = {}  # room -> users in it, as last heard
        self._first: dict[str, tuple[Page, list[dict[str, object]], bytes]] = {}  # first_frame's, per local room
        self._sent: dict[str, int] = {}  # large room -> the count its members were last sent
        # Rooms where this instance left a join or leave unannounced (the room was large then): once
        # the room is back within the limit, its members on every instance get a fresh first page,
        # even if no tick saw it large (issue: above and back below within one interval, a watcher
        # never learnt that the first of three leavers had left).
        self._unannounced: set[str] = set()
        self._ticker: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.ensure_future(self._tick_forever())

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    async def enter(self, room: str, session: Session, now: float) -> Page:
        """Record a joining connection; announce the user when new to a room that announces;
        the first page for the joiner."""
        new_user, count = await self._store.join(room, session.user_id, session.conn_id, now)
        self._counts[room] = count
        first = await self._store.page(room, None, self.page_size)
        if new_user:
            if self.announces(room):
                presence = {"roomId": room, "userId": session.user_id, "status": ONLINE, "at": iso(now)}
                await self._fanout.broadcast(room, frames.encode("presence", presence), exclude=session.conn_id)
            else:
                self._unannounced.add(room)
        return first

    async def exit(self, room: str, user: str, conn_id: str, announce: bool) -> bool:
        """Forget a connection; True (and offline announced, when asked and the room announces)
        when it was the user's last in the room."""
        gone, count = await self._store.leave(room, user, conn_id)
        if room in self._counts:
            self._counts[room] = count
        if gone and announce:
            if self.announces(room, count):
                presence = {"roomId": room, "userId": user, "status": OFFLINE, "at": iso_now()}
                await self._fanout.broadcast(room, frames.encode("presence", presence))
            elif self._members.in_room(room):
                self._unannounced.add(room)
        return gone

    def announces(self, room: str, count: int | None = None) -> bool:
        """Per-user presence frames go to the room: it has at most PRESENCE_BROADCAST_LIMIT users."""
        return (self._counts.get(room, 0) if count is None else count) <= self.limit

    def forget(self, room: str) -> None:
        """No local member left."""
        self._counts.pop(room, None)
        self._first.pop(room, None)
        self._sent.pop(room, None)
        self._unannounced.discard(room)

    async def page(self, room: str, cursor: str | None = None) -> Page:
        after = decode_cursor(cursor) if cursor is not None else None
        return await self._store.page(room, after, self.page_size)

    def first_frame(self, room: str, page: Page) -> tuple[list[dict[str, object]], bytes]:
        """A joiner's presence_state, and its members as JSON, made once per first page the store
        hands out: the memory store hands out the same one until the room changes, so the joiners
        of a storm share one encoding instead of making a hundred members' JSON each."""
        cached = self._first.get(room)
        if cached is not None and cached[0] is page:
            return cached[1], cached[2]
        members = [m.as_json() for m in page.members]
        frame = self.frame(room, page, members=members)
        self._first[room] = (page, members, frame)
        return members, frame

    def frame(
        self, room: str, page: Page, request_id: str | None = None, members: list[dict[str, object]] | None = None
    ) -> bytes:
        """`members`: the page's members as JSON, when the caller has them already."""
        return frames.encode("presence_state", self.listing(room, page, members), request_id)

    def listing(self, room: str, page: Page, members: list[dict[str, object]] | None = None) -> dict[str, Any]:
        """`{roomId, count, members, next?}`: a presence_state's payload and the control API's answer."""
        listed = members if members is not None else [m.as_json() for m in page.members]
        payload: dict[str, Any] = {"roomId": room, "count": page.count, "members": listed}
        if page.more and page.members:
            payload["next"] = encode_cursor(page.members[-1].user_id)
        return payload

    async def tick(self) -> None:
        """Read every local room's count; tell the members of large rooms what changed."""
        rooms = self._members.room_ids()
        if not rooms:
            return
        try:
            counts = await self._store.counts(rooms)
        except StoreError:
            return
        for room, count in zip(rooms, counts, strict=True):
            members = self._members.in_room(room)
            if not members:
                continue
            self._counts[room] = count
            if count > self.limit:
                if self._sent.get(room) != count:
                    self._sent[room] = count
                    self._send(members, frames.encode("presence_count", {"roomId": room, "count": count}))
            elif room in self._sent or room in self._unannounced:
                # Back to the limit or below: a fresh list, then per-user frames.
                try:
                    first = await self._store.page(room, None, self.page_size)
                except StoreError:
                    continue  # the next tick tries again
                self._sent.pop(room, None)
                if room in self._unannounced:  # other instances' members may not know either
                    self._unannounced.discard(room)
                    self._tasks.spawn(self._fanout.broadcast(room, self.frame(room, first)))
                else:
                    self._send(members, self.frame(room, first))

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.tick()

    @staticmethod
    def _send(members: Collection[Session], frame: bytes) -> None:
        for session in tuple(members):
            session.send(frame)
