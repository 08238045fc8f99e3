"""RoomHub: rooms -> local sessions, users -> local sessions, and the protocol's decisions.

The hub knows nothing of Tornado: it gets Sessions and payloads already validated by the handler,
and talks to the outside only through the Bus, PresenceStore, DedupeStore and Ingest interfaces.
A room's bus channel is subscribed when its first local member joins and unsubscribed when the
last one leaves. Every broadcast frame is encoded once and delivered locally before it is
published for the other instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol

import orjson

from services import frames
from services.bus import Bus, BusEvent
from services.dedupe import PENDING, DedupeStore
from services.errors import BusError, ClientError, IngestError
from services.ids import iso, iso_now, uuid7
from services.metrics import METRICS
from services.presence import OFFLINE, ONLINE, PresenceStore
from services.session import CLOSE_SLOW, CLOSE_TOO_MANY_CONNECTIONS, Session
from services.settings import Settings

log = logging.getLogger("gateway.hub")

# Bus actions: membership changes every instance applies to its own sessions.
ACTION_REMOVE_USER = "remove_user"
ACTION_DELETE_ROOM = "delete_room"


class Ingest(Protocol):
    async def ingest(self, message: dict[str, Any]) -> None:
        """Return once the message.ingest record is acknowledged by Kafka; raise IngestError otherwise."""


class _ChannelLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def room_channel(room: str) -> str:
    return f"room:{room}"


def user_channel(user: str) -> str:
    return f"user:{user}"


class RoomHub:
    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        presence: PresenceStore,
        dedupe: DedupeStore,
        ingest: Ingest | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.presence = presence
        self.dedupe = dedupe
        self.ingest = ingest
        self.instance_id = bus.instance_id
        self.rooms: dict[str, set[Session]] = {}
        self.users: dict[str, set[Session]] = {}
        self._subscribed: set[str] = set()
        self._holds: dict[str, dict[Session, _JoinHold]] = {}  # room -> recent joiners (see join)
        self._channel_locks: dict[str, _ChannelLock] = {}
        self._typing_timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._publish_failing = False
        self._user_retries: dict[str, asyncio.Task[None]] = {}  # apart from _tasks: settle() skips them

    async def start(self) -> None:
        await self.bus.start(self._on_bus_event, self._on_bus_resync)
        await self.presence.start(self._on_presence_expired, self._on_presence_restored)

    async def close(self) -> None:
        for timer in self._typing_timers.values():
            timer.cancel()
        self._typing_timers.clear()
        for task in [*self._tasks, *self._user_retries.values()]:
            task.cancel()

    # -- connections -------------------------------------------------------------------------

    async def connect(self, session: Session) -> bool:
        """Register a new session; False (and close 4029) when the user has too many connections."""
        mine = self.users.setdefault(session.user_id, set())
        if len(mine) >= self.settings.max_user_connections:
            if not mine:
                del self.users[session.user_id]
            session.close(CLOSE_TOO_MANY_CONNECTIONS, "too many connections for this user")
            return False
        mine.add(session)
        METRICS.connections.inc()
        try:
            await self._subscribe(user_channel(session.user_id))
        except BusError:  # bus down: keep trying in the background while the user is connected
            user = session.user_id
            if user not in self._user_retries:
                task = asyncio.ensure_future(self._resubscribe_user(user))
                self._user_retries[user] = task
                task.add_done_callback(lambda _: self._user_retries.pop(user, None))
        return True

    async def _resubscribe_user(self, user: str) -> None:
        delay = 0.5
        while self.users.get(user):
            await asyncio.sleep(delay)
            if not self.users.get(user):
                return
            try:
                await self._subscribe(user_channel(user))
                return
            except BusError:
                delay = min(delay * 2, 10.0)

    async def disconnect(self, session: Session) -> None:
        mine = self.users.get(session.user_id)
        if mine is None or session not in mine:
            return
        mine.discard(session)
        METRICS.connections.dec()
        for room in list(session.rooms):
            await self._leave(session, room)
        if not mine:
            del self.users[session.user_id]
            await self._unsubscribe_if_unused(user_channel(session.user_id))

    # -- join / leave ------------------------------------------------------------------------

    async def join(self, session: Session, room: str, request_id: str | None, recovering: bool = False) -> None:
        """Join a room. A join with `since` (recovery) is answered `recovered: false` until this
        gateway keeps room history: the client knows to fetch what it missed elsewhere.

        The reply and the snapshot come first: what the room delivers while the join is under
        way (its subscription is live from the start) is held and sent after them, less the
        presence frames the snapshot already says (issue: with several instances a joiner saw
        others' `online` before its own `joined`, and again after its snapshot)."""
        ident = session.identity
        if self.settings.room_access == "token" and not ident.may_join(room):
            raise ClientError("forbidden_room", "this token does not allow joining the room", roomId=room)
        hold: _JoinHold | None = None
        if room not in session.rooms:
            if len(session.rooms) >= self.settings.max_rooms:
                raise ClientError(
                    "too_many_rooms", f"at most {self.settings.max_rooms} rooms per connection", roomId=room
                )
            channel = room_channel(room)
            hold = _JoinHold(self.settings.outbound_queue_frames)
            async with self._lock(channel):
                if channel not in self._subscribed:
                    try:
                        await self.bus.subscribe(channel)
                    except BusError:
                        raise ClientError("internal", "room is unavailable, try again", roomId=room) from None
                    self._subscribed.add(channel)
                self.rooms.setdefault(room, set()).add(session)
                self._holds.setdefault(room, {})[session] = hold
                session.rooms.add(room)
                METRICS.rooms.set(len(self.rooms))
            try:
                now = time.time()
                new_user = await self.presence.join(room, session.user_id, session.conn_id, now)
                members = await self.presence.members(room)
                if new_user:
                    frame = frames.encode(
                        "presence", {"roomId": room, "userId": session.user_id, "status": ONLINE, "at": iso(now)}
                    )
                    await self._broadcast(room, frame, exclude=session.conn_id)
            except BaseException:
                self._detach(session, room)  # drops the hold too; the store is told in the background
                self.spawn(self._after_leave(session, room, announce=False))
                raise
            if room not in session.rooms:  # removed meanwhile: it got room_update removed/deleted
                raise ClientError("not_in_room", "removed from the room while joining", roomId=room)
        else:
            members = await self.presence.members(room)
        joined: dict[str, Any] = {"roomId": room, "action": "joined"}
        if recovering:
            joined["recovered"] = False
        snapshot = [m.as_json() for m in members]
        session.send(frames.encode("room_update", joined, request_id))
        session.send(frames.encode("presence_state", {"roomId": room, "members": snapshot}))
        if hold is not None:
            for frame in hold.release(snapshot, time.time()):
                session.send(frame)
            if hold.snapshot:  # keeps filtering late presence for a while (see _JoinHold)
                asyncio.get_running_loop().call_later(JOIN_FILTER_GRACE, self._release_hold, room, session, hold)
            else:
                self._release_hold(room, session, hold)

    def _release_hold(self, room: str, session: Session, hold: _JoinHold) -> None:
        holds = self._holds.get(room)
        if holds is not None and holds.get(session) is hold:
            del holds[session]
            if not holds:
                del self._holds[room]

    async def leave(self, session: Session, room: str, request_id: str | None) -> None:
        if room not in session.rooms:
            raise ClientError("not_in_room", "not a member of this room", roomId=room)
        await self._leave(session, room)
        session.send(frames.encode("room_update", {"roomId": room, "action": "left"}, request_id))

    def _detach(self, session: Session, room: str) -> None:
        """The local, synchronous half of a leave: from here on the session gets nothing of the room."""
        session.rooms.discard(room)
        holds = self._holds.get(room)
        if holds is not None and holds.pop(session, None) is not None and not holds:
            del self._holds[room]
        members = self.rooms.get(room)
        if members is not None:
            members.discard(session)
            if not members:
                del self.rooms[room]
                METRICS.rooms.set(len(self.rooms))

    async def _leave(self, session: Session, room: str, announce: bool = True) -> None:
        """Remove one session from a room; announce offline when it was the user's last connection."""
        self._detach(session, room)
        await self._after_leave(session, room, announce)

    async def _after_leave(self, session: Session, room: str, announce: bool = True) -> None:
        user = session.user_id
        try:
            gone = await self.presence.leave(room, user, session.conn_id)
        except Exception:
            log.exception("presence leave failed", extra={"room": room})
            gone = False
        if gone:
            self._cancel_typing(room, user)
            if announce:
                await self._broadcast(
                    room,
                    frames.encode("presence", {"roomId": room, "userId": user, "status": OFFLINE, "at": iso_now()}),
                )
        elif (room, user) in self._typing_timers and not any(room in s.rooms for s in self.users.get(user, ())):
            # Still in the room through another instance, but the timer that would lapse this
            # instance's "typing" dies with its last local connection: lapse it now.
            self._cancel_typing(room, user)
            self.spawn(self._publish_status(room, user, ONLINE))
        await self._unsubscribe_if_unused(room_channel(room))

    # -- messages ----------------------------------------------------------------------------

    async def message(self, session: Session, payload: dict[str, Any], request_id: str | None) -> None:
        room = payload["roomId"]
        dedupe_key: str | None = payload.get("dedupeKey")
        if room not in session.rooms:
            raise ClientError("not_in_room", "join the room before sending to it", roomId=room, dedupeKey=dedupe_key)
        # One sender's messages keep their order twice over: the dedupe claim and the Kafka produce
        # happen in sending order (stage), and so do the broadcasts (publish), while the Kafka
        # delivery reports of several messages are awaited at the same time.
        loop = asyncio.get_running_loop()
        stage_prev, stage = session.last_stage, loop.create_future()
        publish_prev, published = session.last_publish, loop.create_future()
        session.last_stage, session.last_publish = stage, published
        try:
            await self._message(session, payload, request_id, stage_prev, stage, publish_prev)
        finally:
            _resolve(stage)
            if publish_prev is not None and not publish_prev.done():
                await asyncio.wait([publish_prev])  # never publish ahead of a predecessor, even failing
            _resolve(published)
            if session.last_stage is stage:
                session.last_stage = None
            if session.last_publish is published:
                session.last_publish = None

    async def _message(
        self,
        session: Session,
        payload: dict[str, Any],
        request_id: str | None,
        stage_prev: asyncio.Future[None] | None,
        stage: asyncio.Future[None],
        publish_prev: asyncio.Future[None] | None,
    ) -> None:
        room = payload["roomId"]
        dedupe_key: str | None = payload.get("dedupeKey")
        if stage_prev is not None and not stage_prev.done():
            await asyncio.wait([stage_prev])
        msg_id = uuid7()
        created = iso_now()
        # Scope (sender, room, key): the same key in another room is another message. Length-prefixed:
        # user "a" with key "b:c" is not user "a:b" with key "c".
        store_key = (
            f"dk:{len(session.user_id)}:{session.user_id}:{len(room)}:{room}:{dedupe_key}"
            if dedupe_key is not None
            else None
        )
        if store_key is not None:
            first = await self._claim(store_key, room, dedupe_key)
            if first is not None:  # seen before: the same ack, no second broadcast
                ack = {"id": first[0], "roomId": room, "createdAt": first[1], "dedupeKey": dedupe_key}
                session.send(frames.encode("ack", ack, request_id))
                return
        message: dict[str, Any] = {
            "id": msg_id,
            "roomId": room,
            "senderType": "human",
            "senderId": session.user_id,
            "content": payload["content"],
            "attachments": payload.get("attachments") or [],
            "createdAt": created,
        }
        if dedupe_key is not None:
            message["dedupeKey"] = dedupe_key
        try:
            if self.ingest is not None:
                # Lets the Kafka consumer skip this message's copy coming back as message.created;
                # set before the ingest, as that copy may be consumed before our delivery report.
                await self.dedupe.put(f"id:{msg_id}", "1", self.settings.dedupe_ttl)
                delivery = asyncio.ensure_future(self.ingest.ingest(message))
                # The produce call runs in that task's first step, before any later message's.
                _resolve(stage)
                await delivery
        except IngestError as exc:
            if store_key is not None:
                await self.dedupe.release(store_key)
            raise ClientError(
                "ingest_failed", f"message not stored: {exc}", roomId=room, dedupeKey=dedupe_key
            ) from None
        _resolve(stage)
        if publish_prev is not None and not publish_prev.done():
            await asyncio.wait([publish_prev])
        # Past this point the message is accepted (and durable with Kafka): a store failure no
        # longer stops its broadcast.
        if store_key is not None:
            await self.dedupe.put(store_key, f"{msg_id} {created}", self.settings.dedupe_ttl)
        await self._broadcast(room, frames.encode("message", message))
        ack = {"id": msg_id, "roomId": room, "createdAt": created}
        if dedupe_key is not None:
            ack["dedupeKey"] = dedupe_key
        session.send(frames.encode("ack", ack, request_id))
        METRICS.messages.inc()

    async def _claim(self, key: str, room: str, dedupe_key: str | None) -> tuple[str, str] | None:
        """Reserve a dedupe key. None: ours to process. Else the first message's (id, createdAt),
        waiting while the first send is still in flight (its ingest may yet fail and free the key)."""
        deadline = time.monotonic() + self.settings.kafka_message_timeout + 5
        while True:
            existing = await self.dedupe.reserve(key, PENDING, self.settings.kafka_message_timeout + 5)
            if existing is None:
                return None
            if existing != PENDING:
                first_id, _, first_created = existing.partition(" ")
                return first_id, first_created
            if time.monotonic() > deadline:
                raise ClientError(
                    "ingest_failed",
                    "an earlier send with this dedupeKey is still pending",
                    roomId=room,
                    dedupeKey=dedupe_key,
                )
            await asyncio.sleep(0.05)

    # -- presence ----------------------------------------------------------------------------

    async def set_presence(self, session: Session, room: str, status: str) -> None:
        if room not in session.rooms:
            raise ClientError("not_in_room", "join the room before setting presence in it", roomId=room)
        user = session.user_id
        await self._publish_status(room, user, status)
        self._cancel_typing(room, user)
        if status == "typing":
            loop = asyncio.get_running_loop()
            self._typing_timers[(room, user)] = loop.call_later(
                self.settings.typing_ttl, self._typing_lapsed, room, user
            )

    async def _publish_status(self, room: str, user: str, status: str) -> None:
        now = time.time()
        await self.presence.set_status(room, user, status, now)
        await self._broadcast(
            room,
            frames.encode("presence", {"roomId": room, "userId": user, "status": status, "at": iso(now)}),
        )

    def _typing_lapsed(self, room: str, user: str) -> None:
        self._typing_timers.pop((room, user), None)
        if any(room in s.rooms for s in self.users.get(user, ())):
            self.spawn(self._publish_status(room, user, ONLINE))

    def _cancel_typing(self, room: str, user: str) -> None:
        timer = self._typing_timers.pop((room, user), None)
        if timer is not None:
            timer.cancel()

    def _on_presence_expired(self, room: str, user: str) -> None:
        """A dead instance's user (or one whose leave could not be stored): announce offline."""
        self._cancel_typing(room, user)
        self._announce(room, user, OFFLINE)

    def _on_presence_restored(self, room: str, user: str) -> None:
        """A user the store had lost (Redis restarted empty) and got back: announce online."""
        self._announce(room, user, ONLINE)

    def _announce(self, room: str, user: str, status: str) -> None:
        frame = frames.encode("presence", {"roomId": room, "userId": user, "status": status, "at": iso_now()})
        self.spawn(self._broadcast(room, frame))

    # -- events from elsewhere (Kafka consumer) --------------------------------------------------

    async def deliver(self, room: str, frame_type: str, payload: dict[str, Any]) -> None:
        """Bring a frame to every member of `room` on every instance."""
        await self._broadcast(room, frames.encode(frame_type, payload))

    async def remove_user(self, room: str, user: str) -> None:
        frame = frames.encode("room_update", {"roomId": room, "action": "removed"})
        event = BusEvent(frame=frame, origin=self.instance_id, action=ACTION_REMOVE_USER, user=user)
        self._apply(room_channel(room), event)
        await self._publish(room_channel(room), event)

    async def delete_room(self, room: str) -> None:
        frame = frames.encode("room_update", {"roomId": room, "action": "deleted"})
        event = BusEvent(frame=frame, origin=self.instance_id, action=ACTION_DELETE_ROOM)
        self._apply(room_channel(room), event)
        await self._publish(room_channel(room), event)

    # -- fan-out -----------------------------------------------------------------------------

    async def _broadcast(self, room: str, frame: bytes, exclude: str | None = None) -> None:
        event = BusEvent(frame=frame, origin=self.instance_id, exclude=exclude)
        self._deliver_local(room, frame, exclude)
        await self._publish(room_channel(room), event)

    async def _publish(self, channel: str, event: BusEvent) -> None:
        try:
            await self.bus.publish(channel, event)
        except BusError as exc:
            # Local members already have it; other instances miss it (at-most-once across instances).
            METRICS.bus_publish_failures.inc()
            if not self._publish_failing:  # once per outage, not once per event
                self._publish_failing = True
                log.warning("bus publish failing", extra={"channel": channel, "error": str(exc)})
            return
        if self._publish_failing:
            self._publish_failing = False
            log.info("bus publish recovered")

    def _deliver_local(self, room: str, frame: bytes, exclude: str | None) -> None:
        members = self.rooms.get(room)
        if not members:
            return
        holds = self._holds.get(room)  # looked up once per broadcast, not per recipient
        if holds is not None:
            self._deliver_with_holds(members, holds, frame, exclude)
            return
        delivered = 0
        for session in tuple(members):
            if session.conn_id != exclude and session.send(frame):
                delivered += 1
        METRICS.deliveries.inc(delivered)

    def _deliver_with_holds(
        self, members: set[Session], holds: dict[Session, _JoinHold], frame: bytes, exclude: str | None
    ) -> None:
        presence = _presence_fields(frame)
        delivered = 0
        for session in tuple(members):
            if session.conn_id == exclude:
                continue
            hold = holds.get(session)
            if hold is None or hold.admit(frame, presence):
                if session.send(frame):
                    delivered += 1
            elif hold.overflowed:  # more held than its outbound queue may hold: a slow consumer
                session.close(CLOSE_SLOW, "slow consumer", flush=False)
        METRICS.deliveries.inc(delivered)

    def _on_bus_resync(self) -> None:
        """The bus is back after an outage: presence changes published meanwhile never reached us,
        so every local member gets a fresh presence_state snapshot of each of its rooms."""
        self.spawn(self._resend_presence_state())

    async def _resend_presence_state(self) -> None:
        await self.presence.resync()  # our own connections first, or the snapshot would lack them
        for room in list(self.rooms):
            members = await self.presence.members(room)
            frame = frames.encode("presence_state", {"roomId": room, "members": [m.as_json() for m in members]})
            for session in tuple(self.rooms.get(room, ())):
                session.send(frame)

    def _on_bus_event(self, channel: str, event: BusEvent) -> None:
        if event.origin == self.instance_id:
            return  # our own echo: delivered locally already
        self._apply(channel, event)

    def _apply(self, channel: str, event: BusEvent) -> None:
        kind, _, name = channel.partition(":")
        if kind == "user":
            for session in tuple(self.users.get(name, ())):
                if event.frame is not None:
                    session.send(event.frame)
            return
        if kind != "room":
            return
        if event.action is None:
            if event.frame is not None:
                self._deliver_local(name, event.frame, event.exclude)
            return
        targets = [s for s in self.rooms.get(name, ()) if event.action == ACTION_DELETE_ROOM or s.user_id == event.user]
        for session in targets:
            if event.frame is not None:
                session.send(event.frame)
            self._detach(session, name)  # at once: nothing more of the room reaches them
        if targets:
            # A deleted room needs no offline announcements: nobody is left to hear them.
            self.spawn(self._forget_sessions(name, targets, announce=event.action != ACTION_DELETE_ROOM))

    async def _forget_sessions(self, room: str, sessions: list[Session], announce: bool) -> None:
        for session in sessions:
            await self._after_leave(session, room, announce)

    # -- bus subscriptions -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lock(self, channel: str) -> AsyncIterator[None]:
        """Serialise subscribe/unsubscribe of one channel. Counted, so the lock is dropped exactly
        when nobody holds or waits for it (a failed join leaves nothing behind)."""
        entry = self._channel_locks.get(channel)
        if entry is None:
            entry = self._channel_locks[channel] = _ChannelLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._channel_locks[channel]

    async def _subscribe(self, channel: str) -> None:
        async with self._lock(channel):
            if channel not in self._subscribed:
                await self.bus.subscribe(channel)
                self._subscribed.add(channel)

    async def _unsubscribe_if_unused(self, channel: str) -> None:
        kind, _, name = channel.partition(":")
        async with self._lock(channel):
            in_use = bool(self.rooms.get(name)) if kind == "room" else bool(self.users.get(name))
            if in_use or channel not in self._subscribed:
                return
            self._subscribed.discard(channel)
            try:
                await self.bus.unsubscribe(channel)
            except BusError:
                log.warning("bus unsubscribe failed", extra={"channel": channel})

    @property
    def subscribed_channels(self) -> frozenset[str]:
        return frozenset(self._subscribed)

    # -- housekeeping ------------------------------------------------------------------------

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait (bounded) for background work such as disconnect clean-up to finish."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    def spawn(self, aw: Awaitable[Any]) -> None:
        """Run a coroutine in the background, keeping a reference and logging its failure."""
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())


