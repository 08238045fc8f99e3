"""The WebSocket protocol (README.md, "Protocol") over real sockets: every frame type, every
error code the core can produce, requestId echo, presence and dedupe."""

from __future__ import annotations

import asyncio
import json

import pytest

from schemas.protocol import control_channel, relay_channel
from tests.helpers import Client, token, wait_for

T = 15


@pytest.mark.gen_test(timeout=T)
async def test_join_replies_room_update_then_presence_state_with_request_id(gw):
    alice = await gw.client("alice")
    alice.send("join", {"roomId": "general"}, request_id="j-1")
    joined = await alice.expect("room_update")
    position = {"offset": 0, "epoch": joined["payload"].get("epoch")}
    assert joined["payload"] == {"roomId": "general", "action": "joined", **position}
    assert isinstance(position["epoch"], str) and position["epoch"]
    assert joined["requestId"] == "j-1"
    state = await alice.expect("presence_state")
    assert state["payload"]["roomId"] == "general"
    assert [m["userId"] for m in state["payload"]["members"]] == ["alice"]
    assert state["payload"]["members"][0]["status"] == "online"


@pytest.mark.gen_test(timeout=T)
async def test_second_member_sees_online_and_snapshot_lists_both(gw):
    alice = await gw.client("alice")
    await alice.join("r1")
    bob = await gw.client("bob")
    state = await bob.join("r1")
    assert sorted(m["userId"] for m in state["payload"]["members"]) == ["alice", "bob"]
    online = await alice.expect("presence")
    assert online["payload"]["userId"] == "bob" and online["payload"]["status"] == "online"
    # The joiner does not get its own "online": its snapshot already says so.
    await bob.none_before_pong("presence")


@pytest.mark.gen_test(timeout=T)
async def test_message_reaches_every_member_including_sender_and_ack_matches(gw):
    alice, bob = await gw.client("alice"), await gw.client("bob")
    await alice.join("r")
    await bob.join("r")
    attachments = [{"url": "https://example.test/a.png", "type": "image/png", "name": "a.png", "size": 10}]
    alice.send(
        "message",
        {"roomId": "r", "content": "héllo 👋", "attachments": attachments, "dedupeKey": "d1"},
        request_id="m-1",
    )
    at_bob = (await bob.expect("message"))["payload"]
    at_alice = (await alice.expect("message"))["payload"]
    ack = await alice.expect("ack")
    assert at_bob == at_alice
    assert at_bob["senderType"] == "human" and at_bob["senderId"] == "alice"
    assert at_bob["content"] == "héllo 👋" and at_bob["attachments"] == attachments
    assert at_bob["dedupeKey"] == "d1"
    assert ack["requestId"] == "m-1"
    assert ack["payload"] == {
        "id": at_bob["id"],
        "roomId": "r",
        "createdAt": at_bob["createdAt"],
        "dedupeKey": "d1",
    }
    await bob.none_before_pong("ack")


@pytest.mark.gen_test(timeout=T)
async def test_message_ids_are_time_ordered(gw):
    alice = await gw.client("alice")
    await alice.join("r")
    ids = []
    for i in range(20):
        alice.send("message", {"roomId": "r", "content": f"m{i}"})
        ids.append((await alice.expect("ack"))["payload"]["id"])
    assert ids == sorted(ids) and len(set(ids)) == 20


@pytest.mark.gen_test(timeout=T)
async def test_dedupe_returns_same_ack_without_second_delivery(gw):
    alice, bob = await gw.client("alice"), await gw.client("bob")
    await alice.join("r")
    await bob.join("r")
    alice.send("message", {"roomId": "r", "content": "once", "dedupeKey": "k"}, request_id="a")
    first = await alice.expect("ack")
    await bob.expect("message")
    alice.send("message", {"roomId": "r", "content": "once", "dedupeKey": "k"}, request_id="b")
    second = await alice.expect("ack")
    assert second["payload"] == first["payload"] and second["requestId"] == "b"
    await bob.none_before_pong("message")
    # The same key from another user is a different message.
    await bob.join("r")
    bob.send("message", {"roomId": "r", "content": "mine", "dedupeKey": "k"})
    assert (await bob.expect("ack"))["payload"]["id"] != first["payload"]["id"]


