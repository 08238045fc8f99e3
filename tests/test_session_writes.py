"""The outbound path of a Session (services/session.py), pure logic over a recording transport: one
write per connection per turn of the loop, the queue only while the socket is backed up, and the
slow-consumer bound exact. The real socket path is exercised by every end-to-end test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence

import pytest

from schemas.protocol import CLOSE_SLOW
from services.auth import Identity
from services.flusher import Flusher
from services.metrics import METRICS
from services.session import Pong, Session
from tests.helpers import test_settings as settings_for


class Recorder:
    """Records each write; `stall()` makes the socket back up until `resume()`."""

    def __init__(self) -> None:
        self.writes: list[list[bytes | Pong]] = []
        self.closed: tuple[int, str] | None = None
        self._gate: asyncio.Future[None] | None = None

    def write(self, items: Sequence[bytes | Pong]) -> Awaitable[None]:
        self.writes.append(list(items))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._gate is None or self._gate.done():
            fut.set_result(None)
        else:
            self._gate.add_done_callback(lambda _: _resolve(fut))
        return fut

    def backed_up(self) -> bool:
        return self._gate is not None and not self._gate.done()

    def stall(self) -> None:
        self._gate = asyncio.get_running_loop().create_future()

    def resume(self) -> None:
        assert self._gate is not None
        self._gate.set_result(None)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def session(transport: Recorder, **settings: object) -> Session:
    return Session("c1", Identity("u", 4102444800.0, None), transport, settings_for(**settings))


async def next_turns(n: int = Flusher.BUSY_TURNS + 3) -> None:
    """Enough turns for a flush: this coroutine's own wake-ups keep the loop busy, so the flusher
    may wait its BUSY_TURNS."""
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.mark.gen_test
async def test_frames_of_one_turn_leave_in_one_write_in_order():
    t = Recorder()
    s = session(t)
    writes = METRICS.socket_writes._value.get()
    assert s.send(b"a") and s.send(Pong(b"p")) and s.send(b"b")
    assert t.writes == []  # not before the end of the turn
    await next_turns()
    assert len(t.writes) == 1
    assert METRICS.socket_writes._value.get() == writes + 1  # what bench.fanout reports per delivery
    first = t.writes[0]
    assert first[0] == b"a" and isinstance(first[1], Pong) and first[2] == b"b"
    s.send(b"c")  # a later turn: its own write
    await next_turns()
    assert t.writes[1:] == [[b"c"]]


async def busy_turns(s: Session, turns: int, turn_seconds: float = 0.0) -> None:
    """One frame per turn of the loop for `turns` turns, each turn `turn_seconds` long, with the next
    turn's work always queued; then the loop goes idle."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def turn(k: int) -> None:
        s.send(f"m{k}".encode())
        time.sleep(turn_seconds)  # a long turn (what a storm's turns are)
        if k < turns:
            loop.call_soon(turn, k + 1)
        else:
            loop.call_later(0.01, done.set_result, None)

    loop.call_soon(turn, 1)
    await done


@pytest.mark.gen_test
async def test_while_the_loop_is_busy_the_frames_of_later_turns_join_the_write():
    """Work queued behind the flush (the next message of a busy room, say) goes first, and its
    frames leave in the same write: fewer writes per delivery under load."""
    t = Recorder()
    s = session(t)
    s.send(b"a")
    await busy_turns(s, 3)
    assert t.writes == [[b"a", b"m1", b"m2", b"m3"]]


@pytest.mark.gen_test
async def test_a_loop_that_stays_busy_still_writes_every_few_turns():
    t = Recorder()
    turns = 5 * (Flusher.BUSY_TURNS + 1)
    await busy_turns(session(t), turns)
    sizes = [len(w) for w in t.writes]
    assert sum(sizes) == turns
    assert len(sizes) >= 5 and max(sizes) <= Flusher.BUSY_TURNS + 1  # bounded wait, not until idle


@pytest.mark.gen_test
async def test_long_busy_turns_hold_frames_for_at_most_busy_wait():
    """In a storm each turn is long: the wait is bounded in time too, not only in turns."""
    t = Recorder()
    await busy_turns(session(t), 20, turn_seconds=0.002)
    sizes = [len(w) for w in t.writes]
    assert sum(sizes) == 20
    # The first turn, then turns until BUSY_WAIT has passed since the first wait: the time bound.
    assert max(sizes) <= Flusher.BUSY_WAIT / 0.002 + 2 < Flusher.BUSY_TURNS


@pytest.mark.gen_test
async def test_a_close_writes_this_turns_frames_first_unless_slow():
    t = Recorder()
    s = session(t)
    s.send(b"why")
    s.close(4029, "too many")
    assert t.writes == [[b"why"]] and t.closed == (4029, "too many")
    t2 = Recorder()
    s2 = session(t2)
    s2.send(b"dropped")
    s2.close(CLOSE_SLOW, "slow", flush=False)
    await next_turns()
    assert t2.writes == [] and t2.closed == (CLOSE_SLOW, "slow")


async def backed_up(bound: int) -> tuple[Recorder, Session]:
    """A session with a bound of `bound` frames whose first write went out and whose socket is now
    backed up."""
    t = Recorder()
    s = session(t, outbound_queue_frames=bound)
    s.send(b"first")
    await next_turns()
    t.stall()
    return t, s


@pytest.mark.gen_test
async def test_backed_up_frames_wait_in_the_bounded_queue_and_leave_together():
    t, s = await backed_up(5)
    s.send(b"x")  # the earlier write is still in flight: this one waits
    await next_turns()
    assert t.writes[1:] == [[b"x"]]  # the writer took it; the socket has not yet
    for i in range(4):
        assert s.send(b"q%d" % i)  # queued behind it
    t.resume()
    await next_turns(6)
    assert t.writes[2:] == [[b"q0", b"q1", b"q2", b"q3"]]  # the queue leaves in one write
    assert t.closed is None


@pytest.mark.gen_test
async def test_one_frame_over_the_bound_is_a_slow_consumer():
    _, s = await backed_up(3)
    results = [s.send(b"%d" % i) for i in range(4)]
    assert results == [True, True, True, False]
    assert s.closed and s.close_code == CLOSE_SLOW
