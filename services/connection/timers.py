"""TimerWheel: the deadlines of every connection (keepalive pings, token expiry) on one loop timer.

    Clock          what the wheel needs of a loop (`time`, `call_at`): a test drives a fake one
    Deadline       one pending callback; cancel() drops it
    TimerWheel     the buckets and the one timer that runs them
    wheel_tick()   how late a deadline may run for these settings

Tornado runs a task per connection for its keepalive pings, and a `call_later` per connection held
the token's expiry: a coroutine, its frame and a heap entry per socket, for deadlines that need no
precision. Here a deadline is a tiny object in a bucket of `tick` seconds, and one timer runs the
buckets that are due: a deadline fires in the first tick at or after it (up to `tick` late).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections.abc import Callable
from typing import Protocol

from services.settings import Settings

log = logging.getLogger("gateway.connection")

_EARLY = 0.002  # seconds a loop timer may fire early (its clock resolution)


class Handle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """The part of an event loop the wheel uses; an asyncio loop is one."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object], /) -> Handle: ...


def wheel_tick(s: Settings) -> float:
    """How late a connection's keepalive or expiry may run: 1 s, less for short intervals."""
    shortest = min(x for x in (s.ping_interval, s.ping_timeout, 4.0) if x > 0)
    return max(0.01, min(1.0, shortest / 4))


class Deadline:
    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self.callback = None


class TimerWheel:
    def __init__(self, tick: float, clock: Clock | None = None) -> None:
        """`clock`: the running loop unless given (a test's fake clock)."""
        self.tick = tick
        self._clock = clock
        self._buckets: dict[int, list[Deadline]] = {}
        self._slots: list[int] = []  # heap of the buckets' slots
        self._timer: Handle | None = None
        self._timer_slot = 0

    def _loop(self) -> Clock:
        return self._clock or asyncio.get_running_loop()

    def after(self, delay: float, callback: Callable[[], None]) -> Deadline:
        """Run `callback` once, `delay` seconds from now (rounded up to the wheel's tick)."""
        loop = self._loop()
        slot = math.ceil((loop.time() + max(delay, 0.0)) / self.tick)
        deadline = Deadline(callback)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = []
            heapq.heappush(self._slots, slot)
        bucket.append(deadline)
        if self._timer is None or slot < self._timer_slot:
            if self._timer is not None:
                self._timer.cancel()
            self._arm(loop, slot)
        return deadline

    def __len__(self) -> int:
        """Deadlines still to run (cancelled ones wait in their bucket but do not count)."""
        return sum(1 for bucket in self._buckets.values() for deadline in bucket if deadline.callback is not None)

    def _arm(self, loop: Clock, slot: int) -> None:
        self._timer_slot = slot
        self._timer = loop.call_at(slot * self.tick, self._run)

    def _run(self) -> None:
        loop = self._loop()
        self._timer = None
        now = loop.time() + _EARLY
        while self._slots and self._slots[0] * self.tick <= now:
            for deadline in self._buckets.pop(heapq.heappop(self._slots)):
                callback, deadline.callback = deadline.callback, None
                if callback is None:
                    continue
                try:
                    callback()
                except Exception:  # a safety net: one connection's bug must not stop the others' timers
                    log.exception("connection timer failed")
        if self._slots:
            self._arm(loop, self._slots[0])
