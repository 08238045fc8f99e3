"""The client SDK against real gateways over real sockets: in-process ones for the protocol, a
`python server.py` process for restarts, and a TCP proxy that can lose replies and cut sockets."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from realtime_gateway_client import (
    Ack,
    AuthError,
    Backoff,
    Connected,
    ConnectionClosed,
    Disconnected,
    ErrorEvent,
    GatewayClient,
    GatewayError,
    Member,
    Message,
    Presence,
    PresenceCount,
    PresenceState,
    Recovery,
    Refreshed,
    RoomUpdate,
    TokenExpiring,
    Unknown,
    parse_event,
)

from tests.control_support import API_KEY, api
from tests.helpers import (
    SECRET,
    Client,
    GatewayProcess,
    free_port,
    spawn_server,
    token,
)
from tests.sdk_helpers import events_until, expect_event

FAST = Backoff(initial=0.05, maximum=0.5)


async def sdk(url: str, sub: str = "alice", **kw: Any) -> GatewayClient:
    client = GatewayClient(url, token(sub), backoff=FAST, **kw)
    await client.connect()
    return client


@pytest.mark.gen_test(timeout=15)
async def test_send_returns_the_ack_of_that_message(gw):
    alice = await sdk(gw.url, "alice")
    bob = await gw.client("bob")
    try:
        await alice.join("general")
        await bob.join("general")
        # Many sends in flight at once: each await gets the ack of its own frame (by requestId).
        contents = [f"message {i}" for i in range(20)]
        acks = await asyncio.gather(*(alice.send("general", c) for c in contents))
        ids_by_content = {}
        for _ in contents:
            frame = await bob.expect("message")
            ids_by_content[frame["payload"]["content"]] = (
                frame["payload"]["id"],
                frame["payload"]["dedupeKey"],
            )
        for content, ack in zip(contents, acks, strict=True):
            assert isinstance(ack, Ack)
            assert (ack.id, ack.dedupe_key) == ids_by_content[content]
            assert ack.room_id == "general" and ack.created_at.tzinfo is not None
        assert len({a.dedupe_key for a in acks}) == len(acks), "every send gets its own dedupeKey"
    finally:
        bob.close()
        await alice.close()


@pytest.mark.gen_test(timeout=15)
async def test_events_arrive_as_typed_objects(gw):
    alice = await sdk(gw.url, "alice")
    bob = await sdk(gw.url, "bob")
    try:
        joined = await alice.join("general")
        assert joined == RoomUpdate(
            room_id="general", action="joined", request_id=joined.request_id, offset=0, epoch=joined.epoch
        )
        assert joined.epoch
        assert joined.request_id
        state = await expect_event(alice, PresenceState)
        assert [m.user_id for m in state.members] == ["alice"]
        await bob.join("general")
        online = await expect_event(alice, Presence, lambda e: e.user_id == "bob")
        assert online.status == "online" and online.room_id == "general"

        assert bob.typing("general")
        typing = await expect_event(alice, Presence, lambda e: e.user_id == "bob")
        assert typing.status == "typing"
        assert alice.members("general")[-1] == Member("bob", "typing", typing.at)

        ack = await bob.send("general", "hi alice", attachments=[{"url": "https://x.test/a.png", "type": "image"}])
        msg = await expect_event(alice, Message)
        assert (msg.id, msg.sender_id, msg.sender_type, msg.content) == (ack.id, "bob", "human", "hi alice")
        assert msg.attachments[0].url == "https://x.test/a.png" and msg.attachments[0].type == "image"
        assert msg.created_at == ack.created_at

        assert bob.idle("general")
        idle = await expect_event(alice, Presence, lambda e: e.user_id == "bob")
        assert idle.status == "idle"
        await bob.close()
        offline = await expect_event(alice, Presence, lambda e: e.user_id == "bob")
        assert offline.status == "offline"
        assert [m.user_id for m in alice.members("general")] == ["alice"]
        assert await alice.ping() < 1.0
    finally:
        await bob.close()
        await alice.close()


@pytest.mark.gen_test(timeout=10)
async def test_refusals_raise_gateway_errors(gw):
    alice = await sdk(gw.url, "alice")
    try:
        with pytest.raises(GatewayError) as err:
            await alice.send("general", "not joined yet", dedupe_key="k1")
        assert err.value.code == "not_in_room" and err.value.event.dedupe_key == "k1"
        with pytest.raises(GatewayError) as err:
            await alice.join("-bad room-")
        assert err.value.code == "validation_failed"
        assert alice.rooms == (), "a refused join is not re-joined after a reconnect"
        await alice.join("general")
        with pytest.raises(GatewayError) as err:
            await alice.send("general", "x" * 4001)
        assert err.value.code == "validation_failed"
        with pytest.raises(ValueError):
            alice.set_presence("general", "offline")  # type: ignore[arg-type]
    finally:
        await alice.close()
    with pytest.raises(ConnectionClosed):
        await alice.send("general", "after close")


@pytest.mark.gen_test(timeout=10)
async def test_bad_token_fails_at_connect(gw):
    client = GatewayClient(gw.url, token("alice", secret="another-secret-that-is-long-enough-0123456789"))
    with pytest.raises(AuthError, match="token refused"):
        await client.connect()
    await client.close()


@pytest.mark.gen_test(timeout=10)
async def test_too_many_connections_is_not_retried(make_gateway):
    gw = await make_gateway(max_user_connections=1)
    first = await gw.client("alice")
    client = await sdk(gw.url, "alice")
    try:
        gone = await expect_event(client, Disconnected)
        assert gone.code == 4029 and not gone.will_reconnect
        with pytest.raises(ConnectionClosed):
            await client.join("general")
        assert client.connections == 1 and client.closed
    finally:
        first.close()
        await client.close()


@pytest.mark.gen_test(timeout=15)
async def test_the_token_source_refreshes_in_band_and_the_socket_outlives_the_first_token(make_gateway):
    gw = await make_gateway(jwt_leeway=0, token_refresh_notice=2)
    issued: list[str] = []

    async def fresh_token() -> str:
        issued.append(token("alice", ttl=3 if not issued else 3600))
        return issued[-1]

    with pytest.raises(ValueError):
        GatewayClient(gw.url, "a-token", token_provider=fresh_token)
    client = GatewayClient(gw.url, token_provider=fresh_token, backoff=FAST)
    await client.connect()
    try:
        await client.join("general")
        expiring = await expect_event(client, TokenExpiring)
        refreshed = await expect_event(client, Refreshed)
        assert refreshed.expires_at > expiring.expires_at and len(issued) == 2
        first_exp = expiring.expires_at.timestamp()
        await asyncio.sleep(max(0.0, first_exp + 2.0 - time.time()))  # past the first token's deadline
        bob = await gw.client("bob")
        await bob.join("general")
        bob.send("message", {"roomId": "general", "content": "still here?"})
        assert (await expect_event(client, Message)).content == "still here?"
        assert client.connections == 1  # the same socket: no 4001, no reconnect
        bob.close()
    finally:
        await client.close()


@pytest.mark.gen_test(timeout=15)
async def test_a_refused_refresh_is_reported_and_the_source_serves_the_reconnect_after_4001(make_gateway):
    gw = await make_gateway(jwt_leeway=0)
    issued: list[int] = []

    async def tokens() -> str:
        issued.append(1)
        if len(issued) == 1:
            return token("alice", ttl=1)
        if len(issued) == 2:  # the in-band refresh: a token the gateway refuses
            return token("alice", ttl=3600, secret="y" * 40)
        return token("alice", ttl=3600)

    client = GatewayClient(gw.url, tokens, backoff=FAST)
    await client.connect()
    try:
        await client.join("general")
        refused = await expect_event(client, ErrorEvent)
        assert refused.code == "invalid_token"
        gone = await expect_event(client, Disconnected)
        assert gone.code == 4001 and gone.will_reconnect
        back = await expect_event(client, Connected)
        assert back.reconnected and back.rooms == ("general",)
        assert len(issued) >= 3
        bob = await gw.client("bob")
        await bob.join("general")
        bob.send("message", {"roomId": "general", "content": "still here?"})
        assert (await expect_event(client, Message)).content == "still here?"
        bob.close()
    finally:
        await client.close()


@pytest.mark.gen_test(timeout=15)
async def test_a_disconnect_by_the_control_plane_is_not_retried(make_gateway):
    gw = await make_gateway(api_key=API_KEY)
    calls: list[int] = []

    async def tokens() -> str:
        calls.append(1)
        return token("alice")

    client = GatewayClient(gw.url, token_provider=tokens, backoff=FAST)
    await client.connect()
    try:
        status, _ = await api(gw.http, "/api/disconnect", {"userId": "alice", "reason": "signed out"})
        assert status == 200
        gone = await expect_event(client, Disconnected)
        assert gone.code == 4003 and not gone.will_reconnect
        assert calls == [1]  # no new connection attempt
    finally:
        await client.close()


@pytest.mark.gen_test(timeout=10)
async def test_expired_fixed_token_stops_the_client(make_gateway):
    gw = await make_gateway(jwt_leeway=0)
    client = GatewayClient(gw.url, token("alice", ttl=1), backoff=FAST)
    await client.connect()
    gone = await expect_event(client, Disconnected)
    assert gone.code == 4001 and not gone.will_reconnect and "new token" in gone.reason
    assert [e async for e in client] == [], "the event stream ends"
    await client.close()


class CuttableProxy:
    """A TCP proxy in front of the gateway: `lose_replies` drops everything the server sends,
    `cut()` aborts every proxied connection (what a dying NAT or load balancer does)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.lose_replies = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, from_server: bool) -> None:
            try:
                while data := await src.read(65536):
                    if from_server and self.lose_replies:
                        continue
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    def cut(self) -> None:
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()


