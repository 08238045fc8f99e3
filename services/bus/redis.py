"""RedisBus: the bus across instances, on Redis pub/sub (redis.asyncio, on the IOLoop).

One subscriber socket per instance carries every SUBSCRIBE/UNSUBSCRIBE and every incoming event;
publishes and probes go through the shared command pool, one PUBLISH (one round trip) per event
whatever the number of recipients. Channels are `{prefix}room:{id}` and `{prefix}user:{id}`.

Why it is built this way:
- `subscribe` returns only after Redis confirmed the SUBSCRIBE, so an event published anywhere
  afterwards reaches this instance (the hub answers `joined` only then).
- `unsubscribe` stops delivery at once but sends UNSUBSCRIBE only after a short grace, so a room
  whose last member reconnects (page reload, network blip) does not flap its subscription.
- Connection loss: local delivery goes on (the hub delivers locally first); publishes fail fast
  while the subscriber is down; it reconnects with capped exponential backoff and resubscribes
  every wanted channel before reporting ready again.
- A subscription can also die silently (a proxy or a half-open TCP connection). Every instance
  publishes a probe to its own probe channel each `probe_interval`; without an echo for
  `probe_timeout` the subscriber is declared dead, readiness turns red and the socket is rebuilt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.bus import BusEvent, EventHandler, ResyncHandler
from services.errors import BusError
from services.metrics import METRICS
from services.redis_common import COMMAND_TIMEOUT, REDIS_ERRORS, Backoff, connection_kwargs, describe
from services.settings import Settings

log = logging.getLogger("gateway.bus")

WIRE_VERSION = 1
SUBSCRIBE_CHUNK = 500  # channels per SUBSCRIBE when resubscribing many rooms at once
YIELD_EVERY = 64  # events handled before giving the IOLoop a turn during a burst
_SUBSCRIBE_ERRORS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, BusError)


def encode_event(event: BusEvent) -> bytes:
    """`[version, origin, exclude, action, user]` as compact JSON, a newline, then the frame bytes
    as they are: the frame is never parsed or re-encoded on its way through Redis."""
    head = orjson.dumps([WIRE_VERSION, event.origin, event.exclude, event.action, event.user])
    return head + b"\n" + (event.frame or b"")


def decode_event(data: bytes) -> BusEvent:
    head, sep, frame = data.partition(b"\n")
    if not sep:
        raise ValueError("no header separator")
    fields = orjson.loads(head)
    if not isinstance(fields, list) or len(fields) < 5 or fields[0] != WIRE_VERSION:
        raise ValueError("unknown header")
    origin, exclude, action, user = fields[1:5]
    return BusEvent(frame=frame or None, origin=origin, exclude=exclude, action=action, user=user)


class RedisBus:
    def __init__(
        self,
        instance_id: str,
        settings: Settings,
        client: aioredis.Redis,
        *,
        probe_interval: float = 1.0,
        probe_timeout: float = 3.0,
        unsubscribe_grace: float = 2.0,
        reconnect_cap: float = 5.0,
    ) -> None:
        self.instance_id = instance_id
        self._settings = settings
        self._client = client
        self._prefix = settings.redis_prefix
        self._timeout = COMMAND_TIMEOUT
        self._probe_channel = f"{self._prefix}probe:{instance_id}".encode()
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._grace = unsubscribe_grace
        self._reconnect_cap = reconnect_cap
        self._handler: EventHandler | None = None
        self._on_resync: ResyncHandler | None = None
        self._conn: Connection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._rebuild = asyncio.Event()
        self._wanted: set[str] = set()  # the hub's channels: events are delivered for these only
        self._live: set[str] = set()  # subscribed on the current socket
        self._unsub_timers: dict[str, asyncio.TimerHandle] = {}
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._up = False
        self._closing = False
        self._last_echo = 0.0
        self._down_since = 0.0
        self._bad_events = 0

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
        conn = self._conn
        if not self._up or conn is None:
            raise BusError("bus is down")
        self._wanted.add(channel)
        if channel in self._live:
            return  # still subscribed from before the grace: nothing to ask Redis
        try:
            await self._subscribe_many(conn, [self._key(channel)])
        except BusError:
            self._wanted.discard(channel)
            raise
        if conn is self._conn:
            self._live.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._wanted.discard(channel)
        if channel in self._live and channel not in self._unsub_timers:
            loop = asyncio.get_running_loop()
            self._unsub_timers[channel] = loop.call_later(self._grace, self._unsubscribe_now, channel)

    async def publish(self, channel: str, event: BusEvent) -> None:
        if not self._up:
            raise BusError("bus is down")
        started = time.perf_counter()
        await self._send(self._key(channel), encode_event(event))
        METRICS.bus_publish_seconds.observe(time.perf_counter() - started)

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

    # -- introspection (tests, metrics) ------------------------------------------------------

    @property
    def subscribed(self) -> frozenset[str]:
        """Channels subscribed on the Redis socket right now (wanted ones plus those in grace)."""
        return frozenset(self._live)

    # -- sending -----------------------------------------------------------------------------

    async def _send(self, key: str, payload: bytes) -> None:
        """The one round trip of a publish. The history issue replaces this PUBLISH with a script
        that appends to the room's stream and publishes in the same call."""
        try:
            await self._client.publish(key, payload)
        except REDIS_ERRORS as exc:
            raise BusError(describe(exc)) from None

    def _key(self, channel: str) -> str:
        return self._prefix + channel

    # -- the subscriber socket ---------------------------------------------------------------

    async def _connect(self) -> None:
        """Open a subscriber socket, start its reader, subscribe the probe and every wanted channel."""
        conn = Connection(
            **connection_kwargs(self._settings),
            socket_timeout=None,  # the reader blocks until an event; the probe watches liveness
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),
            client_name=f"rtg-sub:{self.instance_id}",
        )
        try:
            await asyncio.wait_for(conn.connect(), self._timeout * 2)  # type: ignore[no-untyped-call]
        except REDIS_ERRORS as exc:
            await _drop(conn)
            raise BusError(describe(exc)) from None
        self._conn = conn
        self._live = set()
        self._reader = asyncio.create_task(self._read(conn))
        channels = sorted(self._wanted)
        try:
            await self._subscribe_many(conn, [self._probe_channel.decode(), *map(self._key, channels)])
        except BaseException:  # BusError, or cancelled by a start-up deadline: leave nothing open
            await self._teardown()
            raise
        self._live = set(channels)
        for channel in self._live - self._wanted:  # left while we were connecting
            await self.unsubscribe(channel)
        self._last_echo = time.monotonic()

    async def _subscribe_many(self, conn: Connection, keys: Sequence[str]) -> None:
        """SUBSCRIBE and wait for Redis to confirm every channel (the reader resolves the waits)."""
        loop = asyncio.get_running_loop()
        waits: list[tuple[bytes, asyncio.Future[None]]] = []
        for key in keys:
            fut: asyncio.Future[None] = loop.create_future()
            raw = key.encode()
            self._waiters.setdefault(raw, []).append(fut)
            waits.append((raw, fut))
        try:
            for start in range(0, len(keys), SUBSCRIBE_CHUNK):
                await asyncio.wait_for(
                    conn.send_command("SUBSCRIBE", *keys[start : start + SUBSCRIBE_CHUNK]), self._timeout
                )
            await asyncio.wait_for(asyncio.gather(*(f for _, f in waits)), self._timeout)
        except _SUBSCRIBE_ERRORS as exc:
            if isinstance(exc, asyncio.TimeoutError):
                self._rebuild.set()  # no confirmation in time: this socket is not healthy
            raise BusError(f"subscribe failed: {describe(exc)}") from None
        finally:
            for raw, fut in waits:
                pending = self._waiters.get(raw)
                if pending is not None and fut in pending:
                    pending.remove(fut)
                    if not pending:
                        del self._waiters[raw]

    def _unsubscribe_now(self, channel: str) -> None:
        self._unsub_timers.pop(channel, None)
        if channel in self._wanted or channel not in self._live:
            return
        self._live.discard(channel)
        conn = self._conn
        if conn is not None and self._up:
            self._spawn(self._send_unsubscribe(conn, self._key(channel)))

    async def _send_unsubscribe(self, conn: Connection, key: str) -> None:
        try:
            await asyncio.wait_for(conn.send_command("UNSUBSCRIBE", key), self._timeout)
        except REDIS_ERRORS:
            if conn is self._conn:
                self._rebuild.set()

    async def _read(self, conn: Connection) -> None:
        """The one subscriber coroutine: events, subscribe confirmations, probe echoes."""
        handled = 0
        try:
            while True:
                reply = await conn.read_response(disable_decoding=True)
                if not isinstance(reply, list) or len(reply) < 2:
                    continue
                kind = reply[0]
                if kind == b"message" and len(reply) == 3:
                    self._on_message(reply[1], reply[2])
                    handled += 1
                    if handled % YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                elif kind == b"subscribe":
                    for fut in self._waiters.pop(reply[1], ()):
                        if not fut.done():
                            fut.set_result(None)
        finally:
            self._fail_waiters()

    def _on_message(self, channel: bytes, data: bytes) -> None:
        if channel == self._probe_channel:
            self._last_echo = time.monotonic()
            return
        name = channel.decode("utf-8", "replace")[len(self._prefix) :]
        if name not in self._wanted or self._handler is None:
            return  # unsubscribed (in grace) or a stray subscription: no longer ours to deliver
        try:
            event = decode_event(data)
        except ValueError as exc:
            self._bad_events += 1
            if self._bad_events == 1 or self._bad_events % 1000 == 0:
                log.warning("undecodable bus event", extra={"channel": name, "error": str(exc)})
            return
        if event.origin == self.instance_id:
            return  # our own echo: the hub delivered it locally before publishing
        try:
            self._handler(name, event)
        except Exception:
            log.exception("bus event handler failed", extra={"channel": name})

    def _fail_waiters(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for futs in waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(BusError("subscriber connection lost"))

    async def _teardown(self) -> None:
        reader, self._reader = self._reader, None
        conn, self._conn = self._conn, None
        self._live = set()
        if reader is not None:
            reader.cancel()
            try:
                await reader
            except BaseException:  # cancelled, or the error that ended it
                pass
        self._fail_waiters()
        if conn is not None:
            await _drop(conn)

    # -- supervision -------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Wait for the reader to die or the probe to call it dead; then reconnect with backoff."""
        backoff = Backoff(0.1, self._reconnect_cap)
        while not self._closing:
            reader = self._reader
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
        nonce = os.urandom(4).hex().encode()
        while not self._closing:
            await asyncio.sleep(self._probe_interval)
            if not self._up:
                continue
            try:
                await self._client.publish(self._probe_channel, nonce)
            except REDIS_ERRORS:
                pass  # the missing echo below decides
            if self._up and time.monotonic() - self._last_echo > self._probe_timeout:
                log.warning("bus probe unanswered", extra={"seconds": self._probe_timeout})
                self._rebuild.set()

    def _set_up(self, first: bool) -> None:
        self._up = True
        METRICS.bus_up.set(1)
        if first:
            log.info("bus connected", extra={"channels": len(self._live)})
        else:
            log.info(
                "bus reconnected",
                extra={
                    "channels": len(self._live),
                    "down_seconds": round(time.monotonic() - self._down_since, 1),
                },
            )

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


async def _drop(conn: Connection) -> None:
    try:
        await conn.disconnect(nowait=True)
    except REDIS_ERRORS:
        pass
