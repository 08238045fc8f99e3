"""The HTTP control API on one instance (docs/protocol.md, "Control API"): off without API_KEY,
401 for a wrong key, 400 naming the fields of a bad body, and each endpoint doing what it says
to real sockets: publish, disconnect (4003), revoke (4003, then 401 at the handshake for older
tokens, newer ones welcome), presence pages. Two instances: tests/test_control_redis.py."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest

from schemas.api import DisconnectedOut, PresencePageOut, PublishedOut, RevokedOut
from services.errors import ConfigError
from services.ids import iso
from services.settings import load_settings
from tests.control_support import API_KEY, api, later
from tests.helpers import SECRET, Client, RunningGateway, refused_status, sample, token

Factory = Callable[..., Awaitable[RunningGateway]]
ENDPOINTS: list[tuple[str, dict[str, Any] | None]] = [
    ("/api/publish", {}),
    ("/api/disconnect", {}),
    ("/api/revoke", {}),
    ("/api/presence?roomId=r", None),
]


@pytest.mark.gen_test(timeout=20)
async def test_the_api_is_off_without_a_key(make_gateway: Factory) -> None:
    gw = await make_gateway()
    for path, body in ENDPOINTS:
        status, answer = await api(gw.http, path, body)
        assert status == 404 and "API_KEY" in answer["error"], (path, status, answer)


@pytest.mark.gen_test(timeout=20)
async def test_a_missing_or_wrong_key_is_401(make_gateway: Factory) -> None:
    gw = await make_gateway(api_key=API_KEY)
    before = sample("gateway_api_requests_total", endpoint="disconnect", status="401")
    for path, body in ENDPOINTS:
        for key in (None, "wrong", API_KEY + "x", API_KEY[:-1]):
            status, answer = await api(gw.http, path, body, key=key)
            assert status == 401 and "API key" in answer["error"], (path, key, status)
    status, _ = await api(gw.http, "/api/nothing-here", {}, key=None)
    assert status == 401  # the API's shape is not told to a caller without the key
    status, answer = await api(gw.http, "/api/nothing-here", {})
    assert status == 404 and answer["error"] == "no such endpoint"
    assert sample("gateway_api_requests_total", endpoint="disconnect", status="401") == before + 4


@pytest.mark.gen_test(timeout=20)
async def test_bad_bodies_are_400_with_their_fields(make_gateway: Factory) -> None:
    gw = await make_gateway(api_key=API_KEY, max_content=10)
    cases: list[tuple[str, Any, dict[str, Any]]] = [
        ("/api/publish", {"roomId": "bad room"}, {"roomId": ..., "message": ...}),
        ("/api/publish", {"roomId": "r", "message": {"content": ""}}, {"message": {"senderId": ..., "content": ...}}),
        ("/api/publish", {"roomId": "r", "message": {"senderId": "bot", "content": "x" * 11}}, {"message": ...}),
        (
            "/api/publish",
            {"roomId": "r", "message": {"senderId": "b", "content": "hi", "createdAt": "soon"}},
            {"message": ...},
        ),
        ("/api/disconnect", {"user": "alice"}, {"userId": ...}),
        ("/api/revoke", {"userId": "alice", "issuedBefore": "yesterday"}, {"issuedBefore": ...}),
        ("/api/presence", None, {"roomId": ...}),
        ("/api/presence?roomId=r&cursor=%21%21", None, {"cursor": ...}),
    ]
    for path, body, fields in cases:
        status, answer = await api(gw.http, path, body)
        assert status == 400, (path, body, status, answer)
        assert set(answer["details"]) == set(fields), (path, answer)
        for field, inner in fields.items():
            if isinstance(inner, dict):
                assert set(answer["details"][field]) == set(inner), answer
    for raw in (b"{not json", b"[1, 2]", b"null"):
        status, answer = await api(gw.http, "/api/revoke", raw=raw)
        assert status == 400 and "details" not in answer and answer["error"], raw


@pytest.mark.gen_test(timeout=20)
async def test_publish_reaches_the_room_once_per_id(make_gateway: Factory) -> None:
    gw = await make_gateway(api_key=API_KEY)
    alice = await gw.client("alice")
    await alice.join("lobby")
    message = {"senderId": "helper-bot", "content": "welcome", "attachments": [{"url": "https://x.test/a.png"}]}
    status, answer = await api(gw.http, "/api/publish", {"roomId": "lobby", "message": message})
    assert status == 200, answer
    PublishedOut().load(answer)
    got = (await alice.expect("message"))["payload"]
    assert got["id"] == answer["id"] and got["offset"] == answer["offset"] == 1 and got["epoch"] == answer["epoch"]
    assert (got["senderType"], got["senderId"], got["content"]) == ("system", "helper-bot", "welcome")
    assert got["attachments"] == [{"url": "https://x.test/a.png"}]

    again = {"id": answer["id"], "senderId": "helper-bot", "senderType": "agent", "content": "welcome"}
    status, repeat = await api(gw.http, "/api/publish", {"roomId": "lobby", "message": again})
    assert status == 200 and repeat == {"id": answer["id"], "duplicate": True}
    await alice.none_before_pong("message")

    mine = {"id": "fixed-id-1", "senderId": "agent-7", "senderType": "agent", "content": "hello", "x": 1}
    mine["createdAt"] = "2026-03-04T05:06:07+02:00"  # an unknown field ("x") is ignored
    status, answer = await api(gw.http, "/api/publish", {"roomId": "lobby", "message": mine, "trace": "t-1"})
    assert status == 200 and answer["id"] == "fixed-id-1" and answer["offset"] == 2
    got = (await alice.expect("message"))["payload"]
    assert (got["id"], got["senderType"], got["createdAt"]) == ("fixed-id-1", "agent", "2026-03-04T03:06:07.000Z")
    assert "x" not in got


@pytest.mark.gen_test(timeout=20)
async def test_presence_pages_list_every_member(make_gateway: Factory) -> None:
    gw = await make_gateway(api_key=API_KEY, presence_page=2)
    clients = [await gw.client(name) for name in ("carol", "alice", "bob")]
    for client in clients:
        await client.join("hall")
    seen: list[str] = []
    path = "/api/presence?roomId=hall"
    while True:
        status, page = await api(gw.http, path)
        assert status == 200, page
        PresencePageOut().load(page)
        assert page["roomId"] == "hall" and page["count"] == 3
        seen += [m["userId"] for m in page["members"]]
        if "next" not in page:
            break
        path = f"/api/presence?roomId=hall&cursor={page['next']}"
    assert seen == ["alice", "bob", "carol"]
    status, empty = await api(gw.http, "/api/presence?roomId=nobody-here")
    assert status == 200 and empty == {"roomId": "nobody-here", "count": 0, "members": []}


@pytest.mark.gen_test(timeout=20)
async def test_disconnect_closes_every_socket_of_the_user_with_4003(make_gateway: Factory) -> None:
    gw = await make_gateway(api_key=API_KEY)
    alice_token = token("alice")
    alice1, alice2 = await Client.connect(gw.url, alice_token), await Client.connect(gw.url, alice_token)
    bob = await gw.client("bob")
    status, answer = await api(gw.http, "/api/disconnect", {"userId": "alice", "reason": "account suspended"})
    assert status == 200 and answer == {"userId": "alice"}
    DisconnectedOut().load(answer)
    for client in (alice1, alice2):
        assert await client.wait_closed() == 4003
        assert client.conn.close_reason == "account suspended"
    bob.send("ping", request_id="b")
    await bob.expect("pong")
    again = await Client.connect(gw.url, alice_token)  # a disconnect is not a ban
    again.send("ping", request_id="a")
    await again.expect("pong")


@pytest.mark.gen_test(timeout=20)
async def test_revoke_refuses_older_tokens_and_accepts_newer_ones(make_gateway: Factory) -> None:
    gw = await make_gateway(api_key=API_KEY)
    old = token("alice", iat=int(time.time()) - 30)
    no_iat = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    alice = await Client.connect(gw.url, old)
    await alice.join("r")
    bob = await gw.client("bob")
    status, answer = await api(gw.http, "/api/revoke", {"userId": "alice"})
    assert status == 200, answer
    RevokedOut().load(answer)
    assert await alice.wait_closed() == 4003 and alice.conn.close_reason == "token revoked"
    for refused in (old, no_iat):
        assert await refused_status(f"{gw.url}?token={refused}") == (401, {"error": "token revoked"})
    newer = await Client.connect(gw.url, token("alice", iat=later()))
    await newer.join("r")
    newer.send("refresh", {"token": old}, request_id="back")  # an older token is no way back in
    assert (await newer.expect_error("invalid_token"))["payload"]["message"] == "token revoked"
    bob.send("ping", request_id="b")
    await bob.expect("pong")


@pytest.mark.gen_test(timeout=20)
async def test_revoke_with_an_explicit_moment(make_gateway: Factory) -> None:
    gw = await make_gateway(api_key=API_KEY)
    moment = int(time.time()) - 100
    before = await Client.connect(gw.url, token("alice", iat=moment - 10))
    after = await Client.connect(gw.url, token("alice", iat=moment + 10))
    for bad in (f"{moment}", "yesterday", 1e300, True):
        status, answer = await api(gw.http, "/api/revoke", {"userId": "alice", "issuedBefore": bad})
        assert status == 400 and "issuedBefore" in answer["details"], bad
    status, answer = await api(gw.http, "/api/revoke", {"userId": "alice", "issuedBefore": moment})  # Unix seconds
    assert status == 200 and answer["issuedBefore"] == iso(moment)
    assert await before.wait_closed() == 4003
    after.send("ping", request_id="still")
    await after.expect("pong")


@pytest.mark.gen_test(timeout=20)
async def test_a_removal_is_not_undone_by_a_reconnect(make_gateway: Factory) -> None:
    """room.member_removed's hub path (the Kafka event is tested in tests/test_kafka.py)."""
    gw = await make_gateway()
    old = token("alice", iat=int(time.time()) - 5)
    alice, elsewhere = await Client.connect(gw.url, old), await Client.connect(gw.url, old)
    await alice.join("r")
    await gw.gateway.hub.control.remove("r", "alice")
    assert (await alice.expect("room_update", match=lambda f: f["payload"]["action"] == "removed"))["payload"] == {
        "roomId": "r",
        "action": "removed",
    }
    for client in (alice, elsewhere, await Client.connect(gw.url, old)):
        client.send("join", {"roomId": "r"})
        refused = await client.expect_error("forbidden_room")
        assert refused["payload"]["roomId"] == "r"
    await alice.join("other-room")  # only that room
    fresh = await Client.connect(gw.url, token("alice", iat=later()))
    await fresh.join("r")
    elsewhere.send("refresh", {"token": token("alice", iat=later())}, request_id="new")
    await elsewhere.expect("refreshed")
    await elsewhere.join("r")


