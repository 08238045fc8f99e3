"""SubscriberSocket: one Redis connection an instance subscribes on: the only one with one Redis,
one per primary of a cluster (redis_shards.py). redis.py decides what to subscribe; this only
speaks to Redis. SUBSCRIBE returns once Redis confirmed every channel; one reader coroutine takes
every reply off the socket and hands messages on; a subscribe that is not confirmed in time, or an
UNSUBSCRIBE that fails, marks the socket unhealthy for its owner to rebuild.

Sharded (a cluster primary): SSUBSCRIBE / SUNSUBSCRIBE, one command per slot (Redis refuses a
SSUBSCRIBE across slots), and a SUNSUBSCRIBE nobody asked for (Redis says so when a slot moved
away) marks the socket unhealthy too: its channels must be subscribed where they live now."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from services.errors import BusError
from services.redis_common import REDIS_ERRORS, connection_class, connection_kwargs, describe
from services.settings import Settings

log = logging.getLogger("gateway.bus")

SUBSCRIBE_CHUNK = 500  # channels per SUBSCRIBE when resubscribing many rooms at once
YIELD_EVERY = 64  # events handled before giving the IOLoop a turn during a burst
_SUBSCRIBE_ERRORS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, BusError)


@dataclass(frozen=True)
class BusTimings:
    """Seconds the bus waits for things; tests shorten them."""

    probe_interval: float = 1.0  # between probes of the subscriber socket
    probe_timeout: float = 3.0  # without a probe's echo for this long, the socket is rebuilt
    unsubscribe_grace: float = 2.0  # an emptied room's channel stays subscribed this long (join/leave churn)
    reconnect_cap: float = 5.0  # longest pause between reconnection attempts


class SubscriberSocket:
    def __init__(
        self,
        settings: Settings,
        instance_id: str,
        timeout: float,
        on_message: Callable[[bytes, bytes], None],
        on_unhealthy: Callable[[SubscriberSocket], None],
        node: tuple[str, int] | None = None,
    ) -> None:
        """`node`: a cluster primary to subscribe on with sharded commands (default: REDIS_HOST)."""
        where = connection_kwargs(settings)
        if node is not None:
            where = {**where, "host": node[0], "port": node[1], "db": 0}
        self.sharded = node is not None
        self._commands = ("SSUBSCRIBE", "SUNSUBSCRIBE") if self.sharded else ("SUBSCRIBE", "UNSUBSCRIBE")
        self._connection_kwargs: dict[str, Any] = {
            **where,
            "socket_timeout": None,  # the reader blocks until an event; the probe watches liveness
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            "client_name": f"rtg-sub:{instance_id}",
        }
        self._connection_class = connection_class(settings)
        self._timeout = timeout
        self._on_message, self._on_unhealthy = on_message, on_unhealthy
        self._conn: Connection | None = None
        self.reader: asyncio.Task[None] | None = None
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._leaving: set[bytes] = set()  # SUNSUBSCRIBEs asked for and not yet confirmed

    async def open(self) -> None:
        """Connect and start the reader; BusError when Redis cannot be reached."""
        conn = self._connection_class(**self._connection_kwargs)
        try:
            await asyncio.wait_for(conn.connect(), self._timeout * 2)  # type: ignore[no-untyped-call]
        except REDIS_ERRORS as exc:
            await _drop(conn)
            raise BusError(describe(exc)) from None
        self._conn = conn
        self.reader = asyncio.create_task(self._read(conn))

    async def subscribe(self, keys: Sequence[str]) -> None:
        """SUBSCRIBE and wait for Redis to confirm every channel (the reader resolves the waits)."""
        conn = self._conn
        if conn is None:
            raise BusError("subscriber is closed")
        loop = asyncio.get_running_loop()
        waits: list[tuple[bytes, asyncio.Future[None]]] = []
        for key in keys:
            fut: asyncio.Future[None] = loop.create_future()
            raw = key.encode()
            self._waiters.setdefault(raw, []).append(fut)
            waits.append((raw, fut))
        try:
            for batch in self._batches(keys):
                await asyncio.wait_for(conn.send_command(self._commands[0], *batch), self._timeout)
            await asyncio.wait_for(asyncio.gather(*(f for _, f in waits)), self._timeout)
        except _SUBSCRIBE_ERRORS as exc:
            if isinstance(exc, asyncio.TimeoutError):
                self._on_unhealthy(self)  # no confirmation in time: this socket is not healthy
            raise BusError(f"subscribe failed: {describe(exc)}") from None
        finally:
            for raw, fut in waits:
                pending = self._waiters.get(raw)
                if pending is not None and fut in pending:
                    pending.remove(fut)
                    if not pending:
                        del self._waiters[raw]

    def _batches(self, keys: Sequence[str]) -> list[Sequence[str]]:
        if not self.sharded:
            return [keys[i : i + SUBSCRIBE_CHUNK] for i in range(0, len(keys), SUBSCRIBE_CHUNK)]
        by_slot: dict[int, list[str]] = {}
        for key in keys:
            by_slot.setdefault(key_slot(key.encode()), []).append(key)
        return list(by_slot.values())

    async def unsubscribe(self, key: str) -> None:
        conn = self._conn
        if conn is None:
            return
        if self.sharded:
            self._leaving.add(key.encode())
        try:
            await asyncio.wait_for(conn.send_command(self._commands[1], key), self._timeout)
        except REDIS_ERRORS:
            self._on_unhealthy(self)

    async def close(self) -> None:
        reader, self.reader = self.reader, None
        conn, self._conn = self._conn, None
        if reader is not None:
            reader.cancel()
            try:
                await reader
            except BaseException:  # cancelled, or the error that ended it
                pass
        self._fail_waiters()
        if conn is not None:
            await _drop(conn)

    async def _read(self, conn: Connection) -> None:
        """The one subscriber coroutine: events, subscribe confirmations, probe echoes."""
        handled = 0
        try:
            while True:
                reply = await conn.read_response(disable_decoding=True)
                if not isinstance(reply, list) or len(reply) < 2:
                    continue
                kind = reply[0]
                if (kind == b"message" or kind == b"smessage") and len(reply) == 3:
                    self._on_message(reply[1], reply[2])
                    handled += 1
                    if handled % YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                elif kind == b"subscribe" or kind == b"ssubscribe":
                    for fut in self._waiters.pop(reply[1], ()):
                        if not fut.done():
                            fut.set_result(None)
                elif kind == b"sunsubscribe" and reply[1] not in self._leaving:
                    log.info("a slot moved: resubscribing", extra={"channel": reply[1].decode("utf-8", "replace")})
                    self._on_unhealthy(self)
                else:
                    self._leaving.discard(reply[1])
        finally:
            self._fail_waiters()

    def _fail_waiters(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for futs in waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(BusError("subscriber connection lost"))


async def _drop(conn: Connection) -> None:
    try:
        await conn.disconnect(nowait=True)
    except REDIS_ERRORS:
        pass
