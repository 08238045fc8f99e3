"""History and recovery in one process (memory history): offsets, `join {since}`, `history`, the
honest `recovered: false`. The same over real Redis and two instances: test_recovery_redis.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tornado.ioloop import IOLoop

from tests.helpers import RunningGateway, sample
from tests.recovery_support import in_room, messages, position, rejoin, say, seen_then_gone

T = 20


@pytest.fixture
def small(io_loop: IOLoop, make_gateway: Callable[..., Awaitable[RunningGateway]]) -> RunningGateway:
    """A gateway whose rooms keep only 3 entries."""
    running: RunningGateway = io_loop.run_sync(lambda: make_gateway(history_size=3))
    return running


@pytest.mark.gen_test(timeout=T)
async def test_entries_take_consecutive_offsets_from_one(gw: RunningGateway) -> None:
    alice = await gw.client("alice")
    alice.send("join", {"roomId": "r"}, request_id="j")
    joined = await alice.expect("room_update", match=lambda f: f.get("requestId") == "j")
    assert joined["payload"]["offset"] == 0
    await say(alice, "r", "a", "b", "c")
    got = await messages(alice, "r", 3)
    assert [m["payload"]["content"] for m in got] == ["a", "b", "c"]
    assert [position(m) for m in got] == [{"offset": i, "epoch": joined["payload"]["epoch"]} for i in (1, 2, 3)]
    alice.send("join", {"roomId": "other"}, request_id="j2")
    other = await alice.expect("room_update", match=lambda f: f.get("requestId") == "j2")
    assert other["payload"]["offset"] == 0  # offsets are per room


@pytest.mark.gen_test(timeout=T)
async def test_a_returning_client_gets_exactly_what_it_missed_then_live(gw: RunningGateway) -> None:
    alice, bob = await gw.client("alice"), await gw.client("bob")
    last = await seen_then_gone(alice, bob, "r")
    await say(bob, "r", "m1", "m2", "m3")
    replayed_before = sample("gateway_recovered_entries_total")

    back = await gw.client("alice")
    joined, between = await rejoin(back, "r", last)
    assert joined["payload"]["recovered"] is True
    assert position(joined) == {"offset": 4, "epoch": last["epoch"]}
    assert [(f["type"], f["payload"]["content"], f["payload"]["offset"]) for f in between] == [
        ("message", "m1", 2),
        ("message", "m2", 3),
        ("message", "m3", 4),
    ]
    assert sample("gateway_recovered_entries_total") == replayed_before + 3
    await say(bob, "r", "live")
    live = await back.expect("message", match=in_room("r"))
    assert (live["payload"]["content"], live["payload"]["offset"]) == ("live", 5)
    await back.none_before_pong("message")  # nothing twice at the seam


@pytest.mark.gen_test(timeout=T)
async def test_a_quiet_room_recovers_with_nothing_to_replay(gw: RunningGateway) -> None:
    alice = await gw.client("alice")
    await alice.join("r")
    await say(alice, "r", "only")
    last = position((await messages(alice, "r", 1))[0])
    alice.close()
    back = await gw.client("alice")
    joined, between = await rejoin(back, "r", last)
    assert joined["payload"]["recovered"] is True
    assert position(joined) == last
    assert between == []


@pytest.mark.gen_test(timeout=T)
@pytest.mark.parametrize(
    "since",
    [
        pytest.param(lambda p: {"offset": p["offset"], "epoch": "another"}, id="wrong-epoch"),
        pytest.param(lambda p: {"offset": p["offset"] + 1, "epoch": p["epoch"]}, id="offset-ahead"),
    ],
)
async def test_not_recovered_when_the_position_is_not_this_rooms(
    gw: RunningGateway, since: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    alice = await gw.client("alice")
    await alice.join("r")
    await say(alice, "r", "x")
    current = position((await messages(alice, "r", 1))[0])
    not_recovered = sample("gateway_recoveries_total", outcome="not_recovered")
    back = await gw.client("alice")
    joined, between = await rejoin(back, "r", since(current))
    assert joined["payload"]["recovered"] is False
    assert position(joined) == current  # where the client now stands
    assert between == []
    assert sample("gateway_recoveries_total", outcome="not_recovered") == not_recovered + 1


@pytest.mark.gen_test(timeout=T)
async def test_not_recovered_when_more_was_missed_than_the_history_holds(small: RunningGateway) -> None:
    alice, bob = await small.client("alice"), await small.client("bob")
    last = await seen_then_gone(alice, bob, "r")
    await say(bob, "r", "1", "2", "3")  # exactly HISTORY_SIZE missed: still recoverable
    back = await small.client("alice")
    joined, between = await rejoin(back, "r", last)
    assert joined["payload"]["recovered"] is True
    assert [f["payload"]["content"] for f in between] == ["1", "2", "3"]
    back.close()
    await say(bob, "r", "4", "5", "6", "7")  # one more than the history holds
    again = await small.client("alice")
    joined, between = await rejoin(again, "r", position(joined) | {"offset": 4})
    assert joined["payload"]["recovered"] is False
    assert joined["payload"]["offset"] == 8
    assert between == []


@pytest.mark.gen_test(timeout=T)
async def test_a_restarted_process_has_a_new_epoch(
    make_gateway: Callable[..., Awaitable[RunningGateway]],
) -> None:
    first = await make_gateway()
    alice = await first.client("alice")
    await alice.join("r")
    await say(alice, "r", "before")
    last = position((await messages(alice, "r", 1))[0])
    await first.stop()
    second = await make_gateway()
    back = await second.client("alice")
    joined, between = await rejoin(back, "r", last)
    assert joined["payload"]["recovered"] is False
    assert joined["payload"]["epoch"] != last["epoch"]
    assert (joined["payload"]["offset"], between) == (0, [])


@pytest.mark.gen_test(timeout=T)
async def test_history_returns_the_latest_entries_oldest_first(gw: RunningGateway) -> None:
    alice = await gw.client("alice")
    await alice.join("r")
    await say(alice, "r", "a", "b", "c", "d")
    alice.send("history", {"roomId": "r", "limit": 2}, request_id="h")
    reply = await alice.expect("history", match=lambda f: f.get("requestId") == "h")
    payload = reply["payload"]
    assert (payload["roomId"], payload["offset"]) == ("r", 4)
    assert [(e["type"], e["payload"]["content"], e["payload"]["offset"]) for e in payload["entries"]] == [
        ("message", "c", 3),
        ("message", "d", 4),
    ]
    alice.send("history", {"roomId": "r"}, request_id="all")
    reply = await alice.expect("history", match=lambda f: f.get("requestId") == "all")
    assert [e["payload"]["content"] for e in reply["payload"]["entries"]] == ["a", "b", "c", "d"]


@pytest.mark.gen_test(timeout=T)
async def test_events_from_elsewhere_are_entries_too(gw: RunningGateway) -> None:
    """What the Kafka consumer (and later the control API) hands the hub takes an offset and is
    replayed like a client's message."""
    alice = await gw.client("alice")
    await alice.join("r")
    await say(alice, "r", "first")
    last = position((await messages(alice, "r", 1))[0])
    alice.close()
    hub = gw.gateway.hub
    created = {
        "id": "m-bot",
        "roomId": "r",
        "senderType": "agent",
        "senderId": "bot",
        "content": "from a bot",
        "attachments": [],
        "createdAt": "2026-12-01T00:00:00.000Z",
    }
    await hub.deliver("r", "message", created)
    await hub.deliver("r", "message_updated", {"id": "m-bot", "roomId": "r", "content": "edited"})
    await hub.deliver("r", "message_deleted", {"id": "m-bot", "roomId": "r"})
    await hub.deliver("r", "room_update", {"roomId": "r", "action": "updated", "changes": {"name": "R"}})
    back = await gw.client("alice")
    joined, between = await rejoin(back, "r", last)
    assert joined["payload"]["recovered"] is True
    assert [(f["type"], f["payload"]["offset"]) for f in between] == [
        ("message", 2),
        ("message_updated", 3),
        ("message_deleted", 4),
    ]  # the room_update is live news, not history


