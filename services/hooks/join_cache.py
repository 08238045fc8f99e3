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
    __slots__ = ("_by_user", "_clock", "_size", "forgets", "ttl")

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._by_user: dict[str, dict[str, float]] = {}  # user -> room -> until; oldest-touched user first
        self._size = 0
        # Counts `forget` calls: an answer asked for before one is not kept (a removal or revocation
        # that came while the backend was being asked must win over the answer it gave).
        self.forgets = 0

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

    def allow(self, user: str, room: str, asked_at: int) -> None:
        """Keep the backend's yes, asked for when `forgets` was `asked_at`."""
        if self.ttl <= 0 or asked_at != self.forgets:
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
                self.forget(oldest)

    def forget(self, user: str, room: str | None = None) -> None:
        """Drop the user's entry for `room`, or all of the user's entries."""
        self.forgets += 1
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
