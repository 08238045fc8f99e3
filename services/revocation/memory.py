"""MemoryRevocations: the revocation store of one process."""

from __future__ import annotations

import heapq
import time

from services.revocation import Revocations


class MemoryRevocations:
    """user -> record key -> (moment, expires at). Expired records are swept with a heap, and at
    most `max_users` users are kept (the soonest to expire go first) so memory stays bounded."""

    def __init__(self, max_users: int = 1_000_000) -> None:
        self._users: dict[str, dict[str, tuple[float, float]]] = {}
        self._expiry: list[tuple[float, str, str]] = []
        self._max = max_users
        self._records = 0

    async def load(self, user: str) -> Revocations:
        now = time.time()
        records = self._users.get(user)
        found = Revocations()
        if records:
            for key, (moment, expires) in records.items():
                if expires > now:
                    found.add(key, moment, expires)
        return found

    async def add(self, user: str, key: str, moment: float, ttl: float) -> None:
        now = time.time()
        self._sweep(now)
        records = self._users.setdefault(user, {})
        old = records.get(key)
        if old is None:
            self._records += 1
        elif old[1] > now:
            moment = max(moment, old[0])
        expires = now + ttl
        records[key] = (moment, expires)
        heapq.heappush(self._expiry, (expires, user, key))
        if len(self._expiry) > 2 * self._records + 1024:  # stale entries of records added again
            self._expiry = [(e, u, k) for u, rs in self._users.items() for k, (_, e) in rs.items()]
            heapq.heapify(self._expiry)

    def _sweep(self, now: float) -> None:
        while self._expiry and (self._expiry[0][0] <= now or len(self._users) >= self._max):
            expires, user, key = heapq.heappop(self._expiry)
            records = self._users.get(user)
            if records is not None and key in records and records[key][1] == expires:
                del records[key]
                self._records -= 1
                if not records:
                    del self._users[user]

    async def close(self) -> None:
        self._users.clear()
        self._expiry.clear()
        self._records = 0
