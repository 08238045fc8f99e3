"""A clock the test moves by hand, for the timer wheel and a connection's deadlines
(services/connection): what fires when is decided without waiting on the real clock."""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable


class FakeHandle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """`time()` and `call_at()` like an event loop's (its own epoch, as a loop's monotonic clock
    has), and `wall()`, Unix time, which moves with it; nothing runs until `advance`. The two differ
    by design, so code that mixes a loop time with a token's Unix `exp` is caught."""

    def __init__(self, now: float = 1_000.0, wall: float | None = None) -> None:
        self.now = now
        self._wall_offset = (time.time() if wall is None else wall) - now
        self._timers: list[tuple[float, int, FakeHandle, Callable[[], object]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self._wall_offset

    def call_at(self, when: float, callback: Callable[[], object], /) -> FakeHandle:
        handle = FakeHandle()
        heapq.heappush(self._timers, (when, next(self._order), handle, callback))
        return handle

    def advance(self, seconds: float) -> None:
        """Move time on, running every timer due by then at its own time, in order."""
        until = self.now + seconds
        while self._timers and self._timers[0][0] <= until:
            when, _, handle, callback = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not handle.cancelled:
                callback()
        self.now = until

    def pending(self) -> int:
        return sum(1 for _, _, handle, _ in self._timers if not handle.cancelled)
