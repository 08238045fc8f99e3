"""Redis trouble (docs/protocol.md, "What an ack means"; docs/scaling.md, "Redis trouble"): two
gateways on a redis-server of the test's own, which the test hangs with SIGSTOP. A message that
cannot be stored is refused to its sender and delivered to nobody; nothing that does not need
Redis waits on it; the resend with the same dedupeKey is one message for everyone, in the same
epoch."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import pytest
from realtime_gateway_client import Backoff, ErrorEvent, GatewayClient

from tests.control_support import API_KEY, api
from tests.helpers import RunningGateway, sample, token
from tests.recovery_support import in_room, messages, position, rejoin, say, send_until_acked
from tests.redis_support import PrivateRedis, client, redis_overrides, unique_prefix
from tests.sdk_helpers import expect_event

Pair = tuple[RunningGateway, RunningGateway]
# Far longer than the breaker's bound (about 2 s): a reply that waited for Redis would miss it,
# since the test thaws Redis only after the replies it expects during the hang.
DURING_HANG = 6.0


@pytest.fixture
def frozen() -> Iterator[list[PrivateRedis]]:
    """Redis servers a test froze: thawed whatever the test's outcome."""
    servers: list[PrivateRedis] = []
    yield servers
    for server in servers:
        server.thaw()


async def _pair(make_gateway: Callable[..., Awaitable[RunningGateway]], port: int) -> Pair:
    prefix = unique_prefix()
    settings = {"rate_limit": 1000.0, "rate_burst": 1000, "api_key": API_KEY}
    a = await make_gateway(**redis_overrides(port, prefix, instance_id="hang-a", **settings))
    b = await make_gateway(**redis_overrides(port, prefix, instance_id="hang-b", **settings))
    return a, b


