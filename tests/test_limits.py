"""Limits over real sockets: frame size (1009), flood (rate_limited then 1008), connections per user
(4029), and the slow consumer (4008) that must not slow anyone else."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.metrics import METRICS
from tests.helpers import RawWebSocket, token, wait_for


@pytest.mark.gen_test(timeout=15)
async def test_oversized_frame_closes_1009(make_gateway):
    gw = await make_gateway(max_message_bytes=1024)
    client = await gw.client("big")
    client.send("message", {"roomId": "r", "content": "x" * 2000})
    assert await client.wait_closed() == 1009


@pytest.mark.gen_test(timeout=15)
async def test_frame_just_under_the_limit_is_fine(make_gateway):
    gw = await make_gateway(max_message_bytes=1024, max_content=4000)
    client = await gw.client("edge")
    await client.join("r")
    client.send("message", {"roomId": "r", "content": "y" * 900})
    await client.expect("ack")


@pytest.mark.gen_test(timeout=20)
async def test_flood_gets_rate_limited_then_closed_1008(make_gateway):
    gw = await make_gateway(rate_limit=5, rate_burst=10, invalid_frame_limit=20)
    flooder = await gw.client("flooder")
    bystander = await gw.client("calm")
    for i in range(100):
        flooder.send("ping", request_id=f"f{i}")
    limited = await flooder.expect_error("rate_limited")
    assert limited["requestId"].startswith("f")  # even a refused frame's error is matched to it
    assert await flooder.wait_closed() == 1008
    bystander.send("ping")
    await bystander.expect("pong")


@pytest.mark.gen_test(timeout=20)
async def test_rate_within_limit_is_never_refused(make_gateway):
    gw = await make_gateway(rate_limit=50, rate_burst=10)
    client = await gw.client("steady")
    for _ in range(30):
        client.send("ping")
        await client.expect("pong")
        await asyncio.sleep(0.03)  # pacing the client at ~30 frames/s, below the limit
    await client.none_before_pong("error")


@pytest.mark.gen_test(timeout=20)
async def test_a_few_invalid_frames_do_not_close(make_gateway):
    gw = await make_gateway(invalid_frame_limit=5)
    client = await gw.client("clumsy")
    for _ in range(5):
        client.send_raw("{oops")
        await client.expect_error("invalid_json")
    client.send("ping")
    await client.expect("pong")
    client.send_raw("{oops")  # the sixth in a minute is abuse
    assert await client.wait_closed() == 1008


@pytest.mark.gen_test(timeout=15)
async def test_too_many_connections_for_one_user_closes_4029(make_gateway):
    gw = await make_gateway(max_user_connections=2)
    first, second = await gw.client("greedy"), await gw.client("greedy")
    third = await gw.client("greedy")
    assert await third.wait_closed() == 4029
    # The refused socket is forgotten like any other (it stayed tracked until the process ended).
    await wait_for(lambda: len(gw.gateway.sessions) == 2, what="the refused session forgotten")
    for c in (first, second):
        c.send("ping")
        await c.expect("pong")
    other = await gw.client("someone-else")
    other.send("ping")
    await other.expect("pong")
    first.close()
    await wait_for(lambda: len(gw.gateway.hub.users.get("greedy", ())) == 1, what="first connection gone")
    again = await gw.client("greedy")
    again.send("ping")
    await again.expect("pong")


@pytest.mark.gen_test(timeout=60)
async def test_slow_reader_is_closed_4008_and_fast_member_gets_everything(make_gateway):
    gw = await make_gateway(
        outbound_queue_frames=100,
        outbound_queue_bytes=512 * 1024,
        rate_limit=100_000,
        rate_burst=100_000,
        max_content=4000,
    )
    sender = await gw.client("sender")
    fast = await gw.client("fast")
    await sender.join("r")
    await fast.join("r")
    sender.drain_in_background()
    loop = asyncio.get_running_loop()
    # Blocking socket calls run off the loop: the server under test lives on this loop.
    slow = await loop.run_in_executor(None, RawWebSocket, gw.port, token("slow"))
    slow.send_text('{"type": "join", "payload": {"roomId": "r"}}')
    await wait_for(lambda: len(gw.gateway.hub.rooms.get("r", ())) == 3, what="slow reader joined")
    slow_session = next(s for s in gw.gateway.sessions if s.user_id == "slow")
    overflows_before = METRICS.queue_overflows._value.get()

    body = "z" * 3500
    chunk, chunks = 50, 60  # ~10 MB in all: more than the kernel buffers plus the 512 KiB bound
    slow_close_code = None
    worst = 0.0
    for c in range(chunks):
        started = time.monotonic()
        for i in range(c * chunk, (c + 1) * chunk):
            sender.send("message", {"roomId": "r", "content": f"{i}:{body}"})
        for i in range(c * chunk, (c + 1) * chunk):
            frame = await fast.expect("message", timeout=10)
            assert int(frame["payload"]["content"].split(":")[0]) == i
        worst = max(worst, time.monotonic() - started)
        if slow_session.closed and slow_close_code is None:
            # Read at once: the server gives a non-reading client a few seconds to take the close frame.
            slow_close_code = loop.run_in_executor(None, slow.read_until_close, 20.0)
    assert worst < 5, f"a chunk of {chunk} took {worst:.1f}s to reach the fast member"
    assert slow_session.close_code == 4008
    assert METRICS.queue_overflows._value.get() == overflows_before + 1
    assert slow_close_code is not None
    assert await slow_close_code == 4008
    slow.sock.close()