_PRESENCE_PREFIX = b'{"type":"presence",'
JOIN_FILTER_GRACE = 1.0  # seconds a joiner's snapshot keeps filtering late presence from other instances
# Above this many members a joiner keeps no snapshot after its join: holding one per joiner for the
# grace made filling a room O(N^2) in memory. Large rooms get presence counts instead of per-user
# frames (docs: large rooms), so there is little left to filter there.
JOIN_FILTER_MAX_MEMBERS = 200


def _presence_fields(frame: bytes) -> tuple[str, str, str] | None:
    """(userId, status, at) of a presence frame; None for any other frame."""
    if not frame.startswith(_PRESENCE_PREFIX):
        return None
    payload = orjson.loads(frame)["payload"]
    return str(payload.get("userId")), str(payload.get("status")), str(payload.get("at", ""))


class _JoinHold:
    """A joiner's view of one room while its join is under way, and for a grace after.

    Until `release`, the room's frames are held, so the reply and the snapshot go first; of the
    held presence frames those the snapshot already reflects are dropped: the same status for a
    user it lists with a `since` at or after the frame's `at` (both stamped by the instance that
    made the change, so clocks do not matter), or offline for a user it does not list. In a room
    of at most JOIN_FILTER_MAX_MEMBERS the first rule keeps filtering late frames from other
    instances for JOIN_FILTER_GRACE, for the listed users whose state changed in the last moments
    (only their frames can still be in flight), each until news of them gets through. Held frames
    count like queued ones: more than OUTBOUND_QUEUE_FRAMES sets `overflowed`."""

    __slots__ = ("frames", "limit", "overflowed", "snapshot")

    def __init__(self, limit: int) -> None:
        self.frames: list[tuple[bytes, tuple[str, str, str] | None]] | None = []
        self.limit = limit
        self.overflowed = False
        self.snapshot: dict[str, tuple[str, str]] | None = None  # listed user -> (status, since)

    def admit(self, frame: bytes, presence: tuple[str, str, str] | None) -> bool:
        """True: deliver now. False: held, or dropped as already known."""
        if self.frames is not None:
            if len(self.frames) >= self.limit:
                self.overflowed = True
            else:
                self.frames.append((frame, presence))
            return False
        return presence is None or not self._known_late(presence)

    def release(self, snapshot: list[dict[str, object]], now: float) -> list[bytes]:
        """The held frames to send now, less what the snapshot shows. Afterwards only the listed
        users whose state changed lately are kept for the grace: older changes are not in flight."""
        held, self.frames = self.frames or [], None
        users = {presence[0] for _, presence in held if presence is not None}
        listed = {str(m["userId"]): (str(m["status"]), str(m["since"])) for m in snapshot if m["userId"] in users}
        kept: list[bytes] = []
        passed: set[str] = set()
        for frame, presence in held:
            if presence is not None and presence[0] not in passed:
                user, status, at = presence
                entry = listed.get(user)
                if status == OFFLINE:
                    known = entry is None
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
