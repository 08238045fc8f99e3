"""Inbox: one stream's posted frames, handled one after another as a WebSocket's are.

A WebSocket's reader hands the hub one frame at a time and waits for it (frames that wait for an
answer go to the background there); here one task per stream does the same with the frames of
its requests, in the order they were accepted. A request is answered 202 once its frames are in
the inbox, so a join that waits does not hold the HTTP request.

Bounds (what one client can make the gateway hold): the frames waiting here are at most
SSE_SEND_BYTES of JSON bytes (each parsed when handled), and each was paid for with a token of
RATE_LIMIT when its request was accepted; a request that does not fit either is refused whole
with 429 (nothing of it handled).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from services.hub.tasks import TaskGroup
from services.session import Session
from services.sse.body import Posted


@dataclass(frozen=True, slots=True)
class Answer:
    """What a POST /sse/send is answered (on whichever instance it reached)."""

    status: int
    error: str = ""
    accepted: int = 0
    retry_after: int | None = None  # seconds, with 429


GONE = Answer(404, "no such session: it ended or never existed; open a new stream")


class Inbox:
    __slots__ = ("_bound", "_bytes", "_frames", "_handle", "_refused", "_tasks", "_worker", "session")

    def __init__(
        self,
        session: Session,
        handle: Callable[[Session, Any, int], Awaitable[None]],
        refused: Callable[[Session], None],
        bound: int,
        tasks: TaskGroup,
    ) -> None:
        """`handle` is the one path from a parsed frame to the hub (Inbound.frame); `refused`
        counts a request over the rate limit as the violation a rate-limited frame is."""
        self.session = session
        self._handle = handle
        self._refused = refused
        self._bound = bound
        self._tasks = tasks
        self._frames: collections.deque[Posted] = collections.deque()
        self._bytes = 0
        self._worker = False

    def put(self, posted: list[Posted]) -> Answer:
        session = self.session
        if session.closed:
            return GONE
        size = sum(p.size for p in posted)
        if self._bytes + size > self._bound:
            return Answer(429, "earlier frames of this session are still being handled; send again shortly", 0, 1)
        if not session.rate.take(len(posted)):
            self._refused(session)
            rate = session.rate.rate
            wait = max(1, math.ceil(len(posted) / rate)) if rate > 0 else 60
            return Answer(429, f"over the rate limit of {rate:g} frames/s; send again later", 0, wait)
        self._frames.extend(posted)
        self._bytes += size
        if not self._worker:
            self._worker = True
            self._tasks.spawn(self._run())
        return Answer(202, accepted=len(posted))

    def clear(self) -> None:
        """The stream ended: what waits is dropped (the client re-sends after reconnecting)."""
        self._frames.clear()
        self._bytes = 0

    async def _run(self) -> None:
        frames, session = self._frames, self.session
        try:
            while frames and not session.closed:
                posted = frames.popleft()
                self._bytes -= posted.size
                # Parsed when its turn comes (read_body checked that it parses): never raises.
                await self._handle(session, orjson.loads(posted.data), posted.size)
        finally:
            self._worker = False
            if session.closed:
                self.clear()
