"""JoinDecisions: the join hook's positive answers, kept JOIN_HOOK_CACHE_TTL seconds per instance.

A client that reconnects re-joins all its rooms at once; with the cache, a storm of reconnects costs
the backend one call per user and room per TTL instead of one per join. Only `allow: true` is kept (a
refusal is asked again), and a removal, revocation or disconnect of the control plane drops the user's
entries on every instance (docs/hooks.md, "join"). At most MOST entries: the user whose entries were
made longest ago loses them first, so the cache's memory does not grow with how many users join.
"""

from __future__ import annotations

import time
from collections.abc import Callable

MOST = 50_000  # (user, room) pairs per instance: a few MiB at most


class JoinDecisions:
    __slots__ = ("_by_user", "_clock", "_forgotten", "_prunes", "_size", "ttl")

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._by_user: dict[str, dict[str, float]] = {}  # user -> room -> until; oldest-touched user first
        self._size = 0
        # user -> how many times their answers were dropped (at most MOST users, the oldest go;
        # `_prunes` counts those goings): an answer asked for before a drop is not kept, so a
        # removal or revocation that came while the backend was asked wins over what it answered.
        self._forgotten: dict[str, int] = {}
        self._prunes = 0

    def __len__(self) -> int:
        return self._size

    def allowed(self, user: str, room: str) -> bool:
        rooms = self._by_user.get(user)
        if rooms is None:
            return False
        until = rooms.get(room)
        if until is None:
            return False
        if until > self._clock():
            return True
        del rooms[room]
        self._size -= 1
        if not rooms:
            del self._by_user[user]
        return False

    def mark(self, user: str) -> tuple[int, int]:
        """Taken before the backend is asked; `allow` keeps the answer only if it is still the same."""
        return self._forgotten.get(user, 0), self._prunes

    def allow(self, user: str, room: str, asked_at: tuple[int, int]) -> None:
        """Keep the backend's yes, asked for at `asked_at` (a `mark`)."""
        if self.ttl <= 0 or asked_at != self.mark(user):
            return
        rooms = self._by_user.pop(user, None) or {}
        self._by_user[user] = rooms  # now the most recently touched
        if room not in rooms:
            self._size += 1
        rooms[room] = self._clock() + self.ttl
        while self._size > MOST:
            oldest = next(iter(self._by_user))
            if oldest == user and len(self._by_user) == 1:
                del rooms[next(iter(rooms))]
                self._size -= 1
            else:
                self._drop(oldest)

    def forget(self, user: str, room: str | None = None) -> None:
        """Drop the user's entry for `room`, or all of the user's entries (the control plane)."""
        self._forgotten[user] = self._forgotten.pop(user, 0) + 1
        if len(self._forgotten) > MOST:
            del self._forgotten[next(iter(self._forgotten))]
            self._prunes += 1
        self._drop(user, room)

    def _drop(self, user: str, room: str | None = None) -> None:
        rooms = self._by_user.get(user)
        if rooms is None:
            return
        if room is None:
            self._size -= len(rooms)
            del self._by_user[user]
        elif rooms.pop(room, None) is not None:
            self._size -= 1
            if not rooms:
                del self._by_user[user]
