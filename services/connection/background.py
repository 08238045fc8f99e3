"""Background: a connection's frames that wait (for the backend, Redis or Kafka) without stopping
its reads, bounded, and in order per room.

    start(session, work, room, exclusive)   run `work()` in the background, in order with the
                                            connection's earlier frames of `room`
    busy(session, room)                     a frame of the room is in the background: later ones go
                                            there too, behind it

Why (docs/hooks.md, "Isolation"): a join waiting four seconds on the join hook must not hold the same
connection's pings, presence or other rooms, yet a message sent right after that join must not be
refused `not_in_room` because it overtook it, and a `leave` sent after a message must not overtake it.
So a frame that waits runs in the background, and the room's later frames wait for it there; the other
rooms' frames and pings go on. Messages (and presence changes) of one room still run concurrently with
each other: the sender's order is kept by the hub, which lets Kafka acks overlap.

Limit: at most WAITING_BYTES (256 KiB) of a connection's frames are in the background at once, each
counted as its length plus TASK_BYTES for the task and futures that carry it (a flood of tiny frames
costs what it holds, not nothing); one over it is refused `unavailable` at once, so a backend that hangs
costs bounded memory per connection, however fast the client sends, and the connection's other frames
go on. Nothing is kept for a connection with nothing waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from services.hub.tasks import TaskGroup
from services.metrics import METRICS
from services.session import Session

TASK_BYTES = 1024  # what a frame in the background holds besides its text: its task, closure, futures


class _Room:
    """One room's frames of one connection in the background: `gate` is done once the last
    exclusive frame and everything before it are; `group` the concurrent frames since it, each as
    (done, started): started is set just before its work runs."""

    __slots__ = ("count", "gate", "group")

    def __init__(self) -> None:
        self.count = 0
        self.gate: asyncio.Future[None] | None = None
        self.group: list[tuple[asyncio.Future[None], asyncio.Future[None]]] = []


class Background:
    def __init__(self, limit: int, tasks: TaskGroup) -> None:
        self.limit = limit  # WAITING_BYTES
        self._tasks = tasks
        self._held: dict[Session, int] = {}  # bytes in the background, per connection that has any
        self._rooms: dict[Session, dict[str, _Room]] = {}

    def waiting(self, session: Session) -> int:
        """Bytes the connection has in the background."""
        return self._held.get(session, 0)

    def busy(self, session: Session, room: str) -> bool:
        rooms = self._rooms.get(session)
        return rooms is not None and room in rooms

    def started(self, session: Session, room: str) -> list[asyncio.Future[None]]:
        """Done once every frame of `room` sent so far has started (a message then holds its place
        in the sender's order): what a message refused now must wait for before it takes its own."""
        state = self._rooms.get(session, {}).get(room)
        if state is None:
            return []
        waits = [started for _, started in state.group if not started.done()]
        if state.gate is not None and not state.gate.done():
            waits.append(state.gate)
        return waits

    def start(
        self,
        session: Session,
        work: Callable[[], Awaitable[None]],
        size: int,
        room: str | None,
        exclusive: bool = False,
    ) -> bool:
        """Run `work()` (a frame of `size` characters) in the background; False (nothing started)
        when it would take the connection over WAITING_BYTES.

        With `room`: a concurrent frame (a message, a presence change; they keep their own order,
        hub/ordering.py) waits for the room's exclusive frames sent before it; an exclusive frame (a
        join, a leave, a history or member query) waits for every frame of the room sent before it."""
        cost = size + TASK_BYTES
        held = self._held.get(session, 0) + cost
        if held > self.limit:
            return False
        self._held[session] = held
        METRICS.frames_waiting.inc()
        loop = asyncio.get_running_loop()
        done, started = loop.create_future(), None
        waits: list[asyncio.Future[None]] = []
        if room is not None:
            state = self._rooms.setdefault(session, {}).setdefault(room, _Room())
            if state.gate is not None:
                waits.append(state.gate)
            if exclusive:
                waits += [entry_done for entry_done, _ in state.group]
                state.gate, state.group = done, []
            else:
                started = loop.create_future()
                state.group.append((done, started))
            state.count += 1
        task = self._tasks.spawn(self._run(work, waits, started))
        if task is None:  # shutting down
            self._finished(session, room, done, cost)
        else:  # (a callback, not a `finally`: it runs even for a task cancelled before its first step)
            task.add_done_callback(lambda _: self._finished(session, room, done, cost))
        return True

    @staticmethod
    async def _run(
        work: Callable[[], Awaitable[Any]], waits: list[asyncio.Future[None]], started: asyncio.Future[None] | None
    ) -> None:
        if pending := [w for w in waits if not w.done()]:
            await asyncio.wait(pending)
        if started is not None:
            started.set_result(None)
        await work()  # (a connection closed meanwhile: `work` knows what it must still release)

    def _finished(self, session: Session, room: str | None, done: asyncio.Future[None], cost: int) -> None:
        METRICS.frames_waiting.dec()
        held = self._held.pop(session, cost) - cost
        if held > 0:
            self._held[session] = held
        done.set_result(None)
        rooms = self._rooms.get(session)
        state = rooms.get(room) if rooms is not None and room is not None else None
        if rooms is None or state is None or room is None:
            return
        state.group = [entry for entry in state.group if entry[0] is not done]
        state.count -= 1
        if state.count == 0:
            del rooms[room]
            if not rooms:
                del self._rooms[session]
