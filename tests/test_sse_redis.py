"""The HTTP transport without sticky sessions: a stream on one instance, its frames posted to
another, over one real Redis and over a real Redis Cluster (services/sse/relay.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.helpers import RunningGateway, sample, wait_for
from tests.redis_support import backend_overrides, unique_prefix
from tests.sse_support import post_frames, sse_client

Factory = Callable[..., Awaitable[RunningGateway]]
PING = {"type": "ping", "payload": {}}


@pytest.mark.parametrize("kind", ["redis", "cluster"])
@pytest.mark.gen_test(timeout=60)
async def test_a_post_on_instance_2_for_a_stream_on_instance_1(
    kind: str, request: pytest.FixtureRequest, make_gateway: Factory
) -> None:
    prefix = unique_prefix()
    a = await make_gateway(**backend_overrides(kind, request, prefix), instance_id="sse-a")
    b = await make_gateway(**backend_overrides(kind, request, prefix), instance_id="sse-b")
    alice, bob = await sse_client(a, "alice"), await b.client("bob")
    await bob.join("r")
    forwarded = sample("gateway_sse_sends_total", status="202", route="forwarded")
    join = {"type": "join", "payload": {"roomId": "r"}, "requestId": "j"}
    status, body, _ = await post_frames(b.port, alice.session_id, join)
    assert (status, body) == (202, {"accepted": 1})
    assert (await alice.reply_to("j"))["payload"]["action"] == "joined"
    frames = [
        {"type": "message", "payload": {"roomId": "r", "content": f"m{i}"}, "requestId": f"k{i}"} for i in range(5)
    ]
    assert (await post_frames(b.port, alice.session_id, frames))[0] == 202
    assert [(await bob.expect("message"))["payload"]["content"] for _ in range(5)] == [f"m{i}" for i in range(5)]
    assert [(await alice.reply_to(f"k{i}"))["type"] for i in range(5)] == ["ack"] * 5
    assert sample("gateway_sse_sends_total", status="202", route="forwarded") == forwarded + 2

    route = alice.session_id.split(".")[0]
    assert (await post_frames(b.port, f"{route}.{'Z' * 22}", PING))[0] == 404  # instance 1 says no
    assert (await post_frames(b.port, f"0123456789abcdef.{'G' * 22}", PING))[0] == 404  # no instance has the route
    alice.close()
    await wait_for(lambda: not a.gateway.sessions, what="alice's stream gone")
    assert (await post_frames(b.port, alice.session_id, PING))[0] == 404
