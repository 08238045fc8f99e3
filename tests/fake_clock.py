"""A clock the test moves by hand, for the timer wheel and a connection's deadlines
(services/connection): what fires when is decided without waiting on the real clock."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class FakeHandle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """`time()` and `call_at()` like an event loop's; nothing runs until `advance`."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now
        self._timers: list[tuple[float, int, FakeHandle, Callable[[], object]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

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
