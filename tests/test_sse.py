"""The HTTP transport (docs/protocol.md, "HTTP transport") against gateways on real ports: a real
event stream read line by line and real POSTs, next to real WebSockets."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from services.bus.memory import MemoryNetwork
from tests.helpers import RunningGateway, sample, token, wait_for
from tests.recovery_support import position
from tests.sse_support import Refused, SseClient, post_frames, sse_client

Factory = Callable[..., Awaitable[RunningGateway]]
T = 20


def message(room: str, content: str, request_id: str | None = None, **extra: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "message", "payload": {"roomId": room, "content": content, **extra}}
    if request_id is not None:
        frame["requestId"] = request_id
    return frame


async def refused(gw: RunningGateway, tok: str | None = None, headers: dict[str, str] | None = None) -> Refused:
    with pytest.raises(Refused) as caught:
        await SseClient.open(gw.port, tok, headers)
    return caught.value


@pytest.mark.gen_test(timeout=T)
async def test_a_stream_then_join_message_and_ack(gw: RunningGateway) -> None:
    before = sample("gateway_connections", transport="sse")
    alice = await sse_client(gw)
    assert alice.headers["content-type"] == "text/event-stream"
    assert alice.headers["cache-control"] == "no-cache"
    assert alice.headers["x-accel-buffering"] == "no"
    assert alice.send_url == "/sse/send"
    _route, secret = alice.session_id.split(".")
    assert len(base64.urlsafe_b64decode(secret + "==")) >= 16  # at least 128 random bits
    assert sample("gateway_connections", transport="sse") == before + 1
    await alice.join("r")
    alice.send("message", {"roomId": "r", "content": "hello"}, request_id="m1")
    got = await alice.expect("message")
    ack = await alice.reply_to("m1")
    assert ack["type"] == "ack" and ack["payload"]["id"] == got["payload"]["id"]
    assert got["payload"]["content"] == "hello" and got["payload"]["senderId"] == "alice"
    assert alice.answers and set(alice.answers) == {202}
    alice.close()
    await wait_for(lambda: sample("gateway_connections", transport="sse") == before, what="the stream's session gone")
    assert not gw.gateway.sessions


@pytest.mark.gen_test(timeout=T)
async def test_websocket_and_sse_members_of_one_room_both_ways(gw: RunningGateway) -> None:
    alice, bob = await sse_client(gw, "alice"), await gw.client("bob")
    await alice.join("r")
    await bob.join("r")
    online = (await alice.expect("presence"))["payload"]
    assert (online["userId"], online["status"]) == ("bob", "online")
    alice.send("message", {"roomId": "r", "content": "from the stream"})
    assert (await bob.expect("message"))["payload"]["content"] == "from the stream"
    bob.send("message", {"roomId": "r", "content": "from the socket"})
    assert (await alice.expect("message", match=lambda f: f["payload"]["senderId"] == "bob"))["payload"][
        "content"
    ] == "from the socket"
    alice.send("presence", {"roomId": "r", "status": "typing"})
    typing = await bob.expect("presence", match=lambda f: f["payload"]["status"] == "typing")
    assert typing["payload"]["userId"] == "alice"


@pytest.mark.gen_test(timeout=T)
async def test_refusals_before_the_stream_are_the_handshake_statuses(make_gateway: Factory) -> None:
    gw = await make_gateway(max_connections=1, allowed_origins=("https://chat.example",))
    no_token = await refused(gw)
    assert no_token.status == 401 and no_token.body["error"]
    assert (await refused(gw, token("x", secret="another-secret-that-is-long-enough-for-hs256-01"))).status == 401
    evil = await refused(gw, token("alice"), {"Origin": "https://evil.example"})
    assert evil.status == 403
    alice = await SseClient.open(gw.port, token("alice"), {"Origin": "https://chat.example"})
    assert alice.headers["access-control-allow-origin"] == "https://chat.example"
    full = await refused(gw, token("bob"))
    assert full.status == 503  # MAX_CONNECTIONS counts the stream
    alice.close()
    await wait_for(lambda: not gw.gateway.sessions, what="alice's stream gone")
    gw.gateway.connections.draining = True
    assert (await refused(gw, token("bob"))).status == 503


@pytest.mark.gen_test(timeout=T)
async def test_streams_count_toward_the_address_and_user_limits(make_gateway: Factory) -> None:
    gw = await make_gateway(max_connections_per_ip=2, max_user_connections=1)
    alice = await sse_client(gw, "alice")
    second = await sse_client(gw, "alice")  # the same user: opened, then closed 4029 like a socket
    assert await second.wait_closed() == 4029
    await wait_for(lambda: len(gw.gateway.sessions) == 1, what="the second stream gone")
    bob = await sse_client(gw, "bob")
    over = await refused(gw, token("carol"))
    assert over.status == 429  # the third connection from 127.0.0.1
    for client in (alice, bob):
        client.close()


@pytest.mark.gen_test(timeout=T)
async def test_send_refusals_lose_nothing(make_gateway: Factory) -> None:
    gw = await make_gateway(
        sse_send_bytes=4096, max_message_bytes=2048, rate_limit=2, rate_burst=5, invalid_frame_limit=1000
    )
    alice = await sse_client(gw)
    post = alice.post

    gone = f"{alice.session_id.split('.')[0]}.{'A' * 22}"
    assert (await post({"type": "ping", "payload": {}}, session_id=gone))[0] == 404
    assert (await post({"type": "ping", "payload": {}}, session_id=f"0123456789abcdef.{'N' * 22}"))[0] == 404
    assert (await post({"type": "ping", "payload": {}}, session_id="0123456789abcdef.short"))[0] == 404
    assert (await post({"type": "ping", "payload": {}}, session_id="no-dot"))[0] == 404
    status, body, _ = await post({"type": "ping", "payload": {}}, session_id="")
    assert status == 400 and "X-Session-Id" in body["error"]
    for bad in (b"{not json", b'"a string"', b"[]", b"[1, 2]", b"\xff\xfe"):
        status, body, _ = await post(bad, raw=True)
        assert status == 400 and body["error"], bad
    assert (await post(b"x" * 5000, raw=True))[0] == 413  # over SSE_SEND_BYTES, refused before it is read
    status, body, _ = await post(message("r", "x" * 2100))
    assert status == 413 and "MAX_MESSAGE_BYTES" in body["error"]  # one frame over the limit
    status, body, _ = await post([{"type": "ping", "payload": {}}] * 6)
    assert status == 413 and "RATE_BURST" in body["error"]
    # Five tokens: five frames pass, the sixth request is refused whole with a Retry-After.
    status, body, _ = await post([{"type": "ping", "payload": {}, "requestId": f"p{i}"} for i in range(5)])
    assert (status, body) == (202, {"accepted": 5})
    status, body, headers = await post([{"type": "ping", "payload": {}, "requestId": "late"}])
    assert status == 429 and int(headers["retry-after"]) >= 1
    for i in range(5):
        assert (await alice.reply_to(f"p{i}"))["type"] == "pong"

    async def accepted() -> bool:
        return (await post({"type": "ping", "payload": {}, "requestId": "later"}))[0] == 202

    await wait_for(accepted, interval=0.1, what="a token again")
    assert (await alice.reply_to("later"))["type"] == "pong"
    # Nothing of the refused bodies reached the hub: the frames are handled in order, and before
    # `later` came no error and no `late` pong.
    assert not [f for f in alice.backlog if f["type"] == "error" or f.get("requestId") == "late"]


@pytest.mark.gen_test(timeout=T)
async def test_a_list_of_frames_is_handled_in_order(gw: RunningGateway) -> None:
    alice = await sse_client(gw)
    await alice.join("r")
    frames = [message("r", f"m{i}", f"k{i}") for i in range(10)]
    status, body, _ = await alice.post(frames)
    assert (status, body) == (202, {"accepted": 10})
    got = [(await alice.expect("message"))["payload"]["content"] for _ in range(10)]
    assert got == [f"m{i}" for i in range(10)]
    acks = [(await alice.reply_to(f"k{i}"))["type"] for i in range(10)]
    assert acks == ["ack"] * 10


@pytest.mark.gen_test(timeout=T)
async def test_an_invalid_frame_in_a_list_is_an_error_frame_like_on_a_socket(gw: RunningGateway) -> None:
    alice = await sse_client(gw)
    frames = [{"type": "nope", "requestId": "a"}, {"type": "ping", "payload": {}, "requestId": "b"}]
    status, _, _ = await alice.post(frames)
    assert status == 202
    error = await alice.reply_to("a")
    assert error["type"] == "error" and error["payload"]["code"] == "unknown_type"
    assert (await alice.reply_to("b"))["type"] == "pong"


@pytest.mark.gen_test(timeout=T)
async def test_an_idle_stream_gets_heartbeats(make_gateway: Factory) -> None:
    gw = await make_gateway(ping_interval=0.2, ping_timeout=1.0)
    alice = await sse_client(gw)
    for _ in range(3):
        await alice.heartbeat()
    assert alice.backlog == []  # comments are not events
    alice.send("ping", request_id="still")
    assert (await alice.reply_to("still"))["type"] == "pong"
    assert [s.closed for s in gw.gateway.sessions] == [False]


@pytest.mark.gen_test(timeout=T)
async def test_recovery_with_since_on_a_new_stream(gw: RunningGateway) -> None:
    alice, bob = await sse_client(gw, "alice"), await gw.client("bob")
    await alice.join("r")
    await bob.join("r")
    bob.send("message", {"roomId": "r", "content": "seen"})
    seen = await alice.expect("message")
    alice.close()
    await wait_for(lambda: len(gw.gateway.sessions) == 1, what="alice's stream gone")
    for content in ("missed 1", "missed 2"):
        bob.send("message", {"roomId": "r", "content": content})
        await bob.expect("ack")
    again = await sse_client(gw, "alice")
    again.send("join", {"roomId": "r", "since": position(seen)})
    joined = await again.expect("room_update")
    assert joined["payload"]["recovered"] is True
    replayed = [(await again.expect("message"))["payload"]["content"] for _ in range(2)]
    assert replayed == ["missed 1", "missed 2"]


@pytest.mark.gen_test(timeout=T)
async def test_drain_ends_the_stream_with_a_closed_1012_event(gw: RunningGateway) -> None:
    alice = await sse_client(gw)
    await alice.join("r")
    await gw.gateway.drain(at_once=True)
    assert await alice.wait_closed() == 1012
    assert alice.closed_event is not None
    assert alice.closed_event["payload"] == {"code": 1012, "reason": "server restarting"}


@pytest.mark.gen_test(timeout=T)
async def test_the_control_plane_and_token_expiry_close_streams_as_sockets(make_gateway: Factory) -> None:
    gw = await make_gateway(jwt_leeway=0)
    alice = await sse_client(gw, "alice")
    await gw.gateway.hub.control.disconnect("alice", "account suspended")
    assert await alice.wait_closed() == 4003
    bob = await SseClient.open(gw.port, token("bob", ttl=3))
    expiring = await bob.expect("token_expiring")
    assert expiring["payload"]["expiresAt"]
    assert await bob.wait_closed(timeout=10) == 4001


@pytest.mark.gen_test(timeout=60)
async def test_a_slow_sse_reader_is_closed_4008_without_slowing_others(make_gateway: Factory) -> None:
    gw = await make_gateway(
        outbound_queue_frames=100, outbound_queue_bytes=512 * 1024, rate_limit=100_000, rate_burst=100_000
    )
    slow = await SseClient.open(gw.port, token("slow"), rcvbuf=4096)
    fast, sender = await sse_client(gw, "fast"), await gw.client("sender")
    for client in (slow, fast, sender):
        await client.join("r")
    sender.drain_in_background()
    slow_session = next(s for s in gw.gateway.sessions if s.user_id == "slow")
    overflows = sample("gateway_outbound_overflows_total")
    # The slow reader reads nothing from now on: at most ~10 MB, more than the kernel's buffers and
    # the 512 KiB bound, until it is closed; the fast one must get every message meanwhile, in order.
    body, chunk = "z" * 3500, 50
    for c in range(60):
        for i in range(c * chunk, (c + 1) * chunk):
            sender.send("message", {"roomId": "r", "content": f"{i}:{body}"})
        for i in range(c * chunk, (c + 1) * chunk):
            frame = await fast.expect("message", timeout=10)
            assert int(frame["payload"]["content"].split(":")[0]) == i
        if slow_session.closed:
            break
    assert slow_session.close_code == 4008
    assert sample("gateway_outbound_overflows_total") == overflows + 1
    assert await slow.wait_closed(timeout=20) == 4008  # the `closed` event after what was already sent


@pytest.mark.gen_test(timeout=T)
async def test_a_post_to_another_instance_is_forwarded_to_the_holder(make_gateway: Factory) -> None:
    network = MemoryNetwork()
    a = await make_gateway(network=network, instance_id="a")
    b = await make_gateway(network=network, instance_id="b")
    alice = await sse_client(a)
    forwarded = sample("gateway_sse_sends_total", status="202", route="forwarded")
    status, body, _ = await post_frames(
        b.port, alice.session_id, [{"type": "join", "payload": {"roomId": "r"}}, message("r", "via b", "k")]
    )
    assert (status, body) == (202, {"accepted": 2})
    assert (await alice.reply_to("k"))["type"] == "ack"
    assert sample("gateway_sse_sends_total", status="202", route="forwarded") == forwarded + 1
    route = alice.session_id.split(".")[0]
    assert (await post_frames(b.port, f"{route}.{'B' * 22}", {"type": "ping", "payload": {}}))[0] == 404  # a's answer
    assert (await post_frames(b.port, f"feedfacefeedface.{'x' * 22}", {"type": "ping", "payload": {}}))[
        0
    ] == 404  # nobody's
    alice.close()
    await wait_for(lambda: not a.gateway.sessions, what="alice's stream gone")
    assert (await post_frames(b.port, alice.session_id, {"type": "ping", "payload": {}}))[0] == 404


@pytest.mark.gen_test(timeout=T)
async def test_repeated_refused_posts_close_the_stream_1008(make_gateway: Factory) -> None:
    gw = await make_gateway(rate_limit=0.01, rate_burst=1, invalid_frame_limit=2)
    alice = await sse_client(gw)
    assert (await alice.post({"type": "ping", "payload": {}}))[0] == 202
    statuses = [(await alice.post({"type": "ping", "payload": {}}))[0] for _ in range(3)]
    assert statuses == [429, 429, 429]
    assert await alice.wait_closed() == 1008


@pytest.mark.gen_test(timeout=T)
async def test_preflight_and_cross_origin_answers(make_gateway: Factory) -> None:
    gw = await make_gateway(allowed_origins=("https://chat.example",))
    http = AsyncHTTPClient()

    async def preflight(origin: str) -> tuple[int, Any]:
        headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
        request = HTTPRequest(f"{gw.http}/sse/send", method="OPTIONS", headers=headers)
        try:
            response = await http.fetch(request)
        except HTTPClientError as exc:
            assert exc.response is not None
            response = exc.response
        return response.code, response.headers

    status, headers = await preflight("https://chat.example")
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "https://chat.example"
    assert "X-Session-Id" in headers["Access-Control-Allow-Headers"]
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert (await preflight("https://evil.example"))[0] == 403
    alice = await SseClient.open(gw.port, token("alice"), {"Origin": "https://chat.example"})
    status, _, headers = await alice.post({"type": "ping", "payload": {}}, headers={"Origin": "https://chat.example"})
    assert status == 202 and headers["access-control-allow-origin"] == "https://chat.example"
    status, _, _ = await alice.post({"type": "ping", "payload": {}}, headers={"Origin": "https://evil.example"})
    assert status == 403


def test_send_body_limit_must_hold_a_frame() -> None:
    from services.errors import ConfigError
    from services.settings import load_settings

    with pytest.raises(ConfigError, match="SSE_SEND_BYTES"):
        load_settings(["--sse-send-bytes", "1024", "--max-message-bytes", "2048"])
    assert load_settings([]).sse_send_bytes == 262144


@pytest.mark.gen_test(timeout=T)
async def test_hostile_bodies_are_400_never_a_traceback(gw: RunningGateway, caplog: pytest.LogCaptureFixture) -> None:
    """Nested deeper than JSON is written back (orjson: 255 levels), for a session held here, for one
    held elsewhere and for none; a body limit that a query string does not get around."""
    alice = await sse_client(gw)
    deep: Any = {}
    for _ in range(300):
        deep = {"a": deep}
    frame = {"type": "ping", "payload": deep}
    assert (await alice.post([frame, {"type": "ping", "payload": {}}]))[0] == 400
    status, _, _ = await alice.post(frame)
    assert status == 202  # one frame is kept as it came: handled (a ping's payload fields are ignored)
    assert (await alice.expect("pong"))["type"] == "pong"
    elsewhere = f"0123456789abcdef.{'E' * 22}"
    assert (await post_frames(gw.port, elsewhere, [frame, frame]))[0] == 400
    status, body, _ = await post_frames(gw.port, elsewhere, frame)
    assert status in (400, 404), body  # the memory bus: nobody holds the route
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    request = HTTPRequest(
        f"{gw.http}/sse/send?x=1",
        method="POST",
        body=json.dumps([{"type": "ping", "payload": {"pad": "x" * 90_000}}]),
        headers={"X-Session-Id": alice.session_id},
    )
    response = await AsyncHTTPClient().fetch(request, raise_error=False)
    assert response.code == 413 and b"MAX_MESSAGE_BYTES" in response.body  # read (SSE_SEND_BYTES), then judged


@pytest.mark.gen_test(timeout=T)
async def test_input_on_the_stream_closes_it_1008(gw: RunningGateway) -> None:
    alice = await sse_client(gw)
    alice.writer.write(b"x" * 5000)  # a stream takes nothing after its request
    assert await alice.wait_closed() == 1008
    await wait_for(lambda: not gw.gateway.sessions, what="the session gone")


@pytest.mark.gen_test(timeout=T)
async def test_forwarding_to_a_holder_that_hangs_is_bounded_in_bytes(
    make_gateway: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder that hears the frames and never answers (a real bus member of the same network)
    makes each forwarded POST wait ANSWER_TIMEOUT: what waits so is at most FORWARDING_BYTES, and a
    POST over it is 503 at once, not held."""
    from services.bus.memory import MemoryBus
    from services.sse import relay

    monkeypatch.setattr(relay, "FORWARDING_BYTES", 1024 * 1024)
    network = MemoryNetwork()
    gw = await make_gateway(network=network, instance_id="b")
    heard: list[bytes] = []
    hung = MemoryBus("hung", network)
    await hung.start(lambda channel, event: heard.append(event.frame or b""))
    await hung.subscribe("relay:deadbeefdeadbeef")
    session = f"deadbeefdeadbeef.{'H' * 22}"
    body = [{"type": "ping", "payload": {"pad": "x" * 60_000}} for _ in range(4)]  # ~240 KB
    waiting = [asyncio.ensure_future(post_frames(gw.port, session, body)) for _ in range(4)]
    await wait_for(lambda: len(heard) == 4, what="four requests handed to the hung holder")
    status, answer, headers = await post_frames(gw.port, session, body)
    assert status == 503 and int(headers["retry-after"]) >= 1, answer  # over 1 MiB in flight: at once
    assert len(heard) == 4
    assert [(await w)[0] for w in waiting] == [503] * 4  # no answer within ANSWER_TIMEOUT
    await hung.close()