@pytest.mark.gen_test(timeout=15)
async def test_send_retried_after_a_drop_is_not_duplicated(gw):
    proxy = CuttableProxy(gw.port)
    await proxy.start()
    bob = await gw.client("bob")
    alice = await sdk(f"ws://127.0.0.1:{proxy.port}/", "alice")
    try:
        await bob.join("general")
        await alice.join("general")
        proxy.lose_replies = True  # the gateway gets the message, alice never hears the ack
        sending = asyncio.ensure_future(alice.send("general", "exactly once"))
        first = await bob.expect("message")
        assert first["payload"]["content"] == "exactly once"
        assert not sending.done()
        proxy.cut()
        proxy.lose_replies = False
        ack = await asyncio.wait_for(sending, 10)
        assert ack.id == first["payload"]["id"], "the retry got the first send's ack"
        assert ack.dedupe_key == first["payload"]["dedupeKey"]
        assert alice.connections == 2
        await bob.none_before_pong("message")  # a second broadcast would precede the retry's ack
    finally:
        bob.close()
        await alice.close()
        await proxy.stop()


class Restartable:
    """A gateway process on a port of its own that a test stops and starts again."""

    def __init__(self) -> None:
        port = free_port()
        self.url = f"ws://127.0.0.1:{port}/"
        self._args = ("--port", str(port), "--host", "127.0.0.1", "--drain-delay", "0", "--drain-window", "0")
        self._started: list[GatewayProcess] = []

    async def start(self) -> GatewayProcess:
        loop = asyncio.get_running_loop()
        server = await loop.run_in_executor(None, lambda: spawn_server(*self._args, env={"JWT_DEV": SECRET}))
        self._started.append(server)
        return server

    async def drain(self, server: GatewayProcess) -> int:
        server.signal(signal.SIGTERM)
        return await asyncio.get_running_loop().run_in_executor(None, server.wait, 15)

    def kill(self) -> None:
        for server in self._started:
            server.kill()


