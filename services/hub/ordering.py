"""SenderOrder: one sender's messages keep their order through the two slow steps of a message,
while the Kafka delivery reports of several messages are awaited at the same time.

    stage:   dedupe claim and Kafka produce call, in sending order
    publish: broadcast and ack, in sending order (never ahead of a predecessor, even one failing)

A `Turn` is one message's place in both queues.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


class SenderOrder:
    __slots__ = ("_publish", "_stage")

    def __init__(self) -> None:
        self._stage: asyncio.Future[None] | None = None
        self._publish: asyncio.Future[None] | None = None

    def turn(self) -> Turn:
        loop = asyncio.get_running_loop()
        turn = Turn(self, self._stage, self._publish, loop.create_future(), loop.create_future())
        self._stage, self._publish = turn.staged, turn.published
        return turn

    def idle(self) -> bool:
        """True when no message is in either queue (the order may be forgotten)."""
        return self._stage is None and self._publish is None


@dataclass(slots=True, eq=False)
class Turn:
    _order: SenderOrder
    _prev_stage: asyncio.Future[None] | None
    _prev_publish: asyncio.Future[None] | None
    staged: asyncio.Future[None]
    published: asyncio.Future[None]

    async def my_stage(self) -> None:
        """Return once the previous message has left the stage step."""
        await _after(self._prev_stage)

    def stage_done(self) -> None:
        _resolve(self.staged)

    async def my_publish(self) -> None:
        """Return once the previous message was published (or failed)."""
        await _after(self._prev_publish)

    async def finish(self) -> None:
        """Release both queues, whatever happened to this message (call it in `finally`)."""
        self.stage_done()
        await self.my_publish()
        _resolve(self.published)
        order = self._order
        if order._stage is self.staged:
            order._stage = None
        if order._publish is self.published:
            order._publish = None


async def _after(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        await asyncio.wait([fut])


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
