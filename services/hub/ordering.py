"""SenderOrder: one sender's messages keep their order through the two slow steps of a message,
while the Kafka delivery reports of several messages are awaited at the same time.

    stage:   dedupe claim and Kafka produce call, in sending order
    publish: broadcast and ack, in sending order (never ahead of a predecessor, even one failing)

A `Turn` is one message's place in both queues. A message refused as `unavailable` (Redis could
not store it) refuses the ones queued behind it too, and the sender then owes it to the room: a
later message of the room goes on only while every owed message older than it is on its way ahead
of it (sent again, in flight: should it be refused again, so is the later one); otherwise it is
refused too. Without that, a message sent while a refusal was on its way back, or one sent again
while an older one was refused again, would be stored ahead of it. A room whose owed keys are not
sent again within OWED_FOR seconds is forgiven (the client gave up on them); at most OWED_MOST keys
are owed per sender, the least recently touched room's forgiven first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

OWED_FOR = 3.0  # seconds without a resend after which a room's owed keys are forgiven (clients resend within ~1 s)
OWED_MOST = 256  # owed keys per sender, all rooms together (at most 128 characters each)


class SenderOrder:
    __slots__ = ("_flying", "_owed", "_presence", "_publish", "_stage")

    def __init__(self) -> None:
        self._stage: asyncio.Future[None] | None = None
        self._publish: asyncio.Future[bool] | None = None
        # (room, dedupeKey) of owed messages sent again and still in the queues: only they can let a
        # later message of an owed room through, so nothing is counted while nothing is owed.
        self._flying: dict[tuple[str, str], int] = {}
        self._presence: asyncio.Lock | None = None  # made at the first presence change
        # room -> (when it was first owed or an owed key last came again, its owed keys), least
        # recently touched first; None while nothing is owed (the usual case costs one attribute).
        self._owed: dict[str, tuple[float, dict[str, None]]] | None = None

    def presence(self) -> asyncio.Lock:
        """One presence change at a time, in the order received: they run in the background (a hung
        Redis holds this sender's presence changes, not its pings), and must not overtake each
        other (`online` after `typing` must stay last)."""
        if self._presence is None:
            self._presence = asyncio.Lock()
        return self._presence

    def idle(self) -> bool:
        """True when no message is in either queue."""
        return self._stage is None and self._publish is None

    def waits_for_others(self, room: str, key: str | None) -> bool:
        """True when `room` owes a message older than this one that is not on its way ahead of it."""
        if self._owed is None or room not in self._owed:
            return False
        touched, keys = self._owed[room]
        if time.monotonic() - touched > OWED_FOR:
            self._forgive(room)
            return False
        for owed in keys:  # oldest first
            if owed == key:
                self._touch(room, keys)
                return False
            if (room, owed) not in self._flying:
                return True
        return False  # a new message, behind every owed one

    def owe(self, room: str, key: str | None) -> None:
        """A message of `room` was refused as unavailable."""
        if key is None:
            return
        if self._owed is None:
            self._owed = {}
        if room in self._owed:
            keys = self._owed[room][1]  # only a resend of an owed key counts as the client's activity
        else:
            keys = {}
            self._touch(room, keys)
        keys[key] = None
        while self.owes() > OWED_MOST:
            oldest = next(iter(self._owed))
            if oldest == room and len(self._owed) == 1:
                del keys[next(iter(keys))]
            else:
                self._forgive(oldest)

    def owes(self) -> int:
        """Keys owed, all rooms together."""
        return 0 if self._owed is None else sum(len(keys) for _, keys in self._owed.values())

    def paid(self, room: str, key: str | None) -> None:
        """A message of `room` was stored (or found stored)."""
        if self._owed is None or key is None or room not in self._owed:
            return
        keys = self._owed[room][1]
        keys.pop(key, None)
        if not keys:
            self._forgive(room)

    def _touch(self, room: str, keys: dict[str, None]) -> None:
        assert self._owed is not None
        self._owed.pop(room, None)
        self._owed[room] = (time.monotonic(), keys)

    def _forgive(self, room: str) -> None:
        assert self._owed is not None
        del self._owed[room]
        if not self._owed:
            self._owed = None

    async def refused(self, room: str, key: str | None, after: Sequence[Awaitable[None]] = ()) -> None:
        """A message refused before it took its turn (too many frames waiting): once `after` (what
        the room's frames sent before it wait for) is done it takes its place as refused, so the
        messages sent before it go on and the ones after it are refused until it comes again, as if
        Redis had refused it. It holds a key, not the message, while it waits."""
        if after:
            await asyncio.wait([asyncio.ensure_future(a) for a in after])
        turn = self.turn(room, key)
        turn.refused = True
        await turn.finish()
        self.owe(room, key)

    def turn(self, room: str, key: str | None) -> Turn:
        loop = asyncio.get_running_loop()
        turn = Turn(self, room, key, self._stage, self._publish, loop.create_future(), loop.create_future())
        self._stage, self._publish = turn.staged, turn.published
        if self._owed is not None and key is not None and key in self._owed.get(room, _NONE)[1]:
            self._flying[(room, key)] = self._flying.get((room, key), 0) + 1
            turn.flying = True
        return turn


@dataclass(slots=True, eq=False)
class Turn:
    _order: SenderOrder
    room: str
    key: str | None
    _prev_stage: asyncio.Future[None] | None
    _prev_publish: asyncio.Future[bool] | None
    staged: asyncio.Future[None]
    published: asyncio.Future[bool]  # True: refused as unavailable
    refused: bool = False
    flying: bool = False  # counted in the order's `_flying` (an owed message sent again)

    def waits_for_others(self) -> bool:
        return self._order.waits_for_others(self.room, self.key)

    async def my_stage(self) -> None:
        """Return once the previous message has left the stage step."""
        await _after(self._prev_stage)

    def stage_done(self) -> None:
        _resolve(self.staged)

    async def my_publish(self) -> bool:
        """Return once the previous message was published (or failed); True when it was refused
        as unavailable."""
        prev = self._prev_publish
        if prev is None:
            return False
        await _after(prev)
        return prev.result()

    async def finish(self) -> None:
        """Release both queues, whatever happened to this message (call it in `finally`)."""
        self.stage_done()
        await self.my_publish()
        if not self.published.done():
            self.published.set_result(self.refused)
        order = self._order
        if self.flying:
            assert self.key is not None
            flying = order._flying.pop((self.room, self.key)) - 1
            if flying:
                order._flying[(self.room, self.key)] = flying
        if order._stage is self.staged:
            order._stage = None
        if order._publish is self.published:
            order._publish = None


_NONE: tuple[float, dict[str, None]] = (0.0, {})


async def _after(fut: asyncio.Future[None] | asyncio.Future[bool] | None) -> None:
    if fut is not None and not fut.done():
        await asyncio.wait([fut])


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
