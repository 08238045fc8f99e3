"""In-band token refresh (docs/protocol.md, the `refresh` frame): `token_expiring` ahead of
exp, `refresh {token}` answered `refreshed` and the 4001 deadline moved; a token of another user or
one that does not verify is `invalid_token` and the old deadline stands; with ROOM_ACCESS=token the
rooms the new token no longer allows are left with `room_update removed`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import jwt
import pytest

from services.ids import iso
from tests.helpers import Client, RunningGateway, sample, token

NOTICE = 2.0  # TOKEN_REFRESH_NOTICE in these tests
Factory = Callable[..., Awaitable[RunningGateway]]


def exp_of(jwt_token: str) -> int:
    return int(jwt.decode(jwt_token, options={"verify_signature": False})["exp"])


def refreshes(outcome: str) -> float:
    return sample("gateway_token_refreshes_total", outcome=outcome)


async def until(moment: float) -> None:
    """Wall-clock time is the condition here: a deadline that must have passed."""
    await asyncio.sleep(max(0.0, moment - time.time()))


@pytest.mark.gen_test(timeout=20)
async def test_a_refresh_before_exp_keeps_the_socket_past_the_old_exp(make_gateway: Factory) -> None:
    gw = await make_gateway(jwt_leeway=0, token_refresh_notice=NOTICE)
    ok = refreshes("ok")
    first = token("alice", ttl=3)
    old_exp = exp_of(first)
    alice = await Client.connect(gw.url, first)
    notice = await alice.expect("token_expiring", timeout=5)
    assert notice["payload"]["expiresAt"] == iso(old_exp)
    assert time.time() >= old_exp - NOTICE - 1.0  # not long before the notice was due

    second = token("alice", ttl=60)
    alice.send("refresh", {"token": second}, request_id="r1")
    refreshed = await alice.expect("refreshed")
    assert refreshed["requestId"] == "r1" and refreshed["payload"]["expiresAt"] == iso(exp_of(second))
    assert refreshes("ok") == ok + 1

    await until(old_exp + 2.0)  # the old 4001 deadline (1 s timer buckets) is behind us
    alice.send("ping", request_id="still-here")
    await alice.expect("pong", match=lambda f: f.get("requestId") == "still-here")
    assert not alice.closed


@pytest.mark.gen_test(timeout=20)
async def test_another_users_token_or_a_bad_one_changes_nothing(make_gateway: Factory) -> None:
    gw = await make_gateway(jwt_leeway=0, token_refresh_notice=NOTICE)
    other, invalid = (
        refreshes("other_user"),
        refreshes("invalid"),
    )
    alice = await Client.connect(gw.url, token("alice", ttl=3))
    started = time.monotonic()
    alice.send("refresh", {"token": token("mallory", ttl=600)}, request_id="r1")
    refused = await alice.expect("error", match=lambda f: f.get("requestId") == "r1")
    assert refused["payload"]["code"] == "invalid_token"
    alice.send("refresh", {"token": token("alice", ttl=600, secret="x" * 40)}, request_id="r2")
    forged = await alice.expect("error", match=lambda f: f.get("requestId") == "r2")
    assert forged["payload"]["code"] == "invalid_token"
    alice.send("refresh", {"token": "not-a-jwt"}, request_id="r3")
    assert (await alice.expect("error", match=lambda f: f.get("requestId") == "r3"))["payload"][
        "code"
    ] == "invalid_token"
    assert refreshes("other_user") == other + 1 and refreshes("invalid") == invalid + 2

    # The old deadline stood: 4001 within 6 s of the start (a moved one would be 600 s away).
    assert await alice.wait_closed(timeout=started + 6 - time.monotonic()) == 4001


@pytest.mark.gen_test(timeout=20)
async def test_a_token_shorter_than_the_notice_is_told_at_once(make_gateway: Factory) -> None:
    gw = await make_gateway(token_refresh_notice=600)
    brief = token("alice", ttl=120)
    alice = await Client.connect(gw.url, brief)
    notice = await alice.expect("token_expiring", timeout=3)
    assert notice["payload"]["expiresAt"] == iso(exp_of(brief))


@pytest.mark.gen_test(timeout=20)
async def test_with_room_access_token_a_narrowed_claim_leaves_the_rooms_it_no_longer_allows(
    make_gateway: Factory,
) -> None:
    gw = await make_gateway(room_access="token")
    alice = await Client.connect(gw.url, token("alice", rooms=["team-*", "lobby"]))
    bob = await Client.connect(gw.url, token("bob", rooms=["team-*", "lobby"]))
    for room in ("team-a", "lobby"):
        await alice.join(room)
        await bob.join(room)

    alice.send("refresh", {"token": token("alice", rooms=["team-*"])}, request_id="narrow")
    await alice.expect("refreshed", match=lambda f: f.get("requestId") == "narrow")
    removed = await alice.expect("room_update", match=lambda f: f["payload"]["action"] == "removed")
    assert removed["payload"]["roomId"] == "lobby"
    gone = await bob.expect("presence", match=lambda f: f["payload"]["roomId"] == "lobby")
    assert gone["payload"] == {**gone["payload"], "userId": "alice", "status": "offline"}

    alice.send("message", {"roomId": "lobby", "content": "still here?"}, request_id="m1")
    assert (await alice.expect("error", match=lambda f: f.get("requestId") == "m1"))["payload"]["code"] == "not_in_room"
    alice.send("join", {"roomId": "lobby"}, request_id="j1")
    assert (await alice.expect("error", match=lambda f: f.get("requestId") == "j1"))["payload"]["code"] == (
        "forbidden_room"
    )
    bob.send("message", {"roomId": "team-a", "content": "team only"})
    assert (await alice.expect("message"))["payload"]["content"] == "team only"  # the allowed room stays
