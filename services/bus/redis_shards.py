"""ShardedSubscribers: the bus's subscriptions on a Redis Cluster, one SubscriberSocket per primary
(never more), each channel sharded-subscribed on the primary that owns its slot (docs/scaling.md).

Why it is built this way:
- redis-py's asyncio cluster client (at the pinned 6.4) has no pub/sub; this is the smallest piece
  on top of it: the client's slot map says which primary owns a channel, and the subscriber sockets
  are the same class the one-Redis bus uses, speaking SSUBSCRIBE.
- Every primary gets a socket at `open`, with a probe channel of its own slots, so the bus's probe
  checks every shard, not only those that carry rooms now.
- Anything that means "the map changed" (a socket died, a slot moved away, a channel whose owner
  has no socket here) marks the whole set unhealthy; the bus then rebuilds it from a fresh slot map,
  which is how a failover or a resharding is followed without a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot

from services.bus.redis_subscriber import SubscriberSocket
from services.errors import BusError
from services.redis_common import COMMAND_TIMEOUT, REDIS_ERRORS, GuardedCluster, RedisClient, describe
from services.settings import Settings


def probe_key(prefix: str, instance_id: str, owned: Callable[[int], bool]) -> str:
    """A probe channel of this instance whose slot `owned` accepts (a few tries for 3 primaries)."""
    for n in range(100_000):
        key = f"{prefix}probe:{instance_id}:{{{n}}}"
        if owned(key_slot(key.encode())):
            return key
    raise BusError("no probe channel found for a primary")  # a primary without slots


class ShardedSubscribers:
    def __init__(
        self,
        settings: Settings,
        instance_id: str,
        timeout: float,
        cluster: GuardedCluster,
        on_message: Callable[[bytes, bytes], None],
        on_unhealthy: Callable[[Any], None],
    ) -> None:
        self._settings, self._instance_id, self._timeout = settings, instance_id, timeout
        self._cluster = cluster
        self._on_message, self._on_unhealthy = on_message, on_unhealthy
        self._sockets: dict[str, SubscriberSocket] = {}  # primary name (host:port) -> its socket
        self._where: dict[str, str] = {}  # channel key -> the primary it is subscribed on
        self.probe_keys: list[str] = []
        self.reader: asyncio.Future[None] | None = None

    async def open(self) -> None:
        """Refresh the slot map, open one socket per primary and subscribe its probe channel."""
        loop = asyncio.get_running_loop()
        self.reader = loop.create_future()
        try:
            await asyncio.wait_for(self._cluster.refresh_slots(), self._timeout * 2)
            for node in self._cluster.get_primaries():
                sock = SubscriberSocket(
                    self._settings,
                    self._instance_id,
                    self._timeout,
                    self._on_message,
                    self._socket_unhealthy,
                    node=(node.host, int(node.port)),
                )
                await sock.open()
                self._sockets[node.name] = sock
                assert sock.reader is not None
                sock.reader.add_done_callback(self._socket_stopped)
                key = probe_key(self._settings.redis_prefix, self._instance_id, self._owned_by(node))
                await sock.subscribe([key])
                self.probe_keys.append(key)
        except REDIS_ERRORS as exc:
            await self.close()
            raise BusError(describe(exc)) from None
        except BaseException:
            await self.close()
            raise

    def _owned_by(self, node: ClusterNode) -> Callable[[int], bool]:
        return lambda slot: self._owner(slot) == node.name

    def _owner(self, slot: int) -> str | None:
        nodes = self._cluster.nodes_manager.slots_cache.get(slot)
        return nodes[0].name if nodes else None

    async def subscribe(self, keys: Sequence[str]) -> None:
        groups: dict[str, list[str]] = {}
        for key in keys:
            owner = self._owner(key_slot(key.encode()))
            if owner is None or owner not in self._sockets:
                self._socket_unhealthy(None)  # the map changed under us: rebuild from a fresh one
                raise BusError("no subscriber socket for the slot's primary")
            groups.setdefault(owner, []).append(key)
        for owner, group in groups.items():
            await self._sockets[owner].subscribe(group)
            for key in group:
                self._where[key] = owner

    async def unsubscribe(self, key: str) -> None:
        owner = self._where.pop(key, None)
        sock = self._sockets.get(owner) if owner is not None else None
        if sock is not None:
            await sock.unsubscribe(key)

    def _socket_unhealthy(self, _: SubscriberSocket | None) -> None:
        self._stop(None)

    def _socket_stopped(self, reader: asyncio.Future[None]) -> None:
        """A primary's socket stopped reading: the set stops, with its reason (the bus logs it)."""
        self._stop(None if reader.cancelled() else reader.exception())

    def _stop(self, exc: BaseException | None) -> None:
        """`reader` (what the bus watches, as it watches one socket) ends, with the first cause."""
        if self.reader is not None and not self.reader.done():
            if exc is None:
                self.reader.set_result(None)
            else:
                self.reader.set_exception(exc)
        self._on_unhealthy(self)

    async def close(self) -> None:
        sockets, self._sockets = list(self._sockets.values()), {}
        self._where.clear()
        for sock in sockets:
            await sock.close()
        if self.reader is not None:
            if not self.reader.done():
                self.reader.cancel()
            elif not self.reader.cancelled():
                self.reader.exception()  # read by the bus already, or not wanted any more

    def channels_per_primary(self) -> dict[str, int]:
        """How many channels each primary carries for this instance (metrics and tests)."""
        out = dict.fromkeys(self._sockets, 0)
        for owner in self._where.values():
            out[owner] = out.get(owner, 0) + 1
        return out


async def open_subscribers(
    settings: Settings,
    instance_id: str,
    client: RedisClient,
    on_message: Callable[[bytes, bytes], None],
    on_unhealthy: Callable[[Any], None],
) -> tuple[SubscriberSocket | ShardedSubscribers, list[str], list[str]]:
    """The bus's subscriber socket(s), opened: one socket for one Redis, one per primary of a
    cluster. Returns them, every probe channel, and the probes still to subscribe (with one Redis,
    its only probe goes with the first SUBSCRIBE of the channels)."""
    if isinstance(client, GuardedCluster):
        shards = ShardedSubscribers(settings, instance_id, COMMAND_TIMEOUT, client, on_message, on_unhealthy)
        await shards.open()  # subscribes a probe channel on every primary
        return shards, shards.probe_keys, []
    single = SubscriberSocket(settings, instance_id, COMMAND_TIMEOUT, on_message, on_unhealthy)
    await single.open()
    probe = f"{settings.redis_prefix}probe:{instance_id}"
    return single, [probe], [probe]
