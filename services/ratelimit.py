"""Per-connection limits: a token bucket for frame rate and a sliding window of rejected frames.

Every frame costs a token of RATE_LIMIT; the frames that make the server read or send much cost
more (docs/protocol.md, "Limits"): `presence_query`, `refresh` and `rpc` 2, a `history` reply or a
`since` replay one per REPLY_TOKEN_BYTES it sends, at least 2. The part of a reply's cost known only
once it is read is charged afterwards and may leave the bucket in debt, so the next frames wait
(issue: 14 KB of joins and leaves drew 4-6 GB of replays, each one frame of the rate limit).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any


class TokenBucket:
    __slots__ = ("_at", "_clock", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self, cost: float = 1.0) -> bool:
        self._refill()
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def charge(self, cost: float) -> None:
        """Take `cost` tokens whether or not they are there (a debt the refill pays back first).
        Refilled up to now first: a debt taken after a slow read must not vanish under the cap."""
        self._refill()
        self._tokens -= cost

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now


REPLY_TOKEN_BYTES = 64 * 1024
EXPENSIVE_FRAMES = frozenset({"history", "presence_query", "refresh", "rpc"})
EXPENSIVE_COST = 2


def frame_cost(frame_type: str, payload: dict[str, Any]) -> int:
    """Tokens a frame costs before it is handled."""
    if frame_type in EXPENSIVE_FRAMES or (frame_type == "join" and payload.get("since") is not None):
        return EXPENSIVE_COST
    return 1


def reply_cost(nbytes: int) -> int:
    """Tokens a history reply or a replay of `nbytes` costs in all: one per REPLY_TOKEN_BYTES, at least 2."""
    return max(EXPENSIVE_COST, -(-nbytes // REPLY_TOKEN_BYTES))


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
