"""Per-connection limits: a token bucket for frame rate and a sliding window of rejected frames."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable


class TokenBucket:
    __slots__ = ("_at", "_clock", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class ViolationWindow:
    """Counts rejected frames over the last `period` seconds; `add` says when the limit is passed.
    Most connections never send a bad frame: the window is made at the first."""

    __slots__ = ("_clock", "_times", "limit", "period")

    def __init__(self, limit: int, period: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.period = period
        self._clock = clock
        self._times: collections.deque[float] | None = None

    def add(self) -> bool:
        now = self._clock()
        times = self._times
        if times is None:
            times = self._times = collections.deque()
        times.append(now)
        while times and times[0] <= now - self.period:
            times.popleft()
        return len(times) > self.limit
