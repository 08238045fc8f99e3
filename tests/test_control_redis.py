"""The control plane across two instances sharing Redis (one server, and the cluster): a disconnect
or a revocation called on one instance closes the user's sockets on both with 4003 while others
stay; the other instance then refuses older tokens at the handshake; a removal from a room keeps
the user's older tokens out of it on every instance."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest
from tornado.ioloop import IOLoop

from tests.control_support import API_KEY, api, later
from tests.helpers import Client, RunningGateway, refused_status, token
from tests.redis_support import backend_overrides, redis_overrides, unique_prefix

Pair = tuple[RunningGateway, RunningGateway]


@pytest.fixture(params=["redis", "cluster"])
def pair(
    request: pytest.FixtureRequest, io_loop: IOLoop, make_gateway: Callable[..., Awaitable[RunningGateway]]
) -> Pair:
    prefix = unique_prefix()
    settings = {**backend_overrides(request.param, request, prefix), "api_key": API_KEY}
    a = io_loop.run_sync(lambda: make_gateway(**settings, instance_id="gw-a"))
    b = io_loop.run_sync(lambda: make_gateway(**settings, instance_id="gw-b"))
    return a, b


async def still_open(*clients: Client) -> None:
    for index, client in enumerate(clients):
        marker = f"alive-{index}"
        client.send("ping", request_id=marker)
        await client.expect("pong", match=lambda f: f.get("requestId") == marker)  # noqa: B023 (awaited here)


@pytest.mark.gen_test(timeout=30)
async def test_disconnect_closes_the_users_sockets_on_both_instances(pair: Pair) -> None:
    a, b = pair
    alice_a, alice_b = await a.client("alice"), await b.client("alice")
    bob_a, bob_b = await a.client("bob"), await b.client("bob")
    status, _ = await api(a.http, "/api/disconnect", {"userId": "alice"})
    assert status == 200
    for client in (alice_a, alice_b):
        assert await client.wait_closed() == 4003
        assert client.conn.close_reason == "disconnected"
    await still_open(bob_a, bob_b)


@pytest.mark.gen_test(timeout=30)
async def test_revoke_on_one_instance_holds_on_the_other(pair: Pair) -> None:
    a, b = pair
    old = token("alice", iat=int(time.time()) - 60)
    alice_a, alice_b = await Client.connect(a.url, old), await Client.connect(b.url, old)
    bob_b = await b.client("bob")
    status, _ = await api(a.http, "/api/revoke", {"userId": "alice"})
    assert status == 200
    for client in (alice_a, alice_b):
        assert await client.wait_closed() == 4003
    for gw in (a, b):
        assert await refused_status(f"{gw.url}?token={old}") == (401, {"error": "token revoked"})
    newer = await Client.connect(b.url, token("alice", iat=later()))
    await still_open(newer, bob_b)


@pytest.mark.gen_test(timeout=30)
async def test_a_removal_holds_on_every_instance(pair: Pair) -> None:
    a, b = pair
    old = token("alice", iat=int(time.time()) - 5)
    inside = await Client.connect(a.url, old)
    await inside.join("team")
    outside = await Client.connect(b.url, old)  # not in the room: its instance is not subscribed to it
    await a.gateway.hub.control.remove("team", "alice")
    await inside.expect("room_update", match=lambda f: f["payload"]["action"] == "removed")
    for client in (outside, inside, await Client.connect(b.url, old)):
        client.send("join", {"roomId": "team"})
        await client.expect_error("forbidden_room")
    fresh = await Client.connect(b.url, token("alice", iat=later()))
    await fresh.join("team")


@pytest.mark.gen_test(timeout=40)
async def test_revoke_during_a_redis_outage_closes_the_sockets_and_says_503(make_gateway, private_redis) -> None:
    """The revocation cannot be stored: the sockets are still closed, and the caller is told to retry
    (answered 503), rather than a 200 for a revocation no later handshake would see."""
    gw = await make_gateway(**redis_overrides(private_redis.port), api_key=API_KEY)
    alice = await Client.connect(gw.url, token("alice", iat=int(time.time()) - 30))
    bob = await gw.client("bob")
    private_redis.stop()
    status, answer = await api(gw.http, "/api/revoke", {"userId": "alice"})
    assert status == 503 and "retry" in answer["error"], answer
    assert await alice.wait_closed() == 4003
    await still_open(bob)
