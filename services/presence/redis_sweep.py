"""Sweeper: removes the connections of instances that died (their heartbeat lapsed) from the Redis
presence store, and reports the users that left with them so the hub announces them offline.

One sweeper per interval fleet-wide: whichever instance takes the sweep lock. A dead instance's
connections are popped PURGE_CHUNK at a time, so Redis stays responsive however many it had.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis

from services.errors import StoreError
from services.presence.redis_scripts import PURGE, PURGE_CHUNK, Keys
from services.redis_common import REDIS_ERRORS

log = logging.getLogger("gateway.presence")


@dataclass(eq=False)
class Sweeper:
    client: aioredis.Redis
    keys: Keys
    instance_id: str
    interval: float
    can_announce: Callable[[], bool]
    expired: Callable[[str, str], None]  # (room, user) left with a dead instance
    failed: Callable[[BaseException], StoreError]  # logs the failure once per outage

    def __post_init__(self) -> None:
        self._purge = self.client.register_script(PURGE)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except REDIS_ERRORS as exc:
                self.failed(exc)

    async def sweep(self) -> int:
        """Take the sweep lock and purge instances whose heartbeat lapsed. Returns how many users
        were announced offline."""
        if not self.can_announce():
            return 0  # another instance, or we once our bus is back
        lock_ms = max(100, int(self.interval * 900))
        if not await self.client.set(self.keys.sweep_lock, self.instance_id, nx=True, px=lock_ms):
            return 0
        ids = [_text(i) for i in await cast("Awaitable[set[bytes]]", self.client.smembers(self.keys.instances))]
        others = [i for i in ids if i != self.instance_id]
        if not others:
            return 0
        async with self.client.pipeline(transaction=False) as pipe:
            for other in others:
                pipe.exists(self.keys.alive(other))
            alive = await pipe.execute()
        announced = 0
        for other, is_alive in zip(others, alive, strict=True):
            if not is_alive:
                announced += await self._purge_instance(other)
        return announced

    async def _purge_instance(self, other: str) -> int:
        keys = [self.keys.alive(other), self.keys.instance(other), self.keys.instances]
        announced = 0
        while True:
            out = await self._purge(keys=keys, args=[self.keys.prefix, other, PURGE_CHUNK])
            left = int(out[0])
            pairs = [_text(x) for x in out[1:]]
            for i in range(0, len(pairs) - 1, 2):
                self.expired(pairs[i], pairs[i + 1])
                announced += 1
            if left <= 0:
                break
        if announced:
            log.info("presence of a dead instance expired", extra={"dead": other, "users": announced})
        return announced


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
