"""RedisBus: the bus across instances, on Redis pub/sub (redis.asyncio, on the IOLoop).

One subscriber socket per instance (redis_subscriber.py), or with a Redis Cluster one per primary
(redis_shards.py, sharded pub/sub), carries every subscription and every incoming event (wire.py);
publishes and probes use the shared command client: one PUBLISH (SPUBLISH) per event, whatever the
number of recipients.

Why it is built this way (subscribe confirmed before `joined`, an unsubscribe grace, fail-fast
publishes while down, probes that find a silently dead subscription): docs/architecture.md, "The
Redis bus".
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from redis.asyncio.cluster import RedisCluster

from services.backoff import Backoff
from services.breaker import LIVE
from services.bus import BusEvent, EventHandler, ResyncHandler
from services.bus.redis_shards import ShardedSubscribers, open_subscribers
from services.bus.redis_subscriber import BusTimings, SubscriberSocket
from services.bus.wire import bus_channel, bus_key, decode_event, encode_event
from services.errors import BusError
from services.metrics import METRICS
from services.redis_common import REDIS_ERRORS, RedisClient, describe
from services.settings import Settings

log = logging.getLogger("gateway.bus")


class RedisBus:
    def __init__(
        self, instance_id: str, settings: Settings, client: RedisClient, timings: BusTimings | None = None
    ) -> None:
        self.instance_id = instance_id
        self._settings = settings
        self._client = client
        self._prefix = settings.redis_prefix
        self.sharded = isinstance(client, RedisCluster)
        self._publish_command = "SPUBLISH" if self.sharded else "PUBLISH"
        self._probes: dict[bytes, float] = {}  # probe channel -> when its echo last came back
        self._timings = timings or BusTimings()
        self._handler: EventHandler | None = None
        self._on_resync: ResyncHandler | None = None
        self._sub: SubscriberSocket | ShardedSubscribers | None = None
        self._runner: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._rebuild = asyncio.Event()
        self._wanted: set[str] = set()  # the hub's channels: events are delivered for these only
        self._live: set[str] = set()  # subscribed on the current socket
        self._unsub_timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._up = False
        self._closing = False
        self._down_since = 0.0
        self._bad_events = 0
        self._nonce = os.urandom(4).hex().encode()

    # -- the Bus interface -------------------------------------------------------------------

    async def start(self, handler: EventHandler, on_resync: ResyncHandler | None = None) -> None:
        """Connect and subscribe the probe channel; BusError when Redis cannot be reached (the
        gateway retries or exits 2). Reconnection is automatic from then on, and `on_resync` is
        called after each, since events published while we were away are lost."""
        self._handler = handler
        self._on_resync = on_resync
        if self._runner is not None:
            return
        self._closing = False
        await self._connect()
        self._set_up(first=True)
        self._runner = asyncio.create_task(self._supervise())
        self._prober = asyncio.create_task(self._probe_loop())

    async def subscribe(self, channel: str) -> None:
        if self._closing:
            raise BusError("bus is closed")
        timer = self._unsub_timers.pop(channel, None)
        if timer is not None:
            timer.cancel()
        sub = self._sub
        if not self._up or sub is None:
            raise BusError("bus is down")
        self._wanted.add(channel)
        if channel in self._live:
            return  # still subscribed from before the grace: nothing to ask Redis
        try:
            await sub.subscribe([self._key(channel)])
        except BusError:
            self._wanted.discard(channel)
            raise
        if sub is self._sub:
            self._live.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._wanted.discard(channel)
        if channel in self._live and channel not in self._unsub_timers:
            loop = asyncio.get_running_loop()
            self._unsub_timers[channel] = loop.call_later(
                self._timings.unsubscribe_grace, self._unsubscribe_now, channel
            )

    async def publish(self, channel: str, event: BusEvent) -> int:
        if not self._up:
            raise BusError("bus is down")
        started = time.perf_counter()
        receivers = await self._send(self._key(channel), encode_event(event))
        METRICS.bus_publish_seconds.observe(time.perf_counter() - started)
        return receivers

    def ready(self) -> bool:
        return self._up

    async def close(self) -> None:
        self._closing = True
        for timer in self._unsub_timers.values():
            timer.cancel()
        self._unsub_timers.clear()
        tasks = [t for t in (self._prober, self._runner, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._teardown()
        self._prober = self._runner = None
        if self._up:
            self._up = False
            METRICS.bus_up.set(0)
        self._handler = None

    @property
    def subscribed(self) -> frozenset[str]:
        """Channels subscribed on the Redis socket right now (wanted ones plus those in grace)."""
        return frozenset(self._live)

    # -- sending -----------------------------------------------------------------------------

    async def _send(self, key: str, payload: bytes) -> int:
        """The one round trip of a publish: how many subscribers Redis handed it to."""
        try:
            return int(await self._client.execute_command(self._publish_command, key, payload))
        except REDIS_ERRORS as exc:
            raise BusError(describe(exc)) from None

    def _key(self, channel: str) -> str:
        return bus_key(self._prefix, channel, self.sharded)

    @property
    def subscribers(self) -> SubscriberSocket | ShardedSubscribers | None:
        """The live subscriber socket(s) (tests and docs/scaling.md look at where channels went)."""
        return self._sub

    # -- the subscriber socket ---------------------------------------------------------------

    async def _connect(self) -> None:
        """Open the subscriber socket(s), subscribe the probe(s) and every wanted channel."""
        sub, probes, first = await open_subscribers(
            self._settings, self.instance_id, self._client, self._on_message, self._unhealthy
        )
        self._sub = sub
        self._live = set()
        channels = sorted(self._wanted)
        try:
            await sub.subscribe([*first, *map(self._key, channels)])
        except BaseException:  # BusError, or cancelled by a start-up deadline: leave nothing open
            await self._teardown()
            raise
        self._live = set(channels)
        for channel in self._live - self._wanted:  # left while we were connecting
            await self.unsubscribe(channel)
        now = time.monotonic()
        self._probes = {p.encode(): now for p in probes}

    def _unsubscribe_now(self, channel: str) -> None:
        self._unsub_timers.pop(channel, None)
        if channel in self._wanted or channel not in self._live:
            return
        self._live.discard(channel)
        sub = self._sub
        if sub is not None and self._up:
            self._spawn(sub.unsubscribe(self._key(channel)))

    def _unhealthy(self, sub: SubscriberSocket) -> None:
        if sub is self._sub:
            self._rebuild.set()

    def _on_message(self, channel: bytes, data: bytes) -> None:
        if channel in self._probes:
            self._probes[channel] = time.monotonic()
            return
        name = bus_channel(self._prefix, channel, self.sharded)
        if name not in self._wanted or self._handler is None:
            return  # unsubscribed (in grace) or a stray subscription: no longer ours to deliver
        try:
            event = decode_event(data)
        except ValueError as exc:
            self._bad_events += 1
            if self._bad_events == 1 or self._bad_events % 1000 == 0:
                log.warning("undecodable bus event", extra={"channel": name, "error": str(exc)})
            return
        if event.origin == self.instance_id and event.offset is None:
            return  # our own echo: the hub delivered it locally before publishing
        try:
            self._handler(name, event)
        except Exception:
            log.exception("bus event handler failed", extra={"channel": name})

    async def _teardown(self) -> None:
        sub, self._sub = self._sub, None
        self._live = set()
        if sub is not None:
            await sub.close()

    # -- supervision -------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Wait for the reader to die or the probe to call it dead; then reconnect with backoff."""
        backoff = Backoff(0.1, self._timings.reconnect_cap)
        while not self._closing:
            reader = self._sub.reader if self._sub is not None else None
            rebuild = asyncio.create_task(self._rebuild.wait())
            watched: set[asyncio.Future[Any]] = {rebuild}
            if reader is not None:
                watched.add(reader)
            try:
                await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            finally:
                rebuild.cancel()
            if self._closing:
                return
            if reader is not None and reader.done() and not reader.cancelled():
                exc = reader.exception()
                reason = describe(exc) if exc is not None else "subscriber stopped"
            else:
                reason = "no probe echo: subscription silently dead"
            self._set_down(reason)
            await self._teardown()
            while not self._closing:
                await asyncio.sleep(backoff.next())
                self._rebuild.clear()
                try:
                    await self._connect()
                except BusError as exc:
                    log.debug("bus reconnect failed", extra={"error": str(exc)})
                    continue
                break
            else:
                return
            backoff.reset()
            METRICS.bus_reconnects.inc()
            self._set_up(first=False)
            if self._on_resync is not None:
                try:
                    self._on_resync()
                except Exception:
                    log.exception("bus resync handler failed")

    async def _probe_loop(self) -> None:
        # Liveness is live traffic: queued behind a storm's joins, the probes missed their echo
        # and a healthy bus was called dead (services/breaker.py, LIVE).
        LIVE.set(True)
        while not self._closing:
            await asyncio.sleep(self._timings.probe_interval)
            if not self._up:
                continue
            for probe in list(self._probes):
                try:
                    await self._client.execute_command(self._publish_command, probe, self._nonce)
                except REDIS_ERRORS:
                    pass  # the missing echo below decides
            oldest = min(self._probes.values(), default=time.monotonic())
            if self._up and time.monotonic() - oldest > self._timings.probe_timeout:
                log.warning("bus probe unanswered", extra={"seconds": self._timings.probe_timeout})
                self._rebuild.set()

    def _set_up(self, first: bool) -> None:
        self._up = True
        METRICS.bus_up.set(1)
        extra: dict[str, float] = {"channels": len(self._live)}
        if not first:
            extra["down_seconds"] = round(time.monotonic() - self._down_since, 1)
        log.info("bus connected" if first else "bus reconnected", extra=extra)

    def _set_down(self, reason: str) -> None:
        if self._up:
            self._up = False
            self._down_since = time.monotonic()
            METRICS.bus_up.set(0)
            log.warning("bus down, reconnecting", extra={"error": reason})

    def _spawn(self, aw: Any) -> None:
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