@pytest.mark.gen_test(timeout=40)
async def test_reconnects_and_rejoins_after_the_server_restarts():
    servers = Restartable()
    server = await servers.start()
    url = servers.url
    client = GatewayClient(url, token("alice"), backoff=Backoff(initial=0.2, maximum=1.0))
    try:
        await client.connect()
        await client.join("general")
        await client.join("random")
        await client.send("general", "before the restart")
        before = await expect_event(client, Message, lambda m: m.content == "before the restart")
        assert client.position("general") == (1, before.epoch)
        assert await servers.drain(server) == 0
        gone = await expect_event(client, Disconnected)
        assert gone.code == 1012 and gone.will_reconnect
        assert not client.connected

        queued = asyncio.ensure_future(client.send("general", "typed while the server was down"))
        await servers.start()
        seen = await events_until(client, Connected)
        back = seen[-1]
        assert isinstance(back, Connected)
        assert back.reconnected and back.rooms == ("general", "random")
        # A new process has a new epoch: each re-join with `since` is answered `recovered: false`,
        # which the application hears of, room by room.
        gaps = [e for e in seen if isinstance(e, Recovery) and not e.recovered]
        assert sorted(g.room_id for g in gaps) == ["general", "random"]
        assert gaps[0].epoch != before.epoch and client.position("general") == (0, gaps[0].epoch)
        ack = await asyncio.wait_for(queued, 10)
        assert ack.room_id == "general"

        bob = await Client.connect(url, token("bob"))
        state = await bob.join("random")
        assert sorted(m["userId"] for m in state["payload"]["members"]) == ["alice", "bob"], "alice re-joined"
        bob.send("message", {"roomId": "random", "content": "welcome back"})
        got = await expect_event(client, Message, lambda m: m.room_id == "random")
        assert (got.sender_id, got.content) == ("bob", "welcome back")
        assert client.connections == 2
        bob.close()
    finally:
        await client.close()
        servers.kill()


