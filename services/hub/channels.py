"""Subscriptions: which bus channels this instance listens to. A room's channel is subscribed when
its first local member joins and dropped when the last one leaves; one lock per channel, counted,
so a subscribe and an unsubscribe of one channel never interleave and the lock disappears exactly
when nobody holds or waits for it. A user's channel that cannot be subscribed while the bus is
down is retried in the background for as long as the user stays connected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from schemas.protocol import Channel
from services.bus import Bus
from services.errors import BusError
from services.hub.tasks import TaskGroup

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
        self.retries = TaskGroup()  # apart from the hub's tasks: settle() does not wait for them
        self._retrying: set[str] = set()

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

    async def ensure_or_retry(self, channel: Channel, wanted: Callable[[], bool]) -> None:
        """`ensure`; when the bus is down, keep trying in the background while `wanted()`."""
        try:
            await self.ensure(channel)
        except BusError:
            if channel.key not in self._retrying:
                self._retrying.add(channel.key)
                self.retries.spawn(self._retry(channel, wanted))

    async def _retry(self, channel: Channel, wanted: Callable[[], bool]) -> None:
        delay = 0.5
        try:
            while wanted():
                await asyncio.sleep(delay)
                if not wanted():
                    return
                try:
                    await self.ensure(channel)
                    return
                except BusError:
                    delay = min(delay * 2, 10.0)
        finally:
            self._retrying.discard(channel.key)

    async def drop_if_unused(self, channel: Channel, in_use: Callable[[], bool]) -> None:
        async with self.locked(channel):
            if in_use() or channel.key not in self._live:
                return
            del self._live[channel.key]
            try:
                await self._bus.unsubscribe(channel.key)
            except BusError:
                log.warning("bus unsubscribe failed", extra={"channel": channel.key})
