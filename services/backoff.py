"""Backoff: capped exponential delays with jitter, for whatever retries on its own (the bus and the
online tracker reconnecting, a Kafka event waiting for Redis, a gap fill reading the history), so
a fleet does not retry in lockstep."""

from __future__ import annotations

import random


class Backoff:
    """Delays of base * 2**attempt, at most `cap`, each cut to between half and all of it."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * 2.0**self.attempt)
        self.attempt = min(self.attempt + 1, 30)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0