@pytest.mark.gen_test(timeout=60)
async def test_a_client_in_60_rooms_is_joined_to_every_one_again_within_the_rate_limit():
    """A join with `since` costs two frames of the rate limit: 60 re-joins at once would be refused
    past the burst (and close the socket 1008). The SDK paces them and asks again for a refused one."""
    servers = Restartable()
    server = await servers.start()
    client = GatewayClient(servers.url, token("alice"), backoff=Backoff(initial=0.2, maximum=1.0))
    rooms = [f"room-{n}" for n in range(60)]
    try:
        await client.connect()
        for room in rooms:
            await client.join(room)
            await asyncio.sleep(0.07)  # the caller's own joins, within 20 frames/s
        assert await servers.drain(server) == 0
        await servers.start()
        seen = await events_until(client, Connected, lambda e: e.reconnected, timeout=30)
        back = seen[-1]
        assert isinstance(back, Connected) and back.rooms == tuple(rooms)
        bob = await Client.connect(servers.url, token("bob"))
        await bob.join("room-59")
        bob.send("message", {"roomId": "room-59", "content": "last room"})
        got = await expect_event(client, Message, lambda m: m.content == "last room")
        assert got.room_id == "room-59"
        bob.close()
    finally:
        await client.close()
        servers.kill()


