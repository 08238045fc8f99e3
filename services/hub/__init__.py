"""RoomHub: rooms -> local sessions, users -> local sessions, and the protocol's decisions.

The hub knows nothing of Tornado (it gets Sessions and validated payloads) and talks to the outside
only through interfaces (bus, presence, dedupe, history, ingest). It routes through its own modules:

    access.py     who may join: the token's rooms, removals, the join hook
    channels.py   which bus channels are subscribed (per-channel counted locks)
    control.py    what a user's tokens allow; disconnect, revoke and remove a user on every instance
    departures.py a session out of a room, however it leaves
    fanout.py     a frame to the local members of a room, then one bus publish
    joins.py      what a joiner is sent while its join is under way
    members.py    rooms -> local sessions, users -> local sessions (the parts get a read-only view)
    messages.py   a client message through dedupe, Kafka and broadcast (durable ack)
    ordering.py   one sender's messages in order
    recovery.py   a joiner's position in the room's history, and what it is replayed
    roster.py     member pages and counts; per-user presence only in rooms up to the limit
    statuses.py   presence changes as frames, typing timers
    tasks.py      background work, supervised
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

from schemas.protocol import CLOSE_TOO_MANY_CONNECTIONS, ChannelKind, control_channel, room_channel
from services import frames
from services.bus import Bus, BusEvent
from services.dedupe import DedupeStore
from services.errors import BusError, ClientError
from services.history import ENTRY_TYPES, History, Position
from services.hooks import Hooks
from services.hub.access import Access
from services.hub.channels import Subscriptions
from services.hub.control import Control
from services.hub.departures import Departures
from services.hub.fanout import Fanout
from services.hub.joins import Holds, JoinHold
from services.hub.members import Members
from services.hub.messages import Ingest, MessagePipeline
from services.hub.ordering import SenderOrder
from services.hub.recovery import Recovery
from services.hub.roster import Roster
from services.hub.statuses import Statuses
from services.hub.tasks import TaskGroup
from services.metrics import METRICS
from services.online import OnlineTracker
from services.presence import PresenceStore
from services.ratelimit import EXPENSIVE_COST, reply_cost
from services.revocation import NOTHING, Revocations, RevocationStore
from services.revocation.memory import MemoryRevocations
from services.session import Session
from services.settings import Settings

log = logging.getLogger("gateway.hub")

# A room's bus action: every instance takes its sessions out of the deleted room.
ACTION_DELETE_ROOM = "delete_room"


class RoomHub:
    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        presence: PresenceStore,
        dedupe: DedupeStore,
        ingest: Ingest | None = None,
        history: History | None = None,
        revocations: RevocationStore | None = None,
        online: OnlineTracker | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.presence = presence
        self.instance_id = bus.instance_id
        self.online = online  # told when a user's first local socket opens and its last closes
        self.members = members = Members()
        self.holds = Holds()
        self._orders: dict[Session, SenderOrder] = {}
        self.channels = Subscriptions(bus)
        self.tasks = tasks = TaskGroup()
        self.fanout = Fanout(bus, members, self.holds, history, tasks, settings.history_size)
        self.recovery = Recovery(settings, history, self.fanout)
        self.hooks = hooks or Hooks(settings, self.instance_id)
        self.messages = MessagePipeline(settings, dedupe, ingest, self.fanout, self.hooks)
        self.roster = Roster(settings, presence, self.fanout, members, tasks)
        self.statuses = Statuses(settings, presence, self.roster, self.fanout, members, tasks)
        parts = (members, self.holds, self.fanout, self.roster, self.statuses, self.channels, tasks)
        self.departures = Departures(*parts, settings.presence_grace, settings.offline_grace)
        self.control = Control(
            revocations or MemoryRevocations(), settings, bus, members, self.departures, self.hooks.decisions
        )
        self.access = Access(settings, self.control, self.hooks)
        # Who acts on the events of the channels that are not rooms (services/sse adds RELAY).
        self.listeners: dict[ChannelKind, Callable[[BusEvent], None]] = {ChannelKind.CONTROL: self.control.apply}

    @property
    def rooms(self) -> Mapping[str, Collection[Session]]:
        return self.members.rooms

    @property
    def users(self) -> Mapping[str, Collection[Session]]:
        return self.members.users

    async def start(self) -> None:
        await self.bus.start(self._on_bus_event, self._on_bus_resync)
        await self.channels.ensure(control_channel())
        await self.presence.start(self.statuses.expired, self.statuses.restored)
        self.roster.start()

    async def close(self) -> None:
        self.statuses.close()
        self.roster.close()
        await self.tasks.cancel()

    async def settle(self, timeout: float = 5.0) -> None:
        self.departures.graces.flush()  # the sockets are closed: no grace left to wait for
        await self.tasks.settle(timeout)  # bounded: background work such as disconnect clean-up

    def spawn(self, aw: Awaitable[Any]) -> None:
        self.tasks.spawn(aw)

    def connect(self, session: Session, revocations: Revocations = NOTHING, since: float | None = None) -> bool:
        """Register a new session, with the records its handshake (begun at `since`, Unix time)
        loaded (services/revocation); False (and close 4029) when the user has too many connections."""
        user = session.user_id
        count = self.members.add_user(session, self.settings.max_user_connections)
        if not count:
            session.close(CLOSE_TOO_MANY_CONNECTIONS, "too many connections for this user")
            return False
        if count == 1 and self.online is not None:
            self.online.opened(user)
        self._orders[session] = SenderOrder()
        METRICS.connections.labels(session.transport_kind).inc()
        self.control.connected(session, revocations, since)
        return True

    async def disconnect(self, session: Session) -> None:
        last = self.members.remove_user(session)
        if last is None:
            return
        self._orders.pop(session, None)
        METRICS.connections.labels(session.transport_kind).dec()
        if last:  # now, not after the leaves: a socket of the user opened meanwhile is a new opening
            self.control.forget(session.user_id)
            if self.online is not None:
                self.online.closed(session.user_id)
        self.departures.closed(session)

    # -- join / leave ------------------------------------------------------------------------

    async def join(
        self, session: Session, room: str, request_id: str | None, since: dict[str, Any] | None = None
    ) -> None:
        """Join a room; with `since`, replay what the joiner missed (recovery.py) after the reply.

        The reply and the snapshot come first: what the room delivers while the join is under
        way (its subscription is live from the start) is held and sent after them, less the
        presence frames the snapshot already says (issue: with several instances a joiner saw
        others' `online` before its own `joined`, and again after its snapshot)."""
        self.access.check(session, room)
        hold: JoinHold | None = None
        member_already = room in session.rooms
        if not member_already:
            await self.access.admit(session, room)
            refused: ClientError | None = None

            def add_member() -> None:
                nonlocal hold, refused
                # Asked again: while it waited the socket may have closed, a removal come, MAX_ROOMS filled.
                if (refused := self.access.still(session, room)) is None:
                    self.members.add_to_room(room, session)
                    hold = self.holds.start(room, session, self.settings.outbound_queue_frames)
                    session.rooms.add(room)

            try:
                await self.channels.ensure(room_channel(room), then=add_member)
            except BusError:
                raise ClientError("unavailable", "room is unavailable (Redis), try again", roomId=room) from None
            if refused is not None:
                self.spawn(self.departures.drop_channel(room))
                raise refused
            try:
                first = await self.roster.enter(room, session, time.time())
                answer = await self.recovery.join(room, since, member_already)
            except BaseException:
                if room in session.rooms:
                    self.departures.detach(session, room)  # drops the hold too; the store is told below
                    self.spawn(self.departures.after_detach(session, room, announce=False))
                raise
            if room not in session.rooms:  # removed meanwhile: it got room_update removed/deleted
                raise ClientError("not_in_room", "removed from the room while joining", roomId=room)
        else:
            first = await self.roster.page(room)
            answer = await self.recovery.join(room, since, member_already)
        if since is not None:  # the frame paid EXPENSIVE_COST already
            session.rate.charge(reply_cost(sum(map(len, answer.replay))) - EXPENSIVE_COST)
        joined: dict[str, Any] = {"roomId": room, "action": "joined", **answer.fields}
        session.send(frames.encode("room_update", joined, request_id))
        await self.recovery.replay(session, answer.replay)
        members, state = self.roster.first_frame(room, first)
        session.send(state)
        if hold is not None:
            # A room above PRESENCE_BROADCAST_LIMIT sends no per-user presence: nothing to filter
            # with the snapshot (it was a fifth of the CPU of filling a big room, BENCHMARKS.md).
            small = first.count <= self.roster.limit
            delivered = self.fanout.positions.get(room)
            self.holds.release(
                room, session, hold, members if small else [], small and not first.more, answer.seen, delivered
            )

    async def leave(self, session: Session, room: str, request_id: str | None) -> None:
        if room not in session.rooms:
            raise ClientError("not_in_room", "not a member of this room", roomId=room)
        await self.departures.leave(session, room)
        session.send(frames.encode("room_update", {"roomId": room, "action": "left"}, request_id))

    # -- messages and presence ---------------------------------------------------------------

    async def message(self, session: Session, payload: dict[str, Any], request_id: str | None) -> None:
        room = payload["roomId"]
        if room not in session.rooms:
            raise ClientError(
                "not_in_room", "join the room before sending to it", roomId=room, dedupeKey=payload.get("dedupeKey")
            )
        order = self._orders.get(session) or SenderOrder()  # a session gone meanwhile: order no longer matters
        await self.messages.handle(session, order, payload, request_id)

    def owe(self, session: Session, room: str, key: str | None, after: Sequence[Awaitable[None]]) -> None:
        """A message refused before its turn (too many frames waiting), placed after `after` (ordering.py)."""
        if (order := self._orders.get(session)) is not None:
            self.spawn(order.refused(room, key, after))

    async def history_of(self, session: Session, room: str, limit: int, request_id: str | None) -> None:
        if room not in session.rooms:
            raise ClientError("not_in_room", "join the room before reading its history", roomId=room)
        reply = await self.recovery.history(room, limit, request_id)
        session.rate.charge(reply_cost(len(reply)) - EXPENSIVE_COST)  # the frame paid EXPENSIVE_COST already
        session.send(reply)

    async def presence_query(self, session: Session, room: str, cursor: str | None, request_id: str | None) -> None:
        if room not in session.rooms:
            raise ClientError("not_in_room", "join the room before listing its members", roomId=room)
        session.send(self.roster.frame(room, await self.roster.page(room, cursor), request_id))

    async def set_presence(self, session: Session, room: str, status: str) -> None:
        """Run in the background by the socket; one at a time per connection (ordering.py)."""
        order = self._orders.get(session) or SenderOrder()  # a session gone meanwhile: order no longer matters
        async with order.presence():
            if room not in session.rooms:
                raise ClientError("not_in_room", "join the room before setting presence in it", roomId=room)
            await self.statuses.set(room, session.user_id, status)

    # -- events from elsewhere (Kafka consumer, control API) ----------------------------------

    async def deliver(self, room: str, frame_type: str, payload: dict[str, Any]) -> None:
        """Bring a frame to every member of `room` on every instance (an entry of its history when
        it is a message, message_updated or message_deleted)."""
        frame = frames.encode(frame_type, payload)
        if frame_type in ENTRY_TYPES:
            await self.fanout.broadcast_entry(room, frame)
        else:
            await self.fanout.broadcast(room, frame)

    async def delete_room(self, room: str) -> None:
        frame = frames.encode("room_update", {"roomId": room, "action": "deleted"})
        event = BusEvent(frame=frame, origin=self.instance_id, action=ACTION_DELETE_ROOM)
        self.departures.remove(room, list(self.members.in_room(room)), frame, announce=False)
        await self.fanout.publish(room_channel(room), event)

    # -- the bus -----------------------------------------------------------------------------

    def _on_bus_event(self, key: str, event: BusEvent) -> None:
        """Another instance's event, or any instance's history entry (Redis history)."""
        channel = self.channels.get(key)
        if channel is None:
            return  # unsubscribed meanwhile
        if (listener := self.listeners.get(channel.kind)) is not None:
            listener(event)
        elif event.action is not None:
            if event.action == ACTION_DELETE_ROOM:
                # A deleted room needs no offline announcements: nobody is left to hear them.
                self.departures.remove(
                    channel.name, list(self.members.in_room(channel.name)), event.frame, announce=False
                )
            # (an action this version does not know, from a newer instance: nothing to do)
        elif event.offset is not None and event.epoch is not None and event.frame is not None:
            self.fanout.deliver_entry(channel.name, event.frame, Position(event.offset, event.epoch))
        elif event.frame is not None:
            self.fanout.deliver_local(channel.name, event.frame, event.exclude)

    def _on_bus_resync(self) -> None:
        """Back after an outage: fresh presence_state for every member, and the entries missed."""
        self.spawn(self.statuses.resend_snapshots())
        self.recovery.catch_up()
