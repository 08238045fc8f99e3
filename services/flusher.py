"""The end of a turn of the loop, for the sessions that made frames in it (services/session.py).

Flusher      flushes each session with frames once, after the turn's work (and, under load,
             after the work queued behind it)
flusher()    the running loop's Flusher
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol


class Flushable(Protocol):
    def flush(self) -> None: ...


class Flusher:
    """The sessions with frames from this turn of the loop, flushed once, at its end; or, while the
    loop has more work queued behind the flush (the next message of a busy room already read, say),
    after that work, for at most BUSY_TURNS more turns and BUSY_WAIT seconds: under load a
    connection's frames of several turns leave in one write, and an idle loop writes at once
    (BENCHMARKS.md, "Write coalescing"). The time bound matters in a reconnect storm, whose turns
    are long: eight of them held live messages for most of a second. Busy is read from the asyncio
    loop's ready queue; a loop without one (uvloop) writes each turn."""

    BUSY_TURNS = 8
    BUSY_WAIT = 0.005

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._sessions: list[Flushable] = []
        self._ready: collections.deque[object] | None = getattr(loop, "_ready", None)
        self._waited = 0
        self._first = 0.0  # loop time of the first turn this flush waited

    def add(self, session: Flushable) -> None:
        if not self._sessions:
            self.loop.call_soon(self._flush)
        self._sessions.append(session)

    def _flush(self) -> None:
        if self._ready and self._waited < self.BUSY_TURNS:
            now = self.loop.time()
            if not self._waited:
                self._first = now
            if now - self._first < self.BUSY_WAIT:
                self._waited += 1
                self.loop.call_soon(self._flush)  # behind the work queued now
                return
        self._waited = 0
        sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.flush()


_FLUSHER: Flusher | None = None


def flusher() -> Flusher:
    """The running loop's flusher (tests run one loop after another)."""
    global _FLUSHER
    loop = asyncio.get_running_loop()
    if _FLUSHER is None or _FLUSHER.loop is not loop:
        _FLUSHER = Flusher(loop)
    return _FLUSHER
