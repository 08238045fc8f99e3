"""Fanout: a frame to every local member of a room, then to the other instances through the bus.

The frame is encoded once by the caller; the same bytes go to every local socket (nothing per
recipient but queueing them) and in one bus publish to the other instances.

History entries (message, message_updated, message_deleted) first get their offset. In memory
they are then delivered like any frame. With Redis, the history's script publishes them and
every instance, this one included, delivers them as the bus brings them: in offset order, so a
member never sees offset 6 before offset 5 published elsewhere (one round trip later for the
publishing instance's members, measured in BENCHMARKS.md). Each room's last delivered position
is kept while it has local members: an entry at or below it is not delivered twice, and one past
the next offset means this instance missed entries (its subscription was down, Redis paused, a
failover): the room's live entries are held while the missing ones are read from the history,
then all go out in order. An entry that cannot be stored is delivered to nobody: the sender is
refused (messages.py), so the rooms of every instance stay one conversation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

from schemas.protocol import CLOSE_SLOW, Channel, room_channel
from services.backoff import Backoff
from services.bus import Bus, BusEvent
from services.errors import BusError, StoreError
from services.history import History, Position
from services.hub.joins import Holds, JoinHold, presence_fields
from services.hub.members import MemberView
from services.hub.tasks import TaskGroup
from services.metrics import METRICS
from services.session import Session

log = logging.getLogger("gateway.hub")

FILL_ATTEMPTS = 12  # reads of a gap's entries (with backoff up to 2 s: about 15 s) before giving up


class Fanout:
    def __init__(
        self,
        bus: Bus,
        members: MemberView,
        holds: Holds,
        history: History | None = None,
        tasks: TaskGroup | None = None,
        most: int = 0,
    ) -> None:
        """`tasks` runs a gap's catch-up in the background; `most` entries are read for one."""
        self._bus = bus
        self._members = members
        self._holds = holds  # joiners whose frames are held or filtered (joins.py)
        self._history = history
        self.positions: dict[str, Position] = {}  # room -> last entry delivered here
        self._tasks = tasks
        self._most = most
        self._filling: dict[str, list[tuple[bytes, Position]]] = {}  # room -> live entries held meanwhile
        self._publish_failing = False

    async def broadcast_entry(self, room: str, frame: bytes, message_id: str = "") -> Position | None:
        """An entry to the room on every instance; its position, None with history off. Raises
        StoreError (or BusError with history off) when it cannot get there: then nobody gets it,
        not this instance's members either (docs/protocol.md, "What an ack means")."""
        if self._history is None:
            try:
                await self._bus.publish(room_channel(room).key, BusEvent(frame=frame, origin=self._bus.instance_id))
            except BusError:
                METRICS.bus_publish_failures.inc()
                raise
            self.deliver_local(room, frame, None)
            return None
        position, frame = await self._history.append(room, frame, message_id, self.positions.get(room))
        METRICS.history_appends.inc()
        if not self._history.publishes:
            self.deliver_entry(room, frame, position)
            event = BusEvent(frame=frame, origin=self._bus.instance_id, offset=position.offset, epoch=position.epoch)
            await self.publish(room_channel(room), event)
        return position

    def deliver_entry(self, room: str, frame: bytes, position: Position, fill_gaps: bool = True) -> bool:
        """An entry with its position to the local members, unless already delivered (False); after
        a gap, once the missing entries are back from the history (`fill_gaps`)."""
        held = self._filling.get(room)
        if held is not None:
            held.append((frame, position))
            return True
        last = self.positions.get(room)
        if last is not None and last.epoch == position.epoch:
            if position.offset <= last.offset:
                return False
            if fill_gaps and position.offset > last.offset + 1 and self._fill(room, last):
                self._filling[room].append((frame, position))
                return True
        elif last is not None and self._history is not None and self._history.publishes:
            METRICS.epoch_renewals.labels("lost").inc()
        if self._members.in_room(room):
            self.positions[room] = position
        self.deliver_local(room, frame, None, position)
        return True

    def catch_up(self) -> None:
        """After the bus was away: every room with a known position reads what followed it."""
        for room, last in list(self.positions.items()):
            self._fill(room, last)

    def _fill(self, room: str, last: Position) -> bool:
        if self._history is None or self._tasks is None or not self._history.publishes or room in self._filling:
            return False
        self._filling[room] = []
        self._tasks.spawn(self._read_missing(room, last))
        return True

    async def _read_missing(self, room: str, last: Position) -> None:
        """Read what followed `last`; while Redis cannot answer (it has only just come back), try
        again with backoff, the live entries held meanwhile (at most a history's worth of them)."""
        entries: list[bytes] = []
        backoff = Backoff(0.2, 2.0)
        try:
            for _ in range(FILL_ATTEMPTS):
                try:
                    # `known`: a history now behind `last` was lost (a failover without the last
                    # entries) and gets a new epoch, so no later entry reuses an offset seen here.
                    if self._history is not None:
                        entries = (await self._history.recover(room, last, self._most, known=last)).entries or []
                    break
                except StoreError:
                    if not self._members.in_room(room) or len(self._filling.get(room, ())) > self._most:
                        break  # nobody left to fill, or more held than a history holds: give up
                    await asyncio.sleep(backoff.next())
            # (given up: the members see the offsets jump, a loss they are told of: docs/protocol.md)
        finally:
            held = self._filling.pop(room, [])
        # The history's entries follow `last` one by one, in the epoch it had; what it could not give
        # is a jump the members see, not a gap to fill again.
        filled = 0
        for index, frame in enumerate(entries):
            filled += self.deliver_entry(room, frame, Position(last.offset + 1 + index, last.epoch), fill_gaps=False)
        METRICS.gap_fills.inc(filled)
        for frame, position in held:
            self.deliver_entry(room, frame, position, fill_gaps=False)

    def forget(self, room: str) -> None:
        """The room has no local member left."""
        self.positions.pop(room, None)

    async def broadcast(self, room: str, frame: bytes, exclude: str | None = None) -> None:
        self.deliver_local(room, frame, exclude)
        await self.publish(room_channel(room), BusEvent(frame=frame, origin=self._bus.instance_id, exclude=exclude))

    async def publish(self, channel: Channel, event: BusEvent) -> None:
        try:
            await self._bus.publish(channel.key, event)
        except BusError as exc:
            # Local members already have it; other instances miss it (at-most-once across instances).
            METRICS.bus_publish_failures.inc()
            if not self._publish_failing:  # once per outage, not once per event
                self._publish_failing = True
                log.warning("bus publish failing", extra={"channel": channel.key, "error": str(exc)})
            return
        if self._publish_failing:
            self._publish_failing = False
            log.info("bus publish recovered")

    def deliver_local(self, room: str, frame: bytes, exclude: str | None, position: Position | None = None) -> None:
        members = self._members.in_room(room)
        if not members:
            return
        holds = self._holds.in_room(room)  # looked up once per broadcast, not per recipient
        if holds is not None:
            self._deliver_with_holds(members, holds, frame, exclude, position)
            return
        delivered = 0
        for session in tuple(members):
            if session.conn_id != exclude and session.send(frame):
                delivered += 1
        METRICS.deliveries.inc(delivered)

    def _deliver_with_holds(
        self,
        members: Collection[Session],
        holds: dict[Session, JoinHold],
        frame: bytes,
        exclude: str | None,
        position: Position | None,
    ) -> None:
        presence = presence_fields(frame)
        delivered = 0
        for session in tuple(members):
            if session.conn_id == exclude:
                continue
            hold = holds.get(session)
            if hold is None or hold.admit(frame, presence, position):
                if session.send(frame):
                    delivered += 1
            elif hold.overflowed:  # more held than its outbound queue may hold: a slow consumer
                session.close(CLOSE_SLOW, "slow consumer", flush=False)
        METRICS.deliveries.inc(delivered)
