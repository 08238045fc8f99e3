"""What keeps a reconnect storm from becoming an outage (BENCHMARKS.md, "Reconnect storm"): the loop
lag the listener asks before accepting (services/loop_lag.py), the listener's pause while the loop is
behind (handlers/http_server.py), and the bound on Redis calls under way (services/breaker.py)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from services.breaker import IN_FLIGHT, LIVE, Breaker
from services.loop_lag import TICK, LoopLag
from tests.helpers import Client, sample, token, wait_for

T = 15


def hold_the_loop(seconds: float) -> None:
    """Blocks the event loop on purpose: what a storm's queued work does to it."""
    time.sleep(seconds)


@pytest.mark.gen_test(timeout=T)
async def test_the_loop_is_behind_while_something_holds_it_and_not_after() -> None:
    lag = LoopLag(0.1)
    lag.start()
    try:
        await asyncio.sleep(2 * TICK)
        assert not lag.behind()
        hold_the_loop(0.3)
        assert lag.behind()  # the next look is overdue already
        await wait_for(lambda: not lag.behind(), what="a look on time again")
        assert not LoopLag(0.0).behind()  # 0 turns it off
    finally:
        lag.stop()


@pytest.mark.gen_test(timeout=T)
async def test_while_the_loop_is_behind_new_connections_wait_and_are_then_served(make_gateway) -> None:
    gw = await make_gateway(max_loop_lag=0.1)
    lag = gw.gateway.loop_lag
    first = await gw.client("alice")
    paused = sample("gateway_accept_pauses_total")
    # Connect while the loop is held: the listener sees the lag and pauses instead of accepting.
    connecting = asyncio.ensure_future(Client.connect(gw.url, token("bob")))
    await asyncio.sleep(0)
    hold_the_loop(0.3)
    assert lag.behind()
    bob = await asyncio.wait_for(connecting, 10)  # served once the loop caught up: waited, not refused
    assert sample("gateway_accept_pauses_total") > paused
    await first.join("r")
    state = await bob.join("r")
    assert sorted(m["userId"] for m in state["payload"]["members"]) == ["alice", "bob"]


@pytest.mark.gen_test(timeout=T)
async def test_at_most_in_flight_redis_calls_are_under_way_and_their_timeout_starts_with_their_turn() -> None:
    async def never() -> None:
        raise AssertionError("no probe in this test")

    breaker = Breaker(0.5, (TimeoutError, ConnectionError), lambda exc: True, logging.getLogger("test"), never)
    gate = asyncio.Event()
    running = 0
    most = 0

    async def work() -> str:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await gate.wait()
        await asyncio.sleep(0.3)  # each call takes 0.3 s of its 0.5 s
        running -= 1
        return "ok"

    calls = [asyncio.ensure_future(breaker.call(work)) for _ in range(3 * IN_FLIGHT)]
    await wait_for(lambda: running == IN_FLIGHT, what="the first calls under way")
    gate.set()
    results = await asyncio.gather(*calls)
    # Three turns of 0.3 s each: the last calls waited 0.6 s in all, over their timeout, and still
    # succeeded, since a call's timeout counts from its turn.
    assert results == ["ok"] * (3 * IN_FLIGHT) and most == IN_FLIGHT


@pytest.mark.gen_test(timeout=T)
async def test_live_traffic_has_slots_of_its_own() -> None:
    """A storm's joins fill the shared slots; a message's Redis calls do not queue behind them."""

    async def never() -> None:
        raise AssertionError("no probe in this test")

    breaker = Breaker(5.0, (TimeoutError, ConnectionError), lambda exc: True, logging.getLogger("test"), never)
    gate = asyncio.Event()

    async def held() -> str:
        await gate.wait()
        return "join"

    async def quick() -> str:
        return "message"

    joins = [asyncio.ensure_future(breaker.call(held)) for _ in range(IN_FLIGHT + 10)]
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(breaker.call(quick))  # not live: behind the joins

    async def live_call() -> str:
        LIVE.set(True)
        return await breaker.call(quick)

    assert await asyncio.wait_for(live_call(), 2) == "message"
    assert not waiting.done()
    gate.set()
    assert await waiting == "message" and all(await asyncio.gather(*joins))
