"""Fanout: a frame to every local member of a room, then to the other instances through the bus.

The frame is encoded once by the caller; the same bytes go to every local socket (nothing per
recipient but queueing them) and in one bus publish to the other instances.
"""

from __future__ import annotations

import logging

from schemas.protocol import CLOSE_SLOW, Channel, room_channel
from services.bus import Bus, BusEvent
from services.errors import BusError
from services.hub.joins import JoinHold, presence_fields
from services.metrics import METRICS
from services.session import Session

log = logging.getLogger("gateway.hub")


class Fanout:
    def __init__(self, bus: Bus, rooms: dict[str, set[Session]], holds: dict[str, dict[Session, JoinHold]]) -> None:
        self._bus = bus
        self._rooms = rooms  # the hub's: room -> local sessions
        self._holds = holds  # the hub's: room -> joiners whose frames are held or filtered
        self._publish_failing = False

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

    def deliver_local(self, room: str, frame: bytes, exclude: str | None) -> None:
        members = self._rooms.get(room)
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
        self, members: set[Session], holds: dict[Session, JoinHold], frame: bytes, exclude: str | None
    ) -> None:
        presence = presence_fields(frame)
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
