"""Background: a connection's frames that wait (for the backend, Redis or Kafka) without stopping
its reads, bounded, and in order per room.

    start(session, work, room, lane)   run `work()` in the background; with `lane`, after the
                                       connection's earlier frames for that room
    busy(session, room)                a frame of the room is still waiting: later ones queue behind it

Why (docs/hooks.md, "Isolation"): a join waiting four seconds on the join hook must not hold the same
connection's pings, presence or other rooms, yet a message sent right after that join must not be
refused `not_in_room` because it overtook it. So a frame that waits runs in the background in its
room's lane, and the room's later frames queue in the lane; the other rooms' frames and pings go on.

Limit: at most WAITING_FRAMES frames per connection are in the background at once (each holds at most
MAX_MESSAGE_BYTES); one over it is refused `unavailable` at once, so a backend that hangs costs
bounded memory, however fast the client sends. Nothing is kept for a connection with nothing waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from services.hub.tasks import TaskGroup
from services.metrics import METRICS
from services.session import Session


class Background:
    def __init__(self, limit: int, tasks: TaskGroup) -> None:
        self.limit = limit
        self._tasks = tasks
        self._counts: dict[Session, int] = {}
        self._lanes: dict[Session, dict[str, asyncio.Future[None]]] = {}

    def waiting(self, session: Session) -> int:
        return self._counts.get(session, 0)

    def busy(self, session: Session, room: str) -> bool:
        lanes = self._lanes.get(session)
        return lanes is not None and room in lanes

    def start(self, session: Session, work: Callable[[], Awaitable[None]], lane: str | None = None) -> bool:
        """Run `work()` in the background; False (nothing started) when WAITING_FRAMES already are."""
        count = self._counts.get(session, 0)
        if count >= self.limit:
            return False
        self._counts[session] = count + 1
        METRICS.frames_waiting.inc()
        before: asyncio.Future[None] | None = None
        done: asyncio.Future[None] | None = None
        if lane is not None:
            lanes = self._lanes.setdefault(session, {})
            before = lanes.get(lane)
            done = lanes[lane] = asyncio.get_running_loop().create_future()
        self._tasks.spawn(self._run(session, work, lane, before, done))
        return True

    async def _run(
        self,
        session: Session,
        work: Callable[[], Awaitable[Any]],
        lane: str | None,
        before: asyncio.Future[None] | None,
        done: asyncio.Future[None] | None,
    ) -> None:
        try:
            if before is not None and not before.done():
                await asyncio.wait([before])
            await work()  # (a connection closed meanwhile: `work` knows what it must still release)
        finally:
            METRICS.frames_waiting.dec()
            count = self._counts.pop(session, 1) - 1
            if count > 0:
                self._counts[session] = count
            if done is not None:
                done.set_result(None)
                lanes = self._lanes.get(session)
                if lanes is not None and lane is not None and lanes.get(lane) is done:
                    del lanes[lane]
                    if not lanes:
                        del self._lanes[session]
