"""Breaker: the circuit breaker in front of Redis.

Why: a Redis that hangs (SIGSTOP, a partition that drops packets, a failover in progress) held
every message that carried a dedupeKey for the whole hang, since each call waited out its own
timeout and one sender's later messages queued behind it (docs/scaling.md, "Redis trouble").

    closed     every call goes through, each cut after `timeout` seconds
    open       after a call failed in a way that says Redis is unavailable: calls fail at once
               with CircuitOpen, without touching the network, for `retry_after` seconds
    half-open  then the next call is the probe (the others keep failing at once); its success
               closes the breaker, its failure opens it again

One breaker serves the whole process (every store shares the command client), so a hang costs
one caller per probe at most `timeout`, and the others nothing. A success of any call closes it.
State changes are one log line each (`redis circuit open`, `redis circuit closed`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from services.logs import StateLog
from services.metrics import METRICS

T = TypeVar("T")

RETRY_AFTER = 1.0  # seconds an open breaker refuses before letting a probe through


class CircuitOpen(Exception):
    """Redis is marked unavailable: the call was refused without being sent."""


class Breaker:
    def __init__(
        self,
        timeout: float,
        errors: tuple[type[BaseException], ...],
        trips: Callable[[BaseException], bool],
        logger: logging.Logger,
        retry_after: float = RETRY_AFTER,
    ) -> None:
        """`errors` are the failures a caller expects (they pass through, and `trips` says which
        of them open the breaker); anything else is a bug and leaves the breaker as it is."""
        self.timeout = timeout
        self.retry_after = retry_after
        self._errors = errors
        self._trips = trips
        self._open_until: float | None = None  # None: closed
        self._probing = False
        self._refused = 0
        self._state = StateLog(logger, "redis circuit", initial="closed")
        self._since = 0.0

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    async def call(self, work: Callable[[], Awaitable[T]]) -> T:
        probe = False
        if self._open_until is not None:
            if self._probing or time.monotonic() < self._open_until:
                self._refused += 1
                METRICS.redis_refused.inc()
                raise CircuitOpen("redis unavailable (circuit open)")
            self._probing = probe = True
        try:
            async with asyncio.timeout(self.timeout):
                result = await work()
        except self._errors as exc:
            if self._trips(exc):
                self._trip(exc)
            else:
                self._close()  # Redis answered, with an error for this call only
            raise
        finally:
            if probe:
                self._probing = False
        self._close()
        return result

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