@pytest.mark.gen_test(timeout=T)
async def test_dedupe_key_is_scoped_to_the_room(gw):
    """The same dedupeKey from the same sender in another room is another message: delivered there,
    acked with its own id and that room's roomId."""
    alice, bob = await gw.client("alice"), await gw.client("bob")
    for room in ("r1", "r2"):
        await alice.join(room)
        await bob.join(room)
    alice.send("message", {"roomId": "r1", "content": "one", "dedupeKey": "k"})
    first = (await alice.expect("ack"))["payload"]
    assert (await bob.expect("message"))["payload"]["roomId"] == "r1"
    alice.send("message", {"roomId": "r2", "content": "two", "dedupeKey": "k"})
    second = (await alice.expect("ack"))["payload"]
    assert second["roomId"] == "r2" and second["id"] != first["id"]
    got = (await bob.expect("message"))["payload"]
    assert got["roomId"] == "r2" and got["id"] == second["id"] and got["content"] == "two"


@pytest.mark.gen_test(timeout=T)
async def test_dedupe_across_connections_of_one_user(gw):
    a1, a2 = await gw.client("alice"), await gw.client("alice")
    await a1.join("r")
    await a2.join("r")
    a1.send("message", {"roomId": "r", "content": "x", "dedupeKey": "same"})
    first = (await a1.expect("ack"))["payload"]["id"]
    a2.send("message", {"roomId": "r", "content": "x", "dedupeKey": "same"})
    assert (await a2.expect("ack"))["payload"]["id"] == first


@pytest.mark.gen_test(timeout=30)
async def test_one_senders_order_is_kept_for_200_messages(make_gateway):
    gw = await make_gateway(rate_limit=10_000, rate_burst=10_000)
    alice, bob = await gw.client("alice"), await gw.client("bob")
    await alice.join("r")
    await bob.join("r")
    alice.drain_in_background()
    for i in range(200):
        alice.send("message", {"roomId": "r", "content": str(i)})
    got = [int((await bob.expect("message"))["payload"]["content"]) for _ in range(200)]
    assert got == list(range(200))


@pytest.mark.gen_test(timeout=T)
async def test_leave_replies_left_and_others_see_offline(gw):
    alice, bob = await gw.client("alice"), await gw.client("bob")
    await alice.join("r")
    await bob.join("r")
    await alice.expect("presence")  # bob online
    bob.send("leave", {"roomId": "r"}, request_id="l-1")
    left = await bob.expect("room_update")
    assert left["payload"] == {"roomId": "r", "action": "left"} and left["requestId"] == "l-1"
    off = await alice.expect("presence")
    assert off["payload"]["userId"] == "bob" and off["payload"]["status"] == "offline"
    alice.send("message", {"roomId": "r", "content": "after"})
    await alice.expect("ack")
    await bob.none_before_pong("message")


@pytest.mark.gen_test(timeout=T)
async def test_offline_only_when_last_connection_leaves(gw):
    alice = await gw.client("alice")
    await alice.join("r")
    b1, b2 = await gw.client("bob"), await gw.client("bob")
    await b1.join("r")
    await alice.expect("presence", match=lambda f: f["payload"]["status"] == "online")
    await b2.join("r")
    b1.close()
    await wait_for(lambda: len(gw.gateway.hub.users.get("bob", ())) == 1, what="b1's disconnect handled")
    await alice.none_before_pong("presence")
    b2.close()
    off = await alice.expect("presence")
    assert off["payload"] == {**off["payload"], "userId": "bob", "status": "offline"}


@pytest.mark.gen_test(timeout=T)
async def test_disconnect_announces_offline(gw):
    alice, bob = await gw.client("alice"), await gw.client("bob")
    await alice.join("r")
    await bob.join("r")
    bob.close()
    off = await alice.expect("presence", match=lambda f: f["payload"]["status"] == "offline")
    assert off["payload"]["userId"] == "bob"
    state = await alice.join("r")
    assert [m["userId"] for m in state["payload"]["members"]] == ["alice"]


