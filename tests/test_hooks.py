"""The application's backend hooks (docs/hooks.md), against a real HTTP backend started by the test:
each hook's answer, refusal and unavailable paths, the signature, keep-alive, the concurrency bound,
the join cache, the connect hook's re-ask, and the outcome metrics and logs."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import pytest
from realtime_gateway_client import Backoff, GatewayClient, GatewayError
from tornado.ioloop import IOLoop

from services.connection.background import TASK_BYTES, Background
from services.hooks.join_cache import JoinDecisions
from services.hub.tasks import TaskGroup
from services.ids import iso
from services.session import Session
from tests.control_support import API_KEY, api
from tests.helpers import Client, RunningGateway, refused_status, sample, token, wait_for
from tests.hook_support import HookBackend, delayed, refused_port
from tests.redis_support import backend_overrides, unique_prefix
from tests.sse_support import Refused, SseClient

HOOK_SECRET = "hook-secret-for-tests"
Factory = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
def backend(io_loop: IOLoop) -> Iterator[HookBackend]:
    started = io_loop.run_sync(lambda: HookBackend.start(HOOK_SECRET))
    yield started
    io_loop.run_sync(started.stop, timeout=5)
    assert started.bad_signatures == [] and started.bad_bodies == []  # every call, of every test


def held(frame_type: str, payload: dict[str, Any], request_id: str) -> int:
    """What a frame sent by tests.helpers.Client counts toward WAITING_BYTES."""
    return len(json.dumps({"type": frame_type, "payload": payload, "requestId": request_id})) + TASK_BYTES


def hooked(backend: HookBackend, *hooks: str, **settings: Any) -> dict[str, Any]:
    """Gateway settings with the given hooks pointed at the backend, signed."""
    out: dict[str, Any] = {"hook_secret": HOOK_SECRET, **settings}
    for hook in hooks:
        out[f"{hook}_hook_url"] = backend.url(hook)
    if "join" in hooks:
        out.setdefault("room_access", "hook")
    return out


def calls(hook: str, outcome: str) -> float:
    return sample("gateway_hook_calls_total", hook=hook, outcome=outcome)


# -- connect -------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
async def test_connect_by_cookie_forwards_the_listed_headers_and_the_query(
    make_gateway: Factory, backend: HookBackend
) -> None:
    backend.answers["connect"] = lambda body: (200, {"userId": "carol", "rooms": ["lobby"]})
    gw = await make_gateway(**hooked(backend, "connect"))
    headers = {"Cookie": "session=abc", "User-Agent": "tests", "X-Other": "not forwarded"}
    client = await Client.connect(f"{gw.url}?device=phone", headers=headers)
    client.send("join", {"roomId": "lobby"})
    state = await client.expect("presence_state")
    assert [m["userId"] for m in state["payload"]["members"]] == ["carol"]
    (call,) = backend.calls_of("connect")
    body = call.body
    assert body["hook"] == "connect" and body["transport"] == "websocket" and body["remoteAddr"] == "127.0.0.1"
    assert body["instance"] == gw.gateway.instance_id and body["connId"]
    assert body["headers"] == {"cookie": "session=abc", "user-agent": "tests"}
    assert body["query"] == {"device": "phone"}
    assert call.headers["Content-Type"] == "application/json" and call.headers["X-Request-Id"]
    assert backend.bad_signatures == [] and call.headers["X-Gateway-Signature"].startswith("sha256=")
    client.close()


@pytest.mark.gen_test(timeout=20)
async def test_connect_refusals_are_401_or_403_with_the_backends_error(
    make_gateway: Factory, backend: HookBackend
) -> None:
    gw = await make_gateway(**hooked(backend, "connect"))
    backend.answers["connect"] = lambda body: (401, {"error": "session expired"})
    assert await refused_status(gw.url) == (401, {"error": "session expired"})
    backend.answers["connect"] = lambda body: (403, {"error": "banned", "code": "ban"})
    assert await refused_status(gw.url) == (403, {"error": "banned"})
    backend.answers["connect"] = lambda body: (200, {"allow": True})  # no userId: not understood
    status, _ = await refused_status(gw.url)
    assert status == 503


@pytest.mark.parametrize("failure", ["500", "garbage", "timeout", "refused"])
@pytest.mark.gen_test(timeout=20)
async def test_connect_without_an_answer_is_503(make_gateway: Factory, backend: HookBackend, failure: str) -> None:
    settings = hooked(backend, "connect", hook_timeout=0.5)
    if failure == "refused":
        settings["connect_hook_url"] = f"http://127.0.0.1:{refused_port()}/connect"
    elif failure == "500":
        backend.answers["connect"] = lambda body: (500, {"error": "boom"})
    elif failure == "garbage":
        backend.answers["connect"] = lambda body: (200, b"<html>not json")
    else:
        backend.answers["connect"] = lambda body: delayed(3, (200, {"userId": "late"}))
    gw = await make_gateway(**settings)
    before = calls("connect", "unavailable")
    status, body = await refused_status(gw.url)
    assert status == 503 and "unavailable" in body["error"]
    assert calls("connect", "unavailable") == before + 1


@pytest.mark.gen_test(timeout=20)
async def test_a_token_skips_the_connect_hook(make_gateway: Factory, backend: HookBackend) -> None:
    gw = await make_gateway(**hooked(backend, "connect"))
    client = await gw.client("alice")
    await client.join("r1")
    assert backend.calls_of("connect") == []
    status, _ = await refused_status(f"{gw.url}?token=not-a-jwt")  # a bad token is 401, not the hook's to judge
    assert status == 401 and backend.calls_of("connect") == []
    client.close()


@pytest.mark.slow  # waits for a deadline of a few seconds
@pytest.mark.gen_test(timeout=20)
async def test_the_gateway_reasks_the_connect_hook_before_expires_at(
    make_gateway: Factory, backend: HookBackend
) -> None:
    first_exp, second_exp = int(time.time()) + 3, int(time.time()) + 60
    answers = iter([{"userId": "dave", "expiresAt": first_exp}, {"userId": "dave", "expiresAt": second_exp}])
    backend.answers["connect"] = lambda body: (200, next(answers))
    gw = await make_gateway(**hooked(backend, "connect", token_refresh_notice=2))
    client = await Client.connect(gw.url, headers={"Cookie": "session=d"})
    refreshed = await client.expect("refreshed", timeout=5)
    assert refreshed["payload"]["expiresAt"] == iso(second_exp)
    first, second = backend.calls_of("connect")
    assert second.body["headers"] == first.body["headers"]  # the handshake's headers, again
    assert second.body["headers"]["cookie"] == "session=d"
    await wait_for(lambda: time.time() > first_exp + 1, what="the first expiresAt to pass")
    client.send("ping", request_id="alive")
    assert (await client.reply_to("alive"))["type"] == "pong"
    client.close()


@pytest.mark.slow  # waits for a deadline of a few seconds
@pytest.mark.parametrize("second", ["refused", "same expiresAt"])
@pytest.mark.gen_test(timeout=20)
async def test_a_reask_that_does_not_move_the_deadline_closes_4001_at_expires_at(
    make_gateway: Factory, backend: HookBackend, second: str
) -> None:
    exp = time.time() + 3
    again: tuple[int, dict[str, Any]] = (
        (401, {"error": "logged out"}) if second == "refused" else (200, {"userId": "erin", "expiresAt": exp})
    )
    backend.answers["connect"] = (
        lambda body: (200, {"userId": "erin", "expiresAt": exp}) if not backend.calls[1:] else again
    )
    gw = await make_gateway(**hooked(backend, "connect", token_refresh_notice=2))
    client = await Client.connect(gw.url, headers={"Cookie": "session=e"})
    assert await client.wait_closed(timeout=8) == 4001
    assert time.time() >= exp - 0.1  # not before the backend's expiresAt
    assert len(backend.calls_of("connect")) == 2  # asked once again, not at every tick


# -- join ----------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
async def test_join_allowed_refused_with_reason_and_refused_by_status(
    make_gateway: Factory, backend: HookBackend
) -> None:
    def decide(body: dict[str, Any]) -> tuple[int, Any]:
        if body["roomId"] == "secret":
            return 200, {"allow": False, "reason": "members only"}
        if body["roomId"] == "gone":
            return 404, {"error": "no such room"}
        return 200, {"allow": True}

    backend.answers["join"] = decide
    gw = await make_gateway(**hooked(backend, "join"))
    client = await gw.client("alice")
    await client.join("open-room")
    call = backend.calls_of("join")[0]
    assert call.body["userId"] == "alice" and call.body["roomId"] == "open-room"
    assert call.body["connId"] and call.body["transport"] == "websocket"
    client.send("join", {"roomId": "secret"}, request_id="j2")
    error = await client.reply_to("j2")
    assert error["payload"]["code"] == "forbidden_room" and error["payload"]["roomId"] == "secret"
    assert error["payload"]["details"] == {"reason": "members only"}
    client.send("join", {"roomId": "gone"}, request_id="j3")
    error = await client.reply_to("j3")
    assert error["payload"]["code"] == "forbidden_room" and error["payload"]["details"] == {"reason": "no such room"}
    client.send("message", {"roomId": "secret", "content": "hi"}, request_id="m1")
    assert (await client.reply_to("m1"))["payload"]["code"] == "not_in_room"
    assert backend.bad_signatures == []
    client.close()


@pytest.mark.parametrize("failure", ["500", "garbage", "timeout", "refused", "404-page"])
@pytest.mark.gen_test(timeout=20)
async def test_join_without_an_answer_is_unavailable_and_not_joined(
    make_gateway: Factory, backend: HookBackend, failure: str
) -> None:
    settings = hooked(backend, "join", hook_timeout=0.5)
    if failure == "refused":
        settings["join_hook_url"] = f"http://127.0.0.1:{refused_port()}/join"
    elif failure == "500":
        backend.answers["join"] = lambda body: (502, b"bad gateway")
    elif failure == "garbage":
        backend.answers["join"] = lambda body: (200, {"allow": "yes"})
    elif failure == "404-page":  # a proxy's page, not the backend's refusal: no {"error"} body
        backend.answers["join"] = lambda body: (404, b"<html>Not Found</html>")
    else:
        backend.answers["join"] = lambda body: delayed(3, (200, {"allow": True}))
    gw = await make_gateway(**settings)
    client = await gw.client("alice")
    client.send("join", {"roomId": "r1"}, request_id="j1")
    error = await client.reply_to("j1")
    assert error["payload"]["code"] == "unavailable" and error["payload"]["roomId"] == "r1"
    assert gw.gateway.hub.rooms.get("r1") is None
    client.close()


@pytest.mark.gen_test(timeout=20)
async def test_the_join_cache_skips_the_backend_until_a_removal(make_gateway: Factory, backend: HookBackend) -> None:
    gw = await make_gateway(**hooked(backend, "join", join_hook_cache_ttl=60, api_key="k" * 32))
    first, second = await gw.client("alice"), await gw.client("alice")
    await first.join("r1")
    await second.join("r1")
    assert len(backend.calls_of("join")) == 1
    await gw.gateway.hub.control.remove("r1", "alice")  # what the control API and room.member_removed do
    await first.expect("room_update", match=lambda f: f["payload"]["action"] == "removed")
    third = await Client.connect(gw.url, token("alice", iat=int(time.time()) + 1))
    await third.join("r1")
    assert len(backend.calls_of("join")) == 2
    for c in (first, second, third):
        c.close()


@pytest.mark.parametrize("store", ["redis", "cluster"])
@pytest.mark.gen_test(timeout=30)
async def test_a_revocation_on_one_instance_drops_the_join_cache_of_the_other(
    make_gateway: Factory, backend: HookBackend, store: str, request: pytest.FixtureRequest
) -> None:
    shared = {**backend_overrides(store, request, unique_prefix()), "api_key": API_KEY, "join_hook_cache_ttl": 60}
    a = await make_gateway(**hooked(backend, "join", **shared), instance_id="gw-a")
    b = await make_gateway(**hooked(backend, "join", **shared), instance_id="gw-b")
    on_b = await b.client("alice")
    await on_b.join("r1")
    again = await b.client("alice")
    await again.join("r1")
    assert len(backend.calls_of("join")) == 1  # the second join on b came from b's cache
    status, _ = await api(a.http, "/api/revoke", {"userId": "alice"})
    assert status == 200
    assert await on_b.wait_closed() == 4003
    later = await Client.connect(b.url, token("alice", iat=int(time.time()) + 2))
    await later.join("r1")
    assert len(backend.calls_of("join")) == 2  # asked again: the revocation dropped b's cached answer
    for c in (on_b, again, later):
        c.close()


@pytest.mark.gen_test(timeout=20)
async def test_keep_alive_reuses_a_handful_of_connections(make_gateway: Factory, backend: HookBackend) -> None:
    gw = await make_gateway(**hooked(backend, "join"), rate_limit=1000, rate_burst=1000)
    client = await gw.client("alice")
    before = backend.connections
    for n in range(60):
        await client.join(f"room-{n}")
    assert len(backend.calls_of("join")) == 60
    assert backend.connections - before <= 2
    client.close()


@pytest.mark.gen_test(timeout=20)
async def test_the_concurrency_bound_fails_fast(make_gateway: Factory, backend: HookBackend) -> None:
    gw = await make_gateway(**hooked(backend, "join", hook_concurrency=2, hook_timeout=10))
    backend.hold()
    clients = [await gw.client(f"u{n}") for n in range(3)]
    for n, c in enumerate(clients[:2]):
        c.send("join", {"roomId": "r"}, request_id=f"j{n}")
        await wait_for(lambda n=n: backend.waiting == n + 1, what="the call to wait at the backend")  # type: ignore[misc]
    clients[2].send("join", {"roomId": "r"}, request_id="j2")
    error = await clients[2].reply_to("j2")
    # Refused while the two calls still hang, and never sent: no queue behind the bound.
    assert error["payload"]["code"] == "unavailable"
    assert backend.waiting == 2 and len(backend.calls_of("join")) == 2
    assert sample("gateway_hook_in_flight") == 2
    backend.release()
    for n in range(2):
        assert (await clients[n].reply_to(f"j{n}"))["payload"]["action"] == "joined"
    for c in clients:
        c.close()


@pytest.mark.gen_test(timeout=20)
async def test_one_connection_cannot_take_every_call_while_the_backend_hangs_for_it(
    make_gateway: Factory, backend: HookBackend
) -> None:
    gw = await make_gateway(**hooked(backend, "join", hook_timeout=10), rate_limit=500, rate_burst=500)
    greedy, other = await gw.client("greedy"), await gw.client("other")
    backend.hold()
    for n in range(17):
        greedy.send("join", {"roomId": f"r{n}"}, request_id=f"j{n}")
    refused = await greedy.reply_to("j16")  # the 17th: over the connection's share, at once
    assert refused["payload"]["code"] == "unavailable"
    await wait_for(lambda: backend.waiting == 16, what="the connection's 16 calls at the backend")
    other.send("join", {"roomId": "mine"}, request_id="o")
    await wait_for(lambda: backend.waiting == 17, what="the other connection's call at the backend too")
    backend.release()
    assert (await other.reply_to("o"))["payload"]["action"] == "joined"
    assert [(await greedy.reply_to(f"j{n}"))["payload"]["action"] for n in range(16)] == ["joined"] * 16
    greedy.close()
    other.close()


@pytest.mark.slow  # the join waits 4 s
@pytest.mark.gen_test(timeout=30)
async def test_a_ping_and_other_rooms_are_answered_while_a_join_waits(
    make_gateway: Factory, backend: HookBackend
) -> None:
    answered = asyncio.Event()

    async def join(body: dict[str, Any]) -> tuple[int, Any]:
        if body["roomId"] == "slow":
            await asyncio.sleep(4)  # the slow backend under test
            answered.set()
        return 200, {"allow": True}

    backend.answers["join"] = join
    gw = await make_gateway(**hooked(backend, "join", hook_timeout=10))
    client = await gw.client("alice")
    client.send("join", {"roomId": "slow"}, request_id="slow-join")
    client.send("message", {"roomId": "slow", "content": "after the join"}, request_id="slow-msg")
    client.send("ping", request_id="p1")
    assert (await client.reply_to("p1"))["type"] == "pong"
    client.send("join", {"roomId": "fast"}, request_id="fast-join")
    assert (await client.reply_to("fast-join"))["payload"]["action"] == "joined"
    client.send("presence", {"roomId": "fast", "status": "typing"})
    await client.expect("presence", match=lambda f: f["payload"]["status"] == "typing")
    client.send("ping", request_id="p2")
    assert (await client.reply_to("p2"))["type"] == "pong"
    assert not answered.is_set()  # all of that while the backend still held the slow join
    joined = await client.reply_to("slow-join")
    assert joined["payload"]["action"] == "joined"
    ack = await client.reply_to("slow-msg")  # queued behind its room's join, not refused not_in_room
    assert ack["type"] == "ack"
    client.close()


@pytest.mark.gen_test(timeout=40)
async def test_a_hanging_backend_holds_bounded_frames_and_never_the_loop(
    make_gateway: Factory, backend: HookBackend
) -> None:
    waiting = 20  # messages per connection that fit in WAITING_BYTES (every one here has the same length)
    sample_frame = ("message", {"roomId": "hall", "content": "m10", "dedupeKey": "k10"}, "m10")
    gw = await make_gateway(
        **hooked(backend, "join", "publish", hook_timeout=30),
        waiting_bytes=waiting * held(*sample_frame),
        rate_limit=500,
        rate_burst=500,
    )
    clients = [await gw.client(f"u{n}") for n in range(10)]
    for c in clients:
        await c.join("hall")
    backend.hold()
    sent = 0
    for c in clients:
        for n in range(10, 40):  # 300 frames: 200 wait, 100 are over the bound
            c.send("message", {"roomId": "hall", "content": f"m{n}", "dedupeKey": f"k{n}"}, request_id=f"m{n}")
            sent += 1
    over = 0
    for c in clients:
        for n in range(10 + waiting, 40):
            error = await c.reply_to(f"m{n}")
            over += error["payload"]["code"] == "unavailable"
        c.send("ping", request_id="alive")
        assert (await c.reply_to("alive"))["type"] == "pong"
    assert over == 100
    assert sample("gateway_frames_waiting") == 10 * waiting
    # One publish call per sender at a time (its messages keep their order), all ten waiting.
    await wait_for(lambda: backend.waiting == 10, what="one call per sender at the backend")
    assert len(backend.calls_of("publish")) == 10
    backend.release()
    for c in clients:
        for n in range(10, 10 + waiting):
            assert (await c.reply_to(f"m{n}", timeout=10))["type"] == "ack"
    await wait_for(lambda: sample("gateway_frames_waiting") == 0, what="nothing left waiting")
    for c in clients:
        c.close()


# -- what a join meets while it waits for the backend --------------------------------------------


@pytest.mark.gen_test(timeout=20)
async def test_a_socket_closed_while_its_join_waits_is_never_announced(
    make_gateway: Factory, backend: HookBackend
) -> None:
    gw = await make_gateway(**hooked(backend, "join", hook_timeout=10))
    bob = await gw.client("bob")
    await bob.join("r")
    backend.hold()
    alice = await gw.client("alice")
    alice.send("join", {"roomId": "r"})
    await wait_for(lambda: backend.waiting == 1, what="alice's join at the backend")
    alice.close()
    await wait_for(lambda: "alice" not in gw.gateway.hub.users, what="alice's socket gone")
    backend.release()
    await wait_for(lambda: sample("gateway_frames_waiting") == 0, what="the join to end")
    await bob.none_before_pong("presence", match=lambda f: f["payload"]["userId"] == "alice")
    assert [s.user_id for s in gw.gateway.hub.rooms["r"]] == ["bob"]
    bob.close()


@pytest.mark.gen_test(timeout=20)
async def test_a_removal_while_the_join_waits_refuses_it(make_gateway: Factory, backend: HookBackend) -> None:
    gw = await make_gateway(**hooked(backend, "join", hook_timeout=10, join_hook_cache_ttl=60))
    alice = await gw.client("alice")
    backend.hold()
    alice.send("join", {"roomId": "r"}, request_id="j")
    await wait_for(lambda: backend.waiting == 1, what="the join at the backend")
    await gw.gateway.hub.control.remove("r", "alice")  # room.member_removed, meanwhile
    backend.release()
    refused = await alice.reply_to("j")
    assert refused["payload"]["code"] == "forbidden_room"
    assert not gw.gateway.hooks.decisions.allowed("alice", "r")  # the answer from before is not kept
    alice.close()


@pytest.mark.gen_test(timeout=20)
async def test_concurrent_hooked_joins_stay_within_max_rooms(make_gateway: Factory, backend: HookBackend) -> None:
    gw = await make_gateway(**hooked(backend, "join", hook_timeout=10), max_rooms=2)
    alice = await gw.client("alice")
    backend.hold()
    for n in range(4):
        alice.send("join", {"roomId": f"r{n}"}, request_id=f"j{n}")
    await wait_for(lambda: backend.waiting == 4, what="four joins at the backend at once")
    backend.release()
    replies = [await alice.reply_to(f"j{n}") for n in range(4)]
    outcomes = sorted(r["payload"].get("action") or r["payload"]["code"] for r in replies)
    assert outcomes == ["joined", "joined", "too_many_rooms", "too_many_rooms"]
    assert len(next(iter(gw.gateway.connections.sessions)).rooms) == 2
    alice.close()


@pytest.mark.gen_test(timeout=20)
async def test_a_leave_does_not_overtake_the_rooms_earlier_message(make_gateway: Factory, backend: HookBackend) -> None:
    gw = await make_gateway(**hooked(backend, "publish", hook_timeout=10))
    alice = await gw.client("alice")
    await alice.join("r")
    backend.hold()
    alice.send("message", {"roomId": "r", "content": "first"}, request_id="m")
    alice.send("leave", {"roomId": "r"}, request_id="l")
    await wait_for(lambda: backend.waiting == 1, what="the message at the backend")
    backend.release()
    replies: list[tuple[str, str]] = []
    while len(replies) < 2:  # the replies in the order they arrive (nothing set aside)
        frame = await alice.recv()
        assert frame is not None
        if frame.get("requestId") in ("m", "l"):
            replies.append((frame["type"], frame["requestId"]))
    assert replies == [("ack", "m"), ("room_update", "l")]
    alice.close()


@pytest.mark.gen_test(timeout=20)
async def test_messages_queued_behind_a_join_are_not_refused_for_a_later_one_over_the_bound(
    make_gateway: Factory, backend: HookBackend
) -> None:
    join = held("join", {"roomId": "r"}, "j")
    message = held("message", {"roomId": "r", "content": "m0", "dedupeKey": "k0"}, "m0")
    gw = await make_gateway(**hooked(backend, "join", hook_timeout=10), waiting_bytes=join + 4 * message)
    alice = await gw.client("alice")
    backend.hold()
    alice.send("join", {"roomId": "r"}, request_id="j")
    for n in range(5):  # four wait behind the join (WAITING_BYTES holds them), the fifth is over it
        alice.send("message", {"roomId": "r", "content": f"m{n}", "dedupeKey": f"k{n}"}, request_id=f"m{n}")
    over = await alice.reply_to("m4")
    assert over["payload"]["code"] == "unavailable"
    backend.release()
    assert (await alice.reply_to("j"))["payload"]["action"] == "joined"
    assert [(await alice.reply_to(f"m{n}"))["type"] for n in range(4)] == ["ack"] * 4
    alice.send("message", {"roomId": "r", "content": "m4", "dedupeKey": "k4"}, request_id="again")
    assert (await alice.reply_to("again"))["type"] == "ack"  # the refused one, sent again, goes
    alice.close()


# -- publish -------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
async def test_publish_accepts_rewrites_and_rejects(make_gateway: Factory, backend: HookBackend) -> None:
    def moderate(body: dict[str, Any]) -> tuple[int, Any]:
        content = body["message"]["content"]
        if "darn" in content:
            return 200, {"allow": True, "content": content.replace("darn", "****")}
        if "spam" in content:
            return 200, {"allow": False, "reason": "looks like spam"}
        if "banned" in content:
            return 403, {"error": "you are muted"}
        return 200, {}

    backend.answers["publish"] = moderate
    gw = await make_gateway(**hooked(backend, "publish"))
    alice, bob = await gw.client("alice"), await gw.client("bob")
    await alice.join("r")
    await bob.join("r")
    alice.send("message", {"roomId": "r", "content": "hello", "dedupeKey": "k1"}, request_id="m1")
    assert (await bob.expect("message"))["payload"]["content"] == "hello"
    call = backend.calls_of("publish")[0]
    assert call.body["userId"] == "alice" and call.body["roomId"] == "r"
    assert set(call.body["message"]) == {"id", "content", "attachments", "createdAt", "dedupeKey"}
    alice.send("message", {"roomId": "r", "content": "darn it"}, request_id="m2")
    assert (await bob.expect("message", match=lambda f: "it" in f["payload"]["content"]))["payload"]["content"] == (
        "**** it"
    )
    alice.send("message", {"roomId": "r", "content": "buy spam", "dedupeKey": "k3"}, request_id="m3")
    error = await alice.reply_to("m3")
    assert error["payload"] == {
        "message": "looks like spam",
        "code": "rejected",
        "roomId": "r",
        "dedupeKey": "k3",
        "details": {"reason": "looks like spam"},
    }
    alice.send("message", {"roomId": "r", "content": "banned words"}, request_id="m4")
    assert (await alice.reply_to("m4"))["payload"]["details"] == {"reason": "you are muted"}
    await bob.none_before_pong(
        "message", match=lambda f: "spam" in f["payload"]["content"] or "banned" in f["payload"]["content"]
    )
    alice.close()
    bob.close()


@pytest.mark.gen_test(timeout=20)
async def test_a_rejected_dedupe_key_sent_again_is_decided_anew(make_gateway: Factory, backend: HookBackend) -> None:
    verdicts = iter([(200, {"allow": False, "reason": "wait"}), (500, b""), (200, {"allow": True})])
    backend.answers["publish"] = lambda body: next(verdicts)
    gw = await make_gateway(**hooked(backend, "publish"))
    alice = await gw.client("alice")
    await alice.join("r")
    payload = {"roomId": "r", "content": "third time lucky", "dedupeKey": "same"}
    alice.send("message", payload, request_id="a")
    assert (await alice.reply_to("a"))["payload"]["code"] == "rejected"
    alice.send("message", payload, request_id="b")
    error = await alice.reply_to("b")
    assert error["payload"]["code"] == "unavailable" and error["payload"]["dedupeKey"] == "same"
    alice.send("message", payload, request_id="c")
    ack = await alice.reply_to("c")
    assert ack["type"] == "ack" and ack["payload"]["dedupeKey"] == "same"
    assert (await alice.expect("message"))["payload"]["id"] == ack["payload"]["id"]
    assert len(backend.calls_of("publish")) == 3
    alice.close()


@pytest.mark.gen_test(timeout=30)
async def test_one_senders_messages_keep_their_order_through_random_delays(
    make_gateway: Factory, backend: HookBackend
) -> None:
    rng = random.Random(7)
    backend.answers["publish"] = lambda body: delayed(rng.uniform(0, 0.05), (200, {}))
    gw = await make_gateway(**hooked(backend, "publish"), rate_limit=200, rate_burst=200)
    alice, bob = await gw.client("alice"), await gw.client("bob")
    await alice.join("r")
    await bob.join("r")
    for n in range(30):
        alice.send("message", {"roomId": "r", "content": f"m{n}", "dedupeKey": f"k{n}"})
    got = [(await bob.expect("message", timeout=10))["payload"]["content"] for _ in range(30)]
    assert got == [f"m{n}" for n in range(30)]
    alice.close()
    bob.close()


# -- rpc -----------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
async def test_rpc_round_trip_refusal_and_validation(make_gateway: Factory, backend: HookBackend) -> None:
    def answer(body: dict[str, Any]) -> tuple[int, Any]:
        if body["method"] == "forbidden":
            return 409, {"error": "already read", "code": "conflict"}
        return 200, {"data": {"method": body["method"], "got": body["data"], "user": body["userId"]}}

    backend.answers["rpc"] = answer
    gw = await make_gateway(**hooked(backend, "rpc"))
    client = await gw.client("alice")
    client.send("rpc", {"method": "mark.read", "data": {"roomId": "r", "upTo": 7}}, request_id="r1")
    result = await client.reply_to("r1")
    assert result == {
        "type": "rpc_result",
        "payload": {
            "method": "mark.read",
            "data": {"method": "mark.read", "got": {"roomId": "r", "upTo": 7}, "user": "alice"},
        },
        "requestId": "r1",
    }
    client.send("rpc", {"method": "forbidden"}, request_id="r2")
    error = await client.reply_to("r2")
    assert error["payload"]["code"] == "rpc_failed" and error["payload"]["message"] == "already read"
    assert error["payload"]["details"] == {"status": 409, "code": "conflict"}
    client.send("rpc", {"method": "no spaces allowed"}, request_id="r3")
    assert (await client.reply_to("r3"))["payload"]["code"] == "validation_failed"
    assert [c.body["method"] for c in backend.calls_of("rpc")] == ["mark.read", "forbidden"]
    client.close()


@pytest.mark.gen_test(timeout=20)
async def test_rpc_without_the_hook_is_not_enabled(make_gateway: Factory) -> None:
    gw = await make_gateway()
    client = await gw.client("alice")
    client.send("rpc", {"method": "x"}, request_id="r1")
    error = await client.reply_to("r1")
    assert error["payload"]["code"] == "not_enabled"
    client.close()


@pytest.mark.gen_test(timeout=20)
async def test_at_most_16_rpc_calls_in_flight_per_connection(make_gateway: Factory, backend: HookBackend) -> None:
    gw = await make_gateway(**hooked(backend, "rpc", hook_timeout=10), rate_limit=500, rate_burst=500)
    backend.hold()
    client = await gw.client("alice")
    for n in range(17):
        client.send("rpc", {"method": "slow"}, request_id=f"r{n}")
    error = await client.reply_to("r16")
    assert error["payload"]["code"] == "rate_limited"
    await wait_for(lambda: backend.waiting == 16, what="16 calls at the backend")
    backend.release()
    for n in range(16):
        assert (await client.reply_to(f"r{n}"))["type"] == "rpc_result"
    client.close()


def failing(backend: HookBackend, hook: str, failure: str, settings: dict[str, Any]) -> None:
    """Make `hook` fail the way `failure` says: a 5xx, an answer that does not load, a timeout
    (settings' HOOK_TIMEOUT is 0.5 s), a refused connection."""
    if failure == "refused":
        settings[f"{hook}_hook_url"] = f"http://127.0.0.1:{refused_port()}/{hook}"
    elif failure == "500":
        backend.answers[hook] = lambda body: (503, {"error": "down"})
    elif failure == "garbage":
        backend.answers[hook] = lambda body: (200, {"allow": "maybe", "data": 1} if hook == "publish" else b"[1, 2")
    else:
        backend.answers[hook] = lambda body: delayed(3, (200, {}))


@pytest.mark.parametrize("failure", ["500", "garbage", "timeout", "refused"])
@pytest.mark.gen_test(timeout=20)
async def test_rpc_and_publish_without_an_answer_are_unavailable(
    make_gateway: Factory, backend: HookBackend, failure: str
) -> None:
    settings = hooked(backend, "rpc", "publish", hook_timeout=0.5)
    failing(backend, "rpc", failure, settings)
    failing(backend, "publish", failure, settings)
    gw = await make_gateway(**settings)
    alice, bob = await gw.client("alice"), await gw.client("bob")
    await alice.join("r")
    await bob.join("r")
    alice.send("rpc", {"method": "x"}, request_id="r1")
    assert (await alice.reply_to("r1"))["payload"]["code"] == "unavailable"
    alice.send("message", {"roomId": "r", "content": "hi", "dedupeKey": "k"}, request_id="m1")
    error = (await alice.reply_to("m1"))["payload"]
    assert (error["code"], error["roomId"], error["dedupeKey"]) == ("unavailable", "r", "k")
    await bob.none_before_pong("message")  # delivered to no one
    alice.close()
    bob.close()


# -- logs and metrics ----------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
async def test_unavailable_is_logged_once_per_episode(
    make_gateway: Factory, backend: HookBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend.answers["rpc"] = lambda body: (500, b"")
    gw = await make_gateway(**hooked(backend, "rpc"))
    client = await gw.client("alice")
    caplog.set_level(logging.INFO, logger="gateway.hooks")
    ok, unavailable = calls("rpc", "ok"), calls("rpc", "unavailable")

    async def rpc(n: int) -> str:
        client.send("rpc", {"method": "m"}, request_id=f"r{n}")
        frame = await client.reply_to(f"r{n}")
        return str(frame["payload"].get("code", frame["type"]))

    assert [await rpc(n) for n in range(5)] == ["unavailable"] * 5
    backend.answers["rpc"] = lambda body: (200, {"data": 1})
    assert await rpc(5) == "rpc_result"
    backend.answers["rpc"] = lambda body: (500, b"")
    assert await rpc(6) == "unavailable"
    messages = [r.getMessage() for r in caplog.records if r.name == "gateway.hooks" and r.levelno >= logging.WARNING]
    assert messages == ["backend unavailable", "backend answering again", "backend unavailable"]
    assert calls("rpc", "unavailable") == unavailable + 6 and calls("rpc", "ok") == ok + 1
    backend.answers["rpc"] = lambda body: (403, {"error": "not yours"})
    assert await rpc(7) == "rpc_failed"
    (refused,) = [r for r in caplog.records if getattr(r, "outcome", None) == "refused"]
    assert refused.levelno == logging.INFO  # traceable: the same id as the backend's X-Request-Id
    assert refused.request_id == backend.calls_of("rpc")[-1].headers["X-Request-Id"]  # type: ignore[attr-defined]
    client.close()


# -- the Python SDK --------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
async def test_the_sdk_calls_rpc_and_says_which_refusals_to_retry(make_gateway: Factory, backend: HookBackend) -> None:
    backend.answers["rpc"] = lambda body: {
        "fail": (422, {"error": "bad input", "code": "invalid"}),
        "down": (500, b""),
    }.get(body["method"], (200, {"data": [body["method"], body["data"]]}))
    backend.answers["publish"] = lambda body: (200, {"allow": "spam" not in body["message"]["content"]})
    gw = await make_gateway(**hooked(backend, "rpc", "publish"))
    client = GatewayClient(gw.url, token("alice"), backoff=Backoff(initial=0.05, maximum=0.5))
    await client.connect()
    try:
        assert await client.rpc("load.older", {"before": 10}) == ["load.older", {"before": 10}]
        with pytest.raises(GatewayError) as failed:
            await client.rpc("fail")
        assert failed.value.code == "rpc_failed" and not failed.value.retryable
        assert failed.value.details == {"status": 422, "code": "invalid"}
        with pytest.raises(GatewayError) as down:
            await client.rpc("down")
        assert down.value.code == "unavailable" and down.value.retryable
        await client.join("r")
        with pytest.raises(GatewayError) as rejected:
            await client.send("r", "spam spam")
        assert rejected.value.code == "rejected" and not rejected.value.retryable
        assert (await client.send("r", "fine")).room_id == "r"
    finally:
        await client.close()


@pytest.mark.gen_test(timeout=20)
async def test_the_join_hook_is_asked_again_for_the_sdks_rejoin_after_a_drop(
    make_gateway: Factory, backend: HookBackend
) -> None:
    gw = await make_gateway(**hooked(backend, "join"))
    client = GatewayClient(gw.url, token("alice"), backoff=Backoff(initial=0.05, maximum=0.5))
    await client.connect()
    try:
        await client.join("r")
        (session,) = list(gw.gateway.sessions)
        session.close(1012, "restart")  # what a drain does
        await wait_for(lambda: len(backend.calls_of("join")) == 2, what="the re-join to ask the backend")
        await wait_for(lambda: "r" in gw.gateway.hub.rooms, what="the re-join")
        assert [c.body["roomId"] for c in backend.calls_of("join")] == ["r", "r"]
        assert backend.calls_of("join")[0].body["connId"] != backend.calls_of("join")[1].body["connId"]
    finally:
        await client.close()


# -- pure logic ----------------------------------------------------------------------------------


def test_the_join_cache_keeps_an_answer_unless_that_user_was_dropped_while_it_was_asked() -> None:
    decisions = JoinDecisions(ttl=60, clock=lambda: 1000.0)
    alice, bob = decisions.mark("alice"), decisions.mark("bob")
    decisions.forget("carol")  # another user's removal: nothing to do with these answers
    decisions.allow("alice", "r", alice)
    assert decisions.allowed("alice", "r")
    decisions.forget("bob", "r")  # bob removed while his join was asked
    decisions.allow("bob", "r", bob)
    assert not decisions.allowed("bob", "r")
    decisions.allow("bob", "r", decisions.mark("bob"))  # asked after it: kept
    assert decisions.allowed("bob", "r") and len(decisions) == 2


@pytest.mark.gen_test(timeout=20)
async def test_connect_works_with_a_concurrency_of_one(make_gateway: Factory, backend: HookBackend) -> None:
    backend.answers["connect"] = lambda body: (200, {"userId": "carol"})
    gw = await make_gateway(**hooked(backend, "connect", hook_concurrency=1))
    client = await Client.connect(gw.url, headers={"Cookie": "session=c"})
    await client.join("r")
    client.close()


@pytest.mark.gen_test(timeout=10)
async def test_a_refused_message_waits_until_the_rooms_earlier_frames_have_started() -> None:
    """What a message refused over WAITING_BYTES waits for before it takes its place in the
    sender's order: the room's earlier frames started, not merely unblocked."""
    background, session, seen = Background(10 * TASK_BYTES, TaskGroup()), cast(Session, object()), []
    release = asyncio.Event()

    async def join() -> None:
        await release.wait()

    async def message() -> None:
        seen.append("m1 started")

    assert background.start(session, join, 40, "r", exclusive=True)
    assert background.start(session, message, 80, "r")
    assert background.waiting(session) == 120 + 2 * TASK_BYTES
    waits = background.started(session, "r")
    assert len(waits) == 2  # m1's start and the join
    release.set()
    await asyncio.wait(waits)
    assert seen == ["m1 started"]
    assert background.started(session, "r") == []


@pytest.mark.gen_test(timeout=20)
async def test_a_stream_is_admitted_by_the_connect_hook_as_a_socket_is(
    make_gateway: Factory, backend: HookBackend
) -> None:
    """docs/protocol.md, "HTTP transport": GET /sse with the page's cookie and no token."""
    backend.answers["connect"] = lambda body: (200, {"userId": "carol"})
    gw = await make_gateway(**hooked(backend, "connect"))
    stream = await SseClient.open(gw.port, headers={"Cookie": "session=abc"}, query="device=laptop")
    await stream.join("lobby")
    stream.send("message", {"roomId": "lobby", "content": "by cookie"})
    assert (await stream.expect("message"))["payload"]["senderId"] == "carol"
    (call,) = backend.calls_of("connect")
    assert call.body["transport"] == "sse" and call.body["headers"]["cookie"] == "session=abc"
    assert call.body["query"] == {"device": "laptop"}
    backend.answers["connect"] = lambda body: (401, {"error": "session expired"})
    with pytest.raises(Refused) as refused:
        await SseClient.open(gw.port, headers={"Cookie": "session=old"})
    assert (refused.value.status, refused.value.body) == (401, {"error": "session expired"})
    backend.answers["connect"] = lambda body: (500, {})
    with pytest.raises(Refused) as unavailable:
        await SseClient.open(gw.port, headers={"Cookie": "session=abc"})
    assert unavailable.value.status == 503
