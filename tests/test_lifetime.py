"""A connection's deadlines on a fake clock (services/connection): the timer wheel, the token's
notice and expiry, a refresh that moves them, and keepalive. Pure logic: no socket, no waiting."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence

import orjson
import pytest

from services.auth import Identity, TokenVerifier
from services.bus.memory import MemoryBus
from services.connection.lifetime import Lifetimes
from services.connection.timers import TimerWheel
from services.errors import ClientError
from services.flusher import Flusher
from services.hooks import Hooks
from services.hub.control import Control
from services.hub.members import Members
from services.hub.tasks import TaskGroup
from services.revocation.memory import MemoryRevocations
from services.session import Pong, Session
from tests.fake_clock import FakeClock
from tests.helpers import NoExits, token
from tests.helpers import test_settings as settings_for

TICK = 0.5


class Peer:
    """A transport that records what the session wrote and how it was closed; it answers probes
    when told to."""

    def __init__(self) -> None:
        self.frames: list[dict[str, object]] = []
        self.closed: tuple[int, str] | None = None
        self.probes = 0
        self.answers = True

    def write(self, items: Sequence[bytes | Pong]) -> None:
        self.frames.extend(orjson.loads(i) for i in items if isinstance(i, bytes))

    def backed_up(self) -> bool:
        return False

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def probe(self) -> bool:
        self.probes += 1
        return self.closed is None

    def probe_answered(self) -> bool:
        return self.answers

    def types(self) -> list[object]:
        return [f["type"] for f in self.frames]


def _lifetimes(clock: FakeClock, **overrides: object) -> Lifetimes:
    settings = settings_for(**overrides)
    control = Control(MemoryRevocations(), settings, MemoryBus("i"), Members(), NoExits())
    hooks, tasks = Hooks(settings, "i1"), TaskGroup()
    return Lifetimes(settings, TimerWheel(TICK, clock), TokenVerifier(settings), control, hooks, tasks, clock.wall)


def _open(lives: Lifetimes, clock: FakeClock, expires_in: float) -> tuple[Session, Peer]:
    peer = Peer()
    identity = Identity("alice", clock.wall() + expires_in, None, time.time())
    session = Session("c1", identity, peer, lives.settings)
    lives.begin(session, peer)
    lives.watch(session)
    return session, peer


async def _flushed() -> None:
    """Frames leave at the end of the loop's turn, or a few turns later while it is busy (and this
    coroutine's own wake-ups keep it busy): services/flusher.py."""
    for _ in range(Flusher.BUSY_TURNS + 2):
        await asyncio.sleep(0)


def test_the_wheel_runs_each_deadline_once_in_order_never_early_and_at_most_a_tick_late() -> None:
    clock = FakeClock()
    wheel = TimerWheel(TICK, clock)
    ran: list[tuple[str, float]] = []
    start = clock.now

    def record(name: str) -> Callable[[], None]:
        return lambda: ran.append((name, clock.now - start))

    for name, delay in (("late", 2.0), ("early", 1.0), ("now", 0.0), ("mid", 1.2)):
        wheel.after(delay, record(name))
    wheel.after(1.0, lambda: ran.append(("cancelled", 0.0))).cancel()
    clock.advance(0.9)
    assert [n for n, _ in ran] == ["now"]
    clock.advance(5)
    assert [n for n, _ in ran] == ["now", "early", "mid", "late"]
    for (_, at), delay in zip(ran, (0.0, 1.0, 1.2, 2.0), strict=True):
        assert delay <= at <= delay + TICK + 1e-9
    assert len(wheel) == 0 and clock.pending() == 0


def test_one_loop_timer_serves_every_deadline() -> None:
    clock = FakeClock()
    wheel = TimerWheel(TICK, clock)
    ran: list[int] = []
    for n in range(1000):
        wheel.after(1 + n / 1000, functools.partial(ran.append, n))
    assert clock.pending() == 1  # not one per deadline
    clock.advance(3)
    assert ran == list(range(1000))
    assert len(wheel) == 0