@pytest.mark.gen_test(timeout=T)
async def test_bad_since_and_history_requests_are_refused(gw: RunningGateway) -> None:
    alice = await gw.client("alice")
    for since in ({"offset": -1, "epoch": "e"}, {"offset": 1, "epoch": "e" * 65}, {"offset": "1", "epoch": "e"}):
        alice.send("join", {"roomId": "r", "since": since})
        await alice.expect_error("validation_failed")
    alice.send("history", {"roomId": "r"})
    await alice.expect_error("not_in_room")
    await alice.join("r")
    for limit in (0, 101, "5"):
        alice.send("history", {"roomId": "r", "limit": limit})
        await alice.expect_error("validation_failed")


@pytest.mark.gen_test(timeout=T)
async def test_with_history_off_no_position_is_promised(
    make_gateway: Callable[..., Awaitable[RunningGateway]],
) -> None:
    off = await make_gateway(history_size=0)
    alice = await off.client("alice")
    alice.send("join", {"roomId": "r"}, request_id="j")
    joined = await alice.expect("room_update", match=lambda f: f.get("requestId") == "j")
    assert "offset" not in joined["payload"]
    await say(alice, "r", "x")
    assert "offset" not in (await messages(alice, "r", 1))[0]["payload"]
    back = await off.client("alice")
    joined, _ = await rejoin(back, "r", {"offset": 1, "epoch": "e"})
    assert joined["payload"]["recovered"] is False
