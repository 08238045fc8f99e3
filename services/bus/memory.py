"""MemoryBus: the bus of one process. A MemoryNetwork joins several in one process (tests)."""

from __future__ import annotations

from services.bus import BusEvent, EventHandler, ResyncHandler


class MemoryNetwork:
    """Connects MemoryBus instances of one process, so several hubs can be tested without Redis."""

    def __init__(self) -> None:
        self.subscribers: dict[str, set[MemoryBus]] = {}


class MemoryBus:
    def __init__(self, instance_id: str, network: MemoryNetwork | None = None) -> None:
        self.instance_id = instance_id
        self._network = network or MemoryNetwork()
        self._handler: EventHandler | None = None

    async def start(self, handler: EventHandler, on_resync: ResyncHandler | None = None) -> None:
        self._handler = handler  # on_resync: one process has no outage to come back from

    async def subscribe(self, channel: str) -> None:
        self._network.subscribers.setdefault(channel, set()).add(self)

    async def unsubscribe(self, channel: str) -> None:
        subs = self._network.subscribers.get(channel)
        if subs is not None:
            subs.discard(self)
            if not subs:
                del self._network.subscribers[channel]

    async def publish(self, channel: str, event: BusEvent) -> int:
        receivers = [bus for bus in self._network.subscribers.get(channel, ()) if bus is not self and bus._handler]
        for bus in receivers:
            assert bus._handler is not None
            bus._handler(channel, event)
        return len(receivers)

    def ready(self) -> bool:
        return True

    async def close(self) -> None:
        for channel in [c for c, subs in self._network.subscribers.items() if self in subs]:
            await self.unsubscribe(channel)
        self._handler = None
