"""Sweeper: removes the connections of instances that died (their heartbeat lapsed) from the Redis
presence store, and reports the users that left with them so the hub announces them offline.

One sweeper per interval fleet-wide: whichever instance takes the sweep lock. A dead instance's
connections are popped room by room (the rooms it listed under its id), PURGE_CHUNK at a time, so
Redis stays responsive however many it had; each call touches one room's slot (a cluster's too).
Whether the instance is dead is read once before its purge, not inside each room's script: an
instance that was only late finds its heartbeat gone at its next refresh and registers its
connections again (redis.py, reconcile).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from services.errors import StoreError
from services.presence.redis_scripts import PURGE, PURGE_CHUNK, Keys
from services.redis_common import REDIS_ERRORS, RedisClient, guarded, register, text

log = logging.getLogger("gateway.presence")


@dataclass(eq=False)
class Sweeper:
    client: RedisClient
    keys: Keys
    instance_id: str
    interval: float
    can_announce: Callable[[], bool]
    expired: Callable[[str, str], None]  # (room, user) left with a dead instance
    failed: Callable[[BaseException], StoreError]  # logs the failure once per outage
    # Others with per-instance state to clean up (services/online): called with a dead instance's id.
    dead_hooks: list[Callable[[str], Awaitable[None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._purge = register(self.client, PURGE)

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
        ids = [text(i) for i in await cast("Awaitable[set[bytes]]", self.client.smembers(self.keys.instances))]
        others = [i for i in ids if i != self.instance_id]
        if not others:
            return 0
        async with self.client.pipeline(transaction=False) as pipe:
            for other in others:
                pipe.exists(self.keys.alive(other))
            alive = await guarded(self.client, pipe.execute)
        announced = 0
        for other, is_alive in zip(others, alive, strict=True):
            if not is_alive:
                announced += await self._purge_instance(other)
        return announced

    async def _purge_instance(self, other: str) -> int:
        announced = 0
        rooms_key = self.keys.rooms(other)
        for raw in await cast("Awaitable[set[bytes]]", self.client.smembers(rooms_key)):
            room = text(raw)
            keys = self.keys.scripted(room, other)
            while True:
                out = await self._purge(keys=keys, args=[PURGE_CHUNK])
                for user in out[1:]:
                    self.expired(room, text(user))
                    announced += 1
                if int(out[0]) <= 0:
                    break
            await cast("Awaitable[int]", self.client.srem(rooms_key, room))
        for hook in self.dead_hooks:
            try:
                await hook(other)
            except REDIS_ERRORS:
                raise
            except Exception:  # safety net: another's clean-up must not stop ours
                log.exception("dead-instance hook failed", extra={"dead": other})
        await self.client.delete(rooms_key)
        await cast("Awaitable[int]", self.client.srem(self.keys.instances, other))
        if announced:
            log.info("presence of a dead instance expired", extra={"dead": other, "users": announced})
        return announced
