"""The bus: how one instance's room events reach every other instance.

Deliberately tiny (centrifuge's Broker, broadcaster's backend). The hub delivers to its own
sockets first and then publishes; a backend never hands an instance its own events back, except
history entries published by the Redis history's script: every instance, the publishing one
included, delivers those in the order Redis assigned their offsets.
`MemoryBus` (memory.py) serves one process; `RedisBus` (redis.py) serves many.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class BusEvent:
    """One event for a channel. `frame` is the encoded server frame for the channel's sockets;
    `action` asks every instance to act on its sessions (remove a user from a room, delete a room;
    on a user's channel: disconnect, revoke, remove from `room` as of `at`); `offset` and `epoch`
    mark a history entry (its frame carries them too)."""

    frame: bytes | None = None
    origin: str = ""
    exclude: str | None = None  # connection id that must not receive the frame
    action: str | None = None
    user: str | None = None
    offset: int | None = None
    epoch: str | None = None
    room: str | None = None
    at: float | None = None  # a moment an action names (tokens issued before it are revoked)
    reason: str | None = None  # a disconnect's, for the close frame


EventHandler = Callable[[str, BusEvent], None]
# Called after the bus came back from an outage: events published meanwhile were not received.
ResyncHandler = Callable[[], None]


class Bus(Protocol):
    instance_id: str

    async def start(self, handler: EventHandler, on_resync: ResyncHandler | None = None) -> None:
        """Begin receiving; `handler(channel, event)` runs on the event loop for other instances' events.
        `on_resync()` runs each time the bus is back after an outage (never for the memory bus)."""

    async def subscribe(self, channel: str) -> None:
        """Returns once events published to `channel` anywhere will reach this instance."""

    async def unsubscribe(self, channel: str) -> None: ...

    async def publish(self, channel: str, event: BusEvent) -> int:
        """Send to the other instances subscribed to `channel`: how many there were (a forwarded
        POST is 404 when nobody holds the session); raises BusError when it cannot."""

    def ready(self) -> bool: ...

    async def close(self) -> None: ...