@pytest.mark.gen_test(timeout=T)
async def test_presence_statuses_broadcast_and_typing_lapses_to_online(make_gateway):
    gw = await make_gateway(typing_ttl=0.5)
    alice, bob = await gw.client("alice"), await gw.client("bob")
    await alice.join("r")
    await bob.join("r")
    alice.send("presence", {"roomId": "r", "status": "typing"})
    typing = await bob.expect("presence", match=lambda f: f["payload"]["status"] == "typing")
    assert typing["payload"]["userId"] == "alice"
    lapsed = await bob.expect("presence", timeout=3, match=lambda f: f["payload"]["userId"] == "alice")
    assert lapsed["payload"]["status"] == "online"
    alice.send("presence", {"roomId": "r", "status": "idle"})
    idle = await bob.expect("presence", match=lambda f: f["payload"]["userId"] == "alice")
    assert idle["payload"]["status"] == "idle"
    state = await bob.join("r")
    assert {m["userId"]: m["status"] for m in state["payload"]["members"]} == {
        "alice": "idle",
        "bob": "online",
    }


@pytest.mark.gen_test(timeout=T)
async def test_repeated_typing_keeps_typing(make_gateway):
    gw = await make_gateway(typing_ttl=0.6)
    alice, bob = await gw.client("alice"), await gw.client("bob")
    await alice.join("r")
    await bob.join("r")
    for _ in range(3):
        alice.send("presence", {"roomId": "r", "status": "typing"})
        # The next presence is typing again: no lapse to online in between (`only`).
        await bob.expect("presence", match=lambda f: f["payload"]["status"] == "typing", only=True)
        await asyncio.sleep(0.3)  # a user typing: shorter than the TTL between keystrokes
    # Only after the last repeat does it lapse.
    await bob.expect("presence", timeout=3, match=lambda f: f["payload"]["status"] == "online", only=True)


@pytest.mark.gen_test(timeout=T)
async def test_offline_is_not_a_client_status(gw):
    alice = await gw.client("alice")
    await alice.join("r")
    alice.send("presence", {"roomId": "r", "status": "offline"}, request_id="p")
    err = await alice.expect_error("validation_failed")
    assert "status" in err["payload"]["details"] and err["requestId"] == "p"


@pytest.mark.gen_test(timeout=T)
async def test_ping_pong_echoes_request_id(gw):
    alice = await gw.client("alice")
    alice.send("ping", {}, request_id="p1")
    pong = await alice.expect("pong")
    assert pong == {"type": "pong", "payload": {}, "requestId": "p1"}
    alice.send_raw('{"type": "ping"}')  # payload may be omitted
    assert (await alice.expect("pong"))["payload"] == {}


@pytest.mark.gen_test(timeout=T)
async def test_ws_path_alias(gw):
    client = await Client.connect(f"http://127.0.0.1:{gw.port}/ws".replace("http", "ws"), token("x"))
    client.send("ping")
    await client.expect("pong")


@pytest.mark.gen_test(timeout=T)
@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "invalid_json"),
        ("", "invalid_json"),
        ("[1, 2]", "invalid_frame"),
        ('"just a string"', "invalid_frame"),
        ("42", "invalid_frame"),
        ('{"type": "shout", "payload": {}}', "unknown_type"),
        ('{"payload": {}}', "validation_failed"),
        ('{"type": 5, "payload": {}}', "validation_failed"),
        ('{"type": "join", "payload": []}', "validation_failed"),
        ('{"type": "join", "payload": {}}', "validation_failed"),
        ('{"type": "join", "payload": {"roomId": 7}}', "validation_failed"),
        ('{"type": "join", "payload": {"roomId": "has space"}}', "validation_failed"),
        ('{"type": "join", "payload": {"roomId": "' + "x" * 129 + '"}}', "validation_failed"),
        ('{"type": "message", "payload": {"roomId": "r", "content": ""}}', "validation_failed"),
        ('{"type": "message", "payload": {"roomId": "r", "content": 5}}', "validation_failed"),
        (
            '{"type": "message", "payload": {"roomId": "r", "content": "x", "attachments": {}}}',
            "validation_failed",
        ),
        (
            '{"type": "message", "payload": {"roomId": "r", "content": "x", "dedupeKey": 3}}',
            "validation_failed",
        ),
        ('{"type": "presence", "payload": {"roomId": "r", "status": "away"}}', "validation_failed"),
        ('{"type": "ping", "payload": {}, "requestId": 12}', "validation_failed"),
        ('{"type": "leave", "payload": {"roomId": "nope"}}', "not_in_room"),
        ('{"type": "message", "payload": {"roomId": "nope", "content": "hi"}}', "not_in_room"),
        ('{"type": "presence", "payload": {"roomId": "nope", "status": "idle"}}', "not_in_room"),
    ],
)
async def test_bad_frames_get_error_codes_and_socket_stays_open(gw, raw, code):
    alice = await gw.client("alice")
    alice.send_raw(raw)
    err = await alice.expect_error(code)
    assert err["payload"]["message"]
    alice.send("ping")
    await alice.expect("pong")


