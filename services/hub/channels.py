"""Subscriptions: which bus channels this instance listens to. A room's channel is subscribed when
its first local member joins and dropped when the last one leaves; one lock per channel, counted,
so a subscribe and an unsubscribe of one channel never interleave and the lock disappears exactly
when nobody holds or waits for it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from schemas.protocol import Channel
from services.bus import Bus
from services.errors import BusError

log = logging.getLogger("gateway.hub")


class _Lock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class Subscriptions:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._live: dict[str, Channel] = {}  # bus key -> the channel it was subscribed as
        self.locks: dict[str, _Lock] = {}

    def get(self, key: str) -> Channel | None:
        """The channel subscribed under a bus key (None once unsubscribed)."""
        return self._live.get(key)

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self._live)

    @contextlib.asynccontextmanager
    async def locked(self, channel: Channel) -> AsyncIterator[None]:
        key = channel.key
        entry = self.locks.get(key)
        if entry is None:
            entry = self.locks[key] = _Lock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self.locks[key]

    async def ensure(self, channel: Channel, then: Callable[[], None] | None = None) -> None:
        """Subscribe unless already; `then()` runs under the channel's lock once it is live (a
        member added there cannot miss an event published from then on). Raises BusError."""
        async with self.locked(channel):
            if channel.key not in self._live:
                await self._bus.subscribe(channel.key)
                self._live[channel.key] = channel
            if then is not None:
                then()

    async def drop_if_unused(self, channel: Channel, in_use: Callable[[], bool]) -> None:
        async with self.locked(channel):
            if in_use() or channel.key not in self._live:
                return
            del self._live[channel.key]
            try:
                await self._bus.unsubscribe(channel.key)
            except BusError:
                log.warning("bus unsubscribe failed", extra={"channel": channel.key})