@pytest.mark.gen_test(timeout=5)
async def test_token_expiring_comes_once_at_the_notice_and_4001_at_exp_plus_leeway() -> None:
    clock = FakeClock()
    lives = _lifetimes(clock, token_refresh_notice=60, jwt_leeway=5, ping_interval=0)
    session, peer = _open(lives, clock, expires_in=100)
    clock.advance(39)
    await _flushed()
    assert peer.types() == []
    clock.advance(1 + TICK)
    await _flushed()
    assert peer.types() == ["token_expiring"]
    clock.advance(100 + 5 - 40 - TICK - 0.01)  # just before exp + leeway
    assert peer.closed is None and not session.closed
    clock.advance(TICK + 0.02)
    assert session.close_code == 4001 and peer.closed == (4001, "token expired")
    assert peer.types() == ["token_expiring"]


@pytest.mark.gen_test(timeout=5)
async def test_a_short_lived_token_gets_its_notice_at_once() -> None:
    clock = FakeClock()
    lives = _lifetimes(clock, token_refresh_notice=60, ping_interval=0)
    _, peer = _open(lives, clock, expires_in=30)
    clock.advance(TICK)
    await _flushed()
    assert peer.types() == ["token_expiring"]


@pytest.mark.gen_test(timeout=5)
async def test_a_refresh_moves_both_deadlines_and_a_refused_one_moves_nothing() -> None:
    clock = FakeClock()
    lives = _lifetimes(clock, token_refresh_notice=60, jwt_leeway=5, ping_interval=0)
    session, peer = _open(lives, clock, expires_in=100)
    with pytest.raises(ClientError) as refused:
        await lives.refresh(session, token("mallory", ttl=3600), "r0")
    assert refused.value.code == "invalid_token"
    clock.advance(40 + TICK)  # the old token's notice still comes: the refusal moved nothing
    await _flushed()
    assert peer.types() == ["token_expiring"]
    await lives.refresh(session, token("alice", ttl=3600), "r1")
    await _flushed()
    assert peer.types() == ["token_expiring", "refreshed"] and peer.frames[1]["requestId"] == "r1"
    clock.advance(200)  # past the old token's expiry
    await _flushed()
    assert peer.closed is None and peer.types() == ["token_expiring", "refreshed"]
    clock.advance(3600 - 60 - 240 + 1 + TICK)
    await _flushed()
    assert peer.types() == ["token_expiring", "refreshed", "token_expiring"]


@pytest.mark.gen_test(timeout=5)
async def test_keepalive_probes_every_interval_and_drops_a_silent_peer() -> None:
    clock = FakeClock()
    lives = _lifetimes(clock, ping_interval=10, ping_timeout=4)
    _, peer = _open(lives, clock, expires_in=3600)
    clock.advance(10 + TICK)
    assert peer.probes == 1
    clock.advance(4 + TICK)  # answered: the next probe comes PING_INTERVAL after the last
    assert peer.closed is None and peer.probes == 1
    clock.advance(6 + TICK)
    assert peer.probes == 2
    peer.answers = False
    clock.advance(4 + TICK)
    assert peer.closed == (1000, "ping timed out")
    clock.advance(60)
    assert peer.probes == 2  # no probe to a dropped peer


@pytest.mark.gen_test(timeout=5)
async def test_a_closed_connection_leaves_no_deadline_behind() -> None:
    clock = FakeClock()
    lives = _lifetimes(clock, ping_interval=10, ping_timeout=4)
    session, peer = _open(lives, clock, expires_in=100)
    assert len(lives.timers) == 3  # notice, expiry, keepalive
    lives.end(session)
    assert len(lives.timers) == 0 and len(lives.sessions()) == 0
    clock.advance(1000)
    await _flushed()
    assert peer.types() == [] and peer.probes == 0 and peer.closed is None
