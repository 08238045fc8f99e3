"""Keepalive and token expiry on one timer wheel (services/connection/timers.py): a peer that answers pings
stays, one that does not is dropped after PING_INTERVAL + PING_TIMEOUT, and the wheel's own
contract (pure logic)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from tornado.ioloop import IOLoop

from services.connection.timers import TimerWheel
from tests.helpers import RawWebSocket, RunningGateway, sample, token, wait_for

FAST = {"ping_interval": 0.3, "ping_timeout": 0.3}


@pytest.fixture
def gw(io_loop: IOLoop, make_gateway: Callable[..., Awaitable[RunningGateway]]) -> RunningGateway:
    running: RunningGateway = io_loop.run_sync(lambda: make_gateway(**FAST))
    return running


@pytest.mark.gen_test(timeout=20)
async def test_a_peer_that_never_answers_pings_is_dropped(gw: RunningGateway) -> None:
    raw = await asyncio.to_thread(RawWebSocket, gw.port, token("silent"))

    def pings_then_close() -> tuple[int, float]:
        pings = 0
        started = time.monotonic()
        while True:
            frame = raw.recv_frame(timeout=10)
            if frame is None or frame[0] == 0x8:
                return pings, time.monotonic() - started
            if frame[0] == 0x9:
                pings += 1  # and no pong

    pings, after = await asyncio.to_thread(pings_then_close)
    raw.close()
    assert pings == 1  # one ping, then the timeout: no second ping to a dead peer
    assert after >= 0.5  # the ping came after PING_INTERVAL, the close after PING_TIMEOUT more


@pytest.mark.gen_test(timeout=20)
async def test_a_peer_that_answers_pings_stays(gw: RunningGateway) -> None:
    pongs = sample("gateway_frames_in_total", type="ws_pong")
    alive = await gw.client("alive")  # Tornado's client answers pings

    def answered(n: int) -> bool:
        return sample("gateway_frames_in_total", type="ws_pong") >= pongs + n

    await wait_for(lambda: answered(3), timeout=10, what="three keepalive rounds answered")
    alive.send("ping", request_id="still-here")  # and the socket is still served
    await alive.expect("pong", match=lambda f: f.get("requestId") == "still-here")
    assert not alive.closed


@pytest.mark.gen_test(timeout=10)
async def test_the_wheel_runs_deadlines_once_in_order_and_skips_cancelled_ones() -> None:
    wheel = TimerWheel(0.05)
    ran: list[str] = []
    done = asyncio.get_running_loop().create_future()
    started = time.monotonic()
    wheel.after(0.2, lambda: ran.append("late"))
    cancelled = wheel.after(0.1, lambda: ran.append("cancelled"))
    wheel.after(0.1, lambda: ran.append("early"))
    wheel.after(0.0, lambda: ran.append("now"))
    wheel.after(0.3, lambda: done.set_result(time.monotonic() - started))
    cancelled.cancel()
    took = await asyncio.wait_for(done, 5)
    assert ran == ["now", "early", "late"]
    assert took >= 0.3  # never early
    assert len(wheel) == 0


@pytest.mark.gen_test(timeout=10)
async def test_a_failing_deadline_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    wheel = TimerWheel(0.05)
    done = asyncio.get_running_loop().create_future()

    def boom() -> None:
        raise RuntimeError("a bug in one connection")

    wheel.after(0.05, boom)
    wheel.after(0.05, lambda: done.set_result(True))
    await asyncio.wait_for(done, 5)
    assert [r.getMessage() for r in caplog.records] == ["connection timer failed"]