@pytest.mark.gen_test(timeout=60)
async def test_recovers_what_it_missed_after_the_server_restarts_with_redis(make_gateway):
    """The gateway process restarts while another instance keeps the room busy: the SDK re-joins
    with its last position and gets exactly the missed messages, in order, with no loss reported."""
    from tests.redis_support import redis_overrides, shared_redis_port, unique_prefix

    redis_port, prefix = shared_redis_port(), unique_prefix()
    other = await make_gateway(**redis_overrides(redis_port, prefix))
    port = free_port()
    args = ("--port", str(port), "--host", "127.0.0.1", "--drain-delay", "0", "--drain-window", "0")
    env = {"JWT_DEV": SECRET, "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_port), "REDIS_PREFIX": prefix}
    loop = asyncio.get_running_loop()
    server = await loop.run_in_executor(None, lambda: spawn_server(*args, env=env))
    client = GatewayClient(f"ws://127.0.0.1:{port}/", token("alice"), backoff=Backoff(initial=0.2, maximum=1.0))
    bob = await other.client("bob")
    restarted = None
    try:
        await client.connect()
        await client.join("r")
        await bob.join("r")
        bob.send("message", {"roomId": "r", "content": "seen"})
        await expect_event(client, Message, lambda m: m.content == "seen")
        server.signal(signal.SIGTERM)
        assert await loop.run_in_executor(None, server.wait, 15) == 0
        await expect_event(client, Disconnected)
        for content in ("missed-1", "missed-2"):
            bob.send("message", {"roomId": "r", "content": content}, request_id=content)
            await bob.expect("ack", match=lambda f, rid=content: f.get("requestId") == rid)
        restarted = await loop.run_in_executor(None, lambda: spawn_server(*args, env=env))
        seen = await events_until(client, Message, lambda m: m.content == "missed-2")
        assert [m.content for m in seen if isinstance(m, Message)] == ["missed-1", "missed-2"]
        assert [e.recovered for e in seen if isinstance(e, Recovery)] == [True]  # and no loss
        assert [u.recovered for u in seen if isinstance(u, RoomUpdate)] == [True]
        last = seen[-1]
        assert isinstance(last, Message) and client.position("r") == (3, last.epoch)
    finally:
        await client.close()
        server.kill()
        if restarted is not None:
            restarted.kill()


def test_backoff_grows_with_jitter_and_is_capped():
    backoff = Backoff(initial=0.5, maximum=4.0, factor=2.0, jitter=0.5)
    for attempt, base in enumerate([0.5, 1.0, 2.0, 4.0, 4.0, 4.0]):
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(base * 0.5 <= d <= base for d in delays), (attempt, min(delays), max(delays))
        assert len(set(delays)) > 1, "jittered, so clients do not reconnect in lockstep"
    assert backoff.delay(10_000) <= 4.0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@given(
    frame_type=st.sampled_from(
        [
            "message",
            "ack",
            "room_update",
            "presence",
            "presence_state",
            "error",
            "pong",
            "message_updated",
            "message_deleted",
            "something_new",
        ]
    ),
    payload=json_values,
    request_id=json_values,
)
def test_parse_event_never_raises_on_odd_frames(frame_type, payload, request_id):
    """A gateway newer (or buggier) than the client must not crash its read loop."""
    event = parse_event({"type": frame_type, "payload": payload, "requestId": request_id})
    if frame_type == "something_new":
        assert isinstance(event, Unknown) and event.type == "something_new"
    else:
        assert type(event).__name__ != "Unknown"


@pytest.mark.gen_test
async def test_positions_drop_repeats_and_report_gaps():
    """The SDK's bookkeeping of room positions, fed frames directly (pure logic): repeats are
    dropped, a skipped offset or a new epoch on a live entry is a Recovery (not recovered) before the entry."""
    client = GatewayClient("ws://127.0.0.1:9/", "unused")
    client._rooms["r"] = None

    def feed(frame_type: str, **payload: Any) -> list[Any]:
        client._dispatch({"type": frame_type, "payload": {"roomId": "r", **payload}})
        out = []
        while not client._events.empty():
            out.append(client._events.get_nowait())
        return out

    def entry(offset: int, epoch: str = "e") -> dict[str, Any]:
        fields = {"id": f"m{offset}", "senderType": "human", "senderId": "a", "content": "x"}
        return {**fields, "createdAt": "2026-12-01T00:00:00.000Z", "offset": offset, "epoch": epoch}

    assert [type(e) for e in feed("room_update", action="joined", offset=3, epoch="e")] == [RoomUpdate]
    assert client.position("r") == (3, "e")
    assert [type(e) for e in feed("message", **entry(4))] == [Message]
    assert feed("message", **entry(4)) == []  # a repeat
    jumped = feed("message", **entry(7))
    assert [type(e) for e in jumped] == [Recovery, Message] and not jumped[0].recovered
    assert (jumped[0].offset, client.position("r")) == (6, (7, "e"))
    assert [type(e) for e in feed("message", **entry(1, "renewed"))] == [Recovery, Message]
    # Joining again while receiving keeps the position; a failed recovery without one forgets it.
    feed("room_update", action="joined", offset=9, epoch="renewed")
    assert client.position("r") == (1, "renewed")
    gap = feed("room_update", action="joined", recovered=False)
    assert [type(e) for e in gap] == [Recovery, RoomUpdate] and gap[0].offset is None and not gap[0].recovered
    assert client.position("r") is None


@pytest.mark.gen_test(timeout=20)
async def test_pages_of_members_and_counts_of_a_large_room(make_gateway):
    gw = await make_gateway(presence_page=2, presence_broadcast_limit=3, presence_count_interval=0.2)
    clients = [await sdk(gw.url, name) for name in ("dan", "ann", "cat", "bob")]
    try:
        for c in clients:
            await c.join("big")
        first = await clients[0].presence_query("big")
        assert (first.count, [m.user_id for m in first.members]) == (4, ["ann", "bob"])
        rest = await clients[0].presence_query("big", first.next)
        assert ([m.user_id for m in rest.members], rest.next) == (["cat", "dan"], None)
        counted = await expect_event(clients[0], PresenceCount)
        assert counted == PresenceCount("big", 4)
    finally:
        for c in clients:
            await c.close()
