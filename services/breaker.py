"""Breaker: the circuit breaker in front of Redis.

Why: a Redis that hangs (SIGSTOP, a partition that drops packets, a failover in progress) held
every message that carried a dedupeKey for the whole hang, since each call waited out its own
timeout and one sender's later messages queued behind it (docs/scaling.md, "Redis trouble").

    closed     every call goes through, each cut after `timeout` seconds
    open       after a call failed in a way that says Redis is unavailable: calls fail at once
               with CircuitOpen, without touching the network
    probing    `retry_after` seconds later, the next call starts the probe (a PING, in the
               background) and, like every call meanwhile, fails at once; the probe's success
               closes the breaker, its failure opens it for `retry_after` more

One breaker serves the whole process (every store shares the command client), so a hang costs
the calls already under way when it began at most `timeout`, and every later call nothing: no
caller ever waits for a probe. At most IN_FLIGHT calls are under way at once (and IN_FLIGHT more
of live traffic, LIVE). A success of any call closes it too. State changes are one log line each
(`redis circuit open`, `redis circuit closed`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TypeVar

from services.logs import StateLog
from services.metrics import METRICS

T = TypeVar("T")

RETRY_AFTER = 1.0  # seconds an open breaker refuses before it probes (and between probes)
# Calls under way at once; the others wait their turn before their `timeout` starts. A reconnect
# storm made thousands of calls at once: each then waited behind all the others' callbacks in the
# loop's queue, timed out although Redis answered in a millisecond, and opened the breaker
# (BENCHMARKS.md, "Reconnect storm"). A hang still costs a waiting call at most one timeout: the
# calls under way time out, the breaker opens, and the waiting ones are refused at once.
IN_FLIGHT = 64
# Live traffic (a client's message: its dedupe claim, its append and publish) has slots of its
# own, so it is not queued behind a storm's joins, which only recover history.
LIVE: ContextVar[bool] = ContextVar("redis_live", default=False)


class CircuitOpen(Exception):
    """Redis is marked unavailable: the call was refused without being sent."""


class Breaker:
    def __init__(
        self,
        timeout: float,
        errors: tuple[type[BaseException], ...],
        trips: Callable[[BaseException], bool],
        logger: logging.Logger,
        probe: Callable[[], Awaitable[object]],
        retry_after: float = RETRY_AFTER,
    ) -> None:
        """`errors` are the failures a caller expects (they pass through, and `trips` says which
        of them open the breaker); anything else is a bug and leaves the breaker as it is.
        `probe` asks Redis whether it answers, past the breaker."""
        self.timeout = timeout
        self.retry_after = retry_after
        self._probe = probe
        self._prober: asyncio.Task[None] | None = None
        self._errors = errors
        self._trips = trips
        self._open_until: float | None = None  # None: closed
        self._refused = 0
        self._state = StateLog(logger, "redis circuit", initial="closed")
        self._since = 0.0
        self._slots = asyncio.Semaphore(IN_FLIGHT)
        self._live_slots = asyncio.Semaphore(IN_FLIGHT)

    async def call(self, work: Callable[[], Awaitable[T]]) -> T:
        self._refuse_if_open()
        async with self._live_slots if LIVE.get() else self._slots:
            self._refuse_if_open()  # it may have opened while this call waited for a slot
            try:
                async with asyncio.timeout(self.timeout):
                    result = await work()
            except self._errors as exc:
                if self._trips(exc):
                    self._trip(exc)
                else:
                    self._close()  # Redis answered, with an error for this call only
                raise
        self._close()
        return result

    def _refuse_if_open(self) -> None:
        if self._open_until is not None:
            if time.monotonic() >= self._open_until and (self._prober is None or self._prober.done()):
                self._prober = asyncio.ensure_future(self._probe_once())
            self._refused += 1
            METRICS.redis_refused.inc()
            raise CircuitOpen("redis unavailable (circuit open)")

    async def _probe_once(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self._probe()
        except Exception as exc:  # whatever it was, Redis did not answer: stay open
            self._trip(exc)
            return
        self._close()

    def stop(self) -> None:
        """The client is closing: no probe outlives it."""
        if self._prober is not None:
            self._prober.cancel()

    def _trip(self, exc: BaseException) -> None:
        self._open_until = time.monotonic() + self.retry_after
        if self._state.state != "open":
            self._since = time.monotonic()
            self._refused = 0
            METRICS.redis_circuit_open.set(1)
            self._state.set("open", logging.WARNING, error=type(exc).__name__)

    def _close(self) -> None:
        if self._open_until is None:
            return
        self._open_until = None
        METRICS.redis_circuit_open.set(0)
        seconds = round(time.monotonic() - self._since, 1)
        self._state.set("closed", refused=self._refused, seconds=seconds)
