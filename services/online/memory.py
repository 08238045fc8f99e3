"""MemoryOnline: the online tracker of one process (no Redis): every socket is here."""

from __future__ import annotations

import asyncio
import time

from services.online import OFFLINE, ONLINE, Announce


class MemoryOnline:
    def __init__(self, grace: float) -> None:
        self._grace = grace
        self._announce: Announce | None = None
        self._online: set[str] = set()  # announced online
        # announced online, no socket: the offline record's timer and when the last socket closed
        self._pending: dict[str, tuple[asyncio.TimerHandle, float]] = {}

    async def start(self, announce: Announce) -> None:
        self._announce = announce

    def opened(self, user: str) -> None:
        pending = self._pending.pop(user, None)
        if pending is not None:
            pending[0].cancel()  # back within the grace: nothing to say
        elif user not in self._online and self._announce is not None:
            self._online.add(user)
            self._announce(ONLINE, user, time.time(), None)

    def closed(self, user: str) -> None:
        if user in self._online:
            seen = time.time()
            timer = asyncio.get_running_loop().call_later(self._grace, self._offline, user, seen)
            self._pending[user] = (timer, seen)

    def _offline(self, user: str, seen: float) -> None:
        self._pending.pop(user, None)
        self._online.discard(user)
        if self._announce is not None:
            self._announce(OFFLINE, user, time.time(), seen)

    async def close(self) -> None:
        """At shutdown (after the drain): nobody is left to come back within the grace, and a
        restarted process knows nobody, so the offline records go out now, before the producer's
        flush."""
        for user, (timer, seen) in list(self._pending.items()):
            timer.cancel()
            self._offline(user, seen)