@pytest.mark.gen_test(timeout=T)
async def test_binary_frame_is_invalid_frame(gw):
    alice = await gw.client("alice")
    alice.send_raw(b'{"type": "ping", "payload": {}}', binary=True)
    await alice.expect_error("invalid_frame")


@pytest.mark.gen_test(timeout=T)
async def test_error_carries_request_id_room_and_dedupe_key(gw):
    alice = await gw.client("alice")
    alice.send("message", {"roomId": "elsewhere", "content": "hi", "dedupeKey": "dk-9"}, request_id="q")
    err = await alice.expect_error("not_in_room")
    assert err["requestId"] == "q"
    assert err["payload"]["roomId"] == "elsewhere" and err["payload"]["dedupeKey"] == "dk-9"
    # A presence change runs in the background (hub/ordering.py); its error is matched all the same.
    alice.send("presence", {"roomId": "elsewhere", "status": "idle"}, request_id="p")
    err = await alice.expect_error("not_in_room")
    assert err["requestId"] == "p" and err["payload"]["roomId"] == "elsewhere"


@pytest.mark.gen_test(timeout=T)
async def test_validation_details_name_the_fields(gw):
    alice = await gw.client("alice")
    alice.send("message", {"roomId": "", "content": 3, "attachments": [{"size": -1}] * 11}, request_id="v")
    err = await alice.expect_error("validation_failed")
    assert set(err["payload"]["details"]) >= {"roomId", "content", "attachments"}


@pytest.mark.gen_test(timeout=T)
async def test_content_limit_counts_characters_not_bytes(make_gateway):
    gw = await make_gateway(max_content=5)
    alice = await gw.client("alice")
    await alice.join("r")
    alice.send("message", {"roomId": "r", "content": "😀😀😀😀😀"})  # 5 code points, 20 bytes
    await alice.expect("ack")
    alice.send("message", {"roomId": "r", "content": "123456"})
    await alice.expect_error("validation_failed")


@pytest.mark.gen_test(timeout=T)
async def test_unknown_payload_fields_are_ignored(gw):
    alice = await gw.client("alice")
    alice.send("join", {"roomId": "r", "extra": True})
    await alice.expect("room_update")
    alice.send("message", {"roomId": "r", "content": "x", "future": {"a": 1}})
    msg = await alice.expect("message")
    assert "future" not in msg["payload"]


@pytest.mark.gen_test(timeout=T)
async def test_too_many_rooms(make_gateway):
    gw = await make_gateway(max_rooms=3)
    alice = await gw.client("alice")
    for room in ("a", "b", "c"):
        await alice.join(room)
    alice.send("join", {"roomId": "d"}, request_id="4th")
    err = await alice.expect_error("too_many_rooms")
    assert err["payload"]["roomId"] == "d" and err["requestId"] == "4th"
    alice.send("join", {"roomId": "a"})  # re-joining a room it is in is fine
    await alice.expect("room_update")
    alice.send("leave", {"roomId": "a"})
    await alice.expect("room_update", match=lambda f: f["payload"]["action"] == "left")
    await alice.join("d")