@pytest.mark.gen_test(timeout=20)
async def test_with_an_internal_port_the_api_is_only_there(make_gateway: Factory) -> None:
    gw = await make_gateway(api_key=API_KEY, internal_port=0)
    assert gw.internal_port is not None
    status, answer = await api(gw.http, "/api/disconnect", {"userId": "alice"})
    assert (status, answer) == (404, {"error": "not found"})
    status, answer = await api(f"http://127.0.0.1:{gw.internal_port}", "/api/disconnect", {"userId": "alice"})
    assert status == 200 and answer == {"userId": "alice"}


def test_an_empty_api_key_is_refused_at_start() -> None:
    """`--api-key ""` would turn the API on with a key that `Authorization: apikey` matches."""
    with pytest.raises(ConfigError, match="API_KEY is empty"):
        load_settings(["--api-key", ""], environ={})
    assert load_settings([], environ={"API_KEY": ""}).api_key is None  # an empty variable is unset


@pytest.mark.gen_test(timeout=20)
async def test_a_token_of_the_revocations_second_counts_as_older(make_gateway: Factory) -> None:
    """`iat` has whole seconds and the comparison is strict (docs/protocol.md, "Sessions"): a token
    of second T is refused by a revocation at T.5, one of T+1 is not."""
    gw = await make_gateway(api_key=API_KEY)
    second = int(time.time()) - 1
    moment = time.strftime("%Y-%m-%dT%H:%M:%S.500Z", time.gmtime(second))
    status, answer = await api(gw.http, "/api/revoke", {"userId": "alice", "issuedBefore": moment})
    assert (status, answer["issuedBefore"]) == (200, moment)
    assert (await refused_status(f"{gw.url}?token={token('alice', iat=second)}"))[0] == 401
    newer = await Client.connect(gw.url, token("alice", iat=second + 1))
    newer.send("ping", request_id="in")
    await newer.expect("pong")
