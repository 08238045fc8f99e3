"""LoopLag: how far behind the event loop runs, so that intake can wait when it is.

A reconnect storm accepts connections faster than one core can handshake and join them; each
accepted one queues more work, and the loop falls seconds behind. With Redis that was an outage of
its own making: replies read late became command timeouts, the circuit opened, the bus missed its
probes and resynced every room, and the clients' retries fed the storm (10,000 clients never came
back, BENCHMARKS.md "Reconnect storm"). The listener asks `behind()` before accepting: while the
loop is more than MAX_LOOP_LAG late, new connections wait in the kernel's listen backlog
(LISTEN_BACKLOG) and the ones already accepted finish first.
"""

from __future__ import annotations

import asyncio

from services.metrics import METRICS

TICK = 0.05  # seconds between two looks


class LoopLag:
    def __init__(self, limit: float) -> None:
        self.limit = limit  # 0: never behind
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0
        self._late = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._due = self._loop.time() + TICK
        self._timer = self._loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def behind(self) -> bool:
        """The last look was late by more than the limit, or the next one is already."""
        if not self.limit or self._loop is None:
            return False
        return max(self._late, self._loop.time() - self._due) > self.limit

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self._late = now - self._due
        METRICS.loop_lag.set(self._late)
        self._due = now + TICK
        self._timer = self._loop.call_at(self._due, self._tick)