@pytest.mark.gen_test(timeout=T)
async def test_room_access_token_mode(make_gateway):
    gw = await make_gateway(room_access="token")
    alice = await Client.connect(gw.url, token("alice", rooms=["general", "team-*"]))
    await alice.join("general")
    await alice.join("team-blue")
    alice.send("join", {"roomId": "secret"}, request_id="s")
    err = await alice.expect_error("forbidden_room")
    assert err["payload"]["roomId"] == "secret"
    no_claim = await gw.client("bob")
    no_claim.send("join", {"roomId": "general"})
    await no_claim.expect_error("forbidden_room")


@pytest.mark.gen_test(timeout=T)
async def test_open_mode_ignores_rooms_claim(gw):
    alice = await Client.connect(gw.url, token("alice", rooms=["general"]))
    await alice.join("anything")


@pytest.mark.gen_test(timeout=T)
async def test_frames_are_json_text(gw):
    alice = await gw.client("alice")
    alice.send("ping")
    raw = await alice.conn.read_message()
    assert isinstance(raw, str) and json.loads(raw)["type"] == "pong"


@pytest.mark.gen_test(timeout=T)
async def test_empty_request_id_and_dedupe_key_are_values_too(gw):
    alice = await gw.client("alice")
    alice.send("ping", {}, request_id="")
    assert (await alice.expect("pong"))["requestId"] == ""
    await alice.join("r")
    alice.send("message", {"roomId": "r", "content": "a", "dedupeKey": ""})
    first = await alice.expect("ack")
    alice.send("message", {"roomId": "r", "content": "a", "dedupeKey": ""})
    assert (await alice.expect("ack"))["payload"] == first["payload"]
    alice.send_raw('{"type": "ping", "payload": {}, "requestId": "' + "x" * 65 + '"}')
    assert "requestId" not in await alice.expect_error("validation_failed")


class ScriptedIngest:
    """Kafka stand-in for an ordering test: per content, how long the delivery report takes and
    whether it fails (the real producer is tested against a real broker in test_kafka.py)."""

    def __init__(self, script: dict[str, tuple[float, bool]]) -> None:
        self.script = script
        self.produced: list[str] = []

    async def ingest(self, message):
        self.produced.append(message["content"])
        delay, fail = self.script.get(message["content"], (0.0, False))
        await asyncio.sleep(delay)  # the simulated broker round trip
        if fail:
            from services.errors import IngestError

            raise IngestError("scripted failure")


@pytest.mark.gen_test(timeout=T)
async def test_order_holds_when_reports_come_back_out_of_order_or_fail(gw):
    ingest = ScriptedIngest({"m0": (0.4, False), "m1": (0.0, True), "m2": (0.0, False), "m3": (0.1, False)})
    gw.gateway.hub.messages.ingest = ingest
    alice, bob = await gw.client("alice"), await gw.client("bob")
    await alice.join("r")
    await bob.join("r")
    alice.send("message", {"roomId": "r", "content": "m0"})
    alice.send("message", {"roomId": "r", "content": "m1"})
    alice.send("message", {"roomId": "r", "content": "m2", "dedupeKey": "k2"})
    alice.send("message", {"roomId": "r", "content": "m3"})
    got = [(await bob.expect("message"))["payload"]["content"] for _ in range(3)]
    assert got == ["m0", "m2", "m3"]
    assert ingest.produced == ["m0", "m1", "m2", "m3"]
    err = await alice.expect_error("ingest_failed")
    assert err["payload"]["roomId"] == "r"


@pytest.mark.gen_test(timeout=T)
async def test_rooms_and_channels_are_released_when_members_go(gw):
    hub = gw.gateway.hub
    alice, bob = await gw.client("alice"), await gw.client("bob")
    for room in ("a", "b", "c"):
        await alice.join(room)
        await bob.join(room)
    assert {"room:a", "room:b", "room:c"} <= hub.channels.keys
    alice.send("leave", {"roomId": "a"})
    await alice.expect("room_update", match=lambda f: f["payload"]["action"] == "left")
    assert "room:a" in hub.channels.keys  # bob is still there
    alice.close()
    bob.close()
    # Only the control channel and the instance's own stay: it hears them from start to stop.
    left = {control_channel().key, relay_channel(gw.gateway.streams.route).key}
    await wait_for(lambda: not hub.rooms and not hub.users and hub.channels.keys == left, what="all released")
    assert hub.channels.locks == {}
    assert gw.gateway.sessions == set()
