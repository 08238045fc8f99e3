"""SubscriberSocket: the one Redis connection an instance subscribes on (redis.py decides what to
subscribe; this only speaks to Redis). SUBSCRIBE returns once Redis confirmed every channel; one
reader coroutine takes every reply off the socket and hands messages on; a subscribe that is not
confirmed in time, or an UNSUBSCRIBE that fails, marks the socket unhealthy for its owner to rebuild."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.errors import BusError
from services.redis_common import REDIS_ERRORS, connection_kwargs, describe
from services.settings import Settings

log = logging.getLogger("gateway.bus")

SUBSCRIBE_CHUNK = 500  # channels per SUBSCRIBE when resubscribing many rooms at once
YIELD_EVERY = 64  # events handled before giving the IOLoop a turn during a burst
_SUBSCRIBE_ERRORS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, BusError)


class SubscriberSocket:
    def __init__(
        self,
        settings: Settings,
        instance_id: str,
        timeout: float,
        on_message: Callable[[bytes, bytes], None],
        on_unhealthy: Callable[[SubscriberSocket], None],
    ) -> None:
        self._connection_kwargs: dict[str, Any] = {
            **connection_kwargs(settings),
            "socket_timeout": None,  # the reader blocks until an event; the probe watches liveness
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            "client_name": f"rtg-sub:{instance_id}",
        }
        self._timeout = timeout
        self._on_message, self._on_unhealthy = on_message, on_unhealthy
        self._conn: Connection | None = None
        self.reader: asyncio.Task[None] | None = None
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}

    async def open(self) -> None:
        """Connect and start the reader; BusError when Redis cannot be reached."""
        conn = Connection(**self._connection_kwargs)
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
            for start in range(0, len(keys), SUBSCRIBE_CHUNK):
                await asyncio.wait_for(
                    conn.send_command("SUBSCRIBE", *keys[start : start + SUBSCRIBE_CHUNK]), self._timeout
                )
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

    async def unsubscribe(self, key: str) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            await asyncio.wait_for(conn.send_command("UNSUBSCRIBE", key), self._timeout)
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