def unavailable_for(key: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f["payload"]["code"] == "unavailable" and f["payload"].get("dedupeKey") == key


@pytest.mark.gen_test(timeout=90)
async def test_a_message_during_a_hang_reaches_nobody_and_its_resend_reaches_everyone_once(
    make_gateway: Callable[..., Awaitable[RunningGateway]], private_redis: PrivateRedis, frozen: list[PrivateRedis]
) -> None:
    a, b = await _pair(make_gateway, private_redis.port)
    alice, bob, carol = await a.client("alice"), await a.client("bob"), await b.client("carol")
    for c in (alice, bob, carol):
        await c.join("r")
    await say(bob, "r", "stored")
    before = position((await messages(carol, "r", 1))[0])
    await messages(alice, "r", 1)
    refused = sample("gateway_unavailable_total")

    private_redis.freeze()
    frozen.append(private_redis)
    bob.send("message", {"roomId": "r", "content": "during", "dedupeKey": "k-1"})
    first = await bob.expect("error", timeout=DURING_HANG, match=unavailable_for("k-1"))
    assert first["payload"]["roomId"] == "r"
    # The breaker is open now: the next one is refused without waiting, and what needs no Redis
    # flows: pings, and typing between two clients of the same instance.
    bob.send("message", {"roomId": "r", "content": "during-2", "dedupeKey": "k-2"})
    await bob.expect("error", timeout=DURING_HANG, match=unavailable_for("k-2"))
    alice.send("ping", request_id="p")
    await alice.expect("pong", timeout=DURING_HANG)
    # The control API cannot store one either: 503, and the message goes nowhere (checked below).
    api_message = {"senderId": "ops", "content": "from the api", "id": "api-1"}
    status, answer = await api(a.http, "/api/publish", {"roomId": "r", "message": api_message})
    assert status == 503 and answer["error"].startswith("unavailable"), (status, answer)
    alice.send("presence", {"roomId": "r", "status": "typing"})
    typing = await bob.expect("presence", timeout=DURING_HANG, match=lambda f: f["payload"]["status"] == "typing")
    assert typing["payload"]["userId"] == "alice"
    assert sample("gateway_unavailable_total") >= refused + 2
    # A recovering join cannot read the history now: `unavailable`, not `recovered: false` (the
    # history is whole), and the connection is not left in the room.
    dave = await b.client("dave")
    dave.send("join", {"roomId": "r", "since": before}, request_id="since")
    joining = await dave.reply_to("since", timeout=DURING_HANG)
    assert (joining["type"], joining["payload"]["code"]) == ("error", "unavailable"), joining
    assert not any("r" in s.rooms for s in b.gateway.hub.users.get("dave", ()))
    private_redis.thaw()

    # Sent again in order, as the clients do (a new message is refused while these are owed).
    ack = await send_until_acked(bob, "r", "during", "k-1")
    await send_until_acked(bob, "r", "during-2", "k-2")
    await say(bob, "r", "marker")
    for member in (alice, carol):
        got = [await member.expect("message", timeout=30, match=in_room("r")) for _ in range(3)]
        assert [m["payload"]["content"] for m in got] == ["during", "during-2", "marker"], got
        assert got[0]["payload"]["id"] == ack["payload"]["id"]
        assert [m["payload"]["offset"] for m in got] == [before["offset"] + n for n in (1, 2, 3)]
        assert {m["payload"]["epoch"] for m in got} == {before["epoch"]}  # the history survived: no renewal
    carol.close()
    back = await b.client("carol")
    joined, replayed = await rejoin(back, "r", before)
    assert joined["payload"]["recovered"] is True
    assert [f["payload"]["content"] for f in replayed if f["type"] == "message"] == ["during", "during-2", "marker"]


@pytest.mark.gen_test(timeout=60)
async def test_a_resend_after_an_answer_lost_in_the_hang_keeps_the_first_id_and_delivers_nothing_twice(
    make_gateway: Callable[..., Awaitable[RunningGateway]], private_redis: PrivateRedis
) -> None:
    """What a hang can leave behind: the refused attempt's dedupe claim, and its append, which
    Redis ran after the gateway had given up on it (the sender was told `unavailable`). The resend
    with the same dedupeKey takes that id over and finds the entry: its ack names the first id,
    and no member gets the message a second time."""
    a, b = await _pair(make_gateway, private_redis.port)
    alice, bob, carol = await a.client("alice"), await a.client("bob"), await b.client("carol")
    for c in (alice, bob, carol):
        await c.join("r")
    bob.send("message", {"roomId": "r", "content": "hello", "dedupeKey": "k-1"}, request_id="first")
    first = await bob.expect("ack", match=lambda f: f.get("requestId") == "first")
    for member in (alice, carol):
        await member.expect("message", match=in_room("r"))
    # Turn the stored record back into the claim a refused attempt leaves.
    keys = client(private_redis.port)
    (record,) = cast("list[bytes]", keys.keys(f"{a.settings.redis_prefix}dedupe:dk:*"))
    keys.set(record, f"~{first['payload']['id']} {first['payload']['createdAt']}")

    bob.send("message", {"roomId": "r", "content": "hello", "dedupeKey": "k-1"}, request_id="again")
    again = await bob.expect("ack", match=lambda f: f.get("requestId") == "again")
    assert again["payload"]["id"] == first["payload"]["id"]
    assert again["payload"]["createdAt"] == first["payload"]["createdAt"]
    assert keys.get(record) == f"{first['payload']['id']} {first['payload']['createdAt']}"
    await say(bob, "r", "marker")
    for member in (alice, carol):
        nxt = await member.expect("message", match=in_room("r"))
        assert nxt["payload"]["content"] == "marker", nxt


@pytest.mark.gen_test(timeout=90)
async def test_the_sdk_sends_a_refused_message_again_until_redis_stores_it(
    make_gateway: Callable[..., Awaitable[RunningGateway]], private_redis: PrivateRedis, frozen: list[PrivateRedis]
) -> None:
    """send() during a hang: the gateway refuses it (`unavailable`), the SDK sends it again with its
    dedupeKey until acked, and the room gets it once, after the hang."""
    a, b = await _pair(make_gateway, private_redis.port)
    carol = await b.client("carol")
    await carol.join("r")
    sdk = GatewayClient(a.url, token("bob"), backoff=Backoff(initial=0.05, maximum=0.2), ack_timeout=60)
    await sdk.connect()
    try:
        await sdk.join("r")
        private_redis.freeze()
        frozen.append(private_redis)
        sending = asyncio.ensure_future(sdk.send("r", "typed during the hang"))
        refused = await expect_event(sdk, ErrorEvent, lambda e: e.code == "unavailable", timeout=DURING_HANG)
        assert refused.room_id == "r" and not sending.done()
        private_redis.thaw()
        ack = await sending
        got = await carol.expect("message", timeout=30, match=in_room("r"))
        assert (got["payload"]["id"], got["payload"]["content"]) == (ack.id, "typed during the hang")
        await say(carol, "r", "marker")
        assert (await carol.expect("message", match=in_room("r")))["payload"]["content"] == "marker"
    finally:
        await sdk.close()
