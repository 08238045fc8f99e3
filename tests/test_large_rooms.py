"""Large rooms (docs/protocol.md, "Large rooms"): member pages and cursors, counts, and no
per-user presence above PRESENCE_BROADCAST_LIMIT, in one process and across two instances."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tornado.ioloop import IOLoop

from tests.helpers import Client, RunningGateway, sample
from tests.redis_support import redis_overrides, shared_redis_port, unique_prefix

T = 30
SMALL = {"presence_page": 3, "presence_broadcast_limit": 4, "presence_count_interval": 0.2}


def in_room(room: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f["payload"].get("roomId") == room


def replying(request_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f.get("requestId") == request_id


def user_ids(state: dict[str, Any]) -> list[str]:
    return [m["userId"] for m in state["payload"]["members"]]


async def joined(gw: RunningGateway, user: str, room: str) -> tuple[Client, dict[str, Any]]:
    client = await gw.client(user)
    return client, await client.join(room)


async def all_pages(client: Client, room: str) -> list[str]:
    """Every member, page by page, through presence_query."""
    seen: list[str] = []
    cursor: str | None = None
    for n in range(100):
        payload = {"roomId": room} if cursor is None else {"roomId": room, "cursor": cursor}
        client.send("presence_query", payload, request_id=f"q{n}")
        page = await client.expect("presence_state", match=replying(f"q{n}"))
        seen += user_ids(page)
        cursor = page["payload"].get("next")
        if cursor is None:
            return seen
    raise AssertionError("paging did not end")


@pytest.fixture
def gw(io_loop: IOLoop, make_gateway: Callable[..., Awaitable[RunningGateway]]) -> RunningGateway:
    running: RunningGateway = io_loop.run_sync(lambda: make_gateway(**SMALL))
    return running


@pytest.mark.gen_test(timeout=T)
async def test_the_snapshot_is_a_sorted_first_page_with_the_count(gw: RunningGateway) -> None:
    for user in ("dan", "ann", "cat", "bob"):
        await joined(gw, user, "r")
    eve, state = await joined(gw, "eve", "r")
    assert state["payload"]["count"] == 5
    assert user_ids(state) == ["ann", "bob", "cat"]
    assert isinstance(state["payload"]["next"], str)
    assert await all_pages(eve, "r") == ["ann", "bob", "cat", "dan", "eve"]


@pytest.mark.gen_test(timeout=T)
async def test_presence_query_is_for_members_and_checks_its_cursor(gw: RunningGateway) -> None:
    ann, _ = await joined(gw, "ann", "r")
    outsider = await gw.client("zed")
    outsider.send("presence_query", {"roomId": "r"})
    await outsider.expect_error("not_in_room")
    for cursor in ("%%%", "", "x" * 1025):
        ann.send("presence_query", {"roomId": "r", "cursor": cursor})
        await ann.expect_error("validation_failed")
    ann.send("presence_query", {"roomId": "r"}, request_id="first")
    page = await ann.expect("presence_state", match=lambda f: f.get("requestId") == "first")
    assert (page["payload"]["count"], user_ids(page), "next" in page["payload"]) == (1, ["ann"], False)


@pytest.mark.gen_test(timeout=T)
async def test_paging_lists_everyone_online_throughout_exactly_once(gw: RunningGateway) -> None:
    stay = [f"s{i:02d}" for i in range(10)]
    clients = {u: (await joined(gw, u, "r"))[0] for u in stay}
    reader = clients["s00"]
    seen: list[str] = []
    cursor: str | None = None
    churn = 0
    while True:
        payload = {"roomId": "r"} if cursor is None else {"roomId": "r", "cursor": cursor}
        reader.send("presence_query", payload, request_id=f"p{churn}")
        page = await reader.expect("presence_state", match=replying(f"p{churn}"))
        seen += user_ids(page)
        cursor = page["payload"].get("next")
        if cursor is None:
            break
        # Others come and go between pages, before and after the cursor.
        comer, _ = await joined(gw, f"a{churn}", "r")
        comer.close()
        await joined(gw, f"z{churn}", "r")
        churn += 1
    assert [u for u in seen if u in stay] == stay  # each once, in order
    assert len(seen) == len(set(seen))


@pytest.mark.gen_test(timeout=T)
async def test_above_the_limit_counts_replace_per_user_frames_and_below_it_they_resume(gw: RunningGateway) -> None:
    watcher, _ = await joined(gw, "w", "r")
    others = [(await joined(gw, f"u{i}", "r"))[0] for i in range(3)]  # 4 users: at the limit
    await watcher.expect("presence", match=lambda f: f["payload"]["userId"] == "u2")
    fifth, _ = await joined(gw, "u3", "r")  # 5 > 4: no per-user frame
    count = await watcher.expect("presence_count", match=in_room("r"))
    assert count["payload"] == {"roomId": "r", "count": 5}
    await watcher.none_before_pong("presence", match=lambda f: f["payload"]["userId"] == "u3")
    fifth.send("presence", {"roomId": "r", "status": "typing"})  # stored, not announced
    await joined(gw, "u4", "r")  # 6
    assert (await watcher.expect("presence_count", match=in_room("r")))["payload"]["count"] == 6
    await watcher.none_before_pong("presence", match=lambda f: f["payload"]["userId"] in ("u3", "u4"))
    others[0].close()
    fifth.close()  # back to 4: a fresh first page, then per-user frames again
    state = await watcher.expect("presence_state", match=lambda f: f["payload"]["count"] == 4)
    assert user_ids(state) == ["u1", "u2", "u4"]
    others[1].close()
    await watcher.expect(
        "presence", match=lambda f: f["payload"] == {**f["payload"], "userId": "u1", "status": "offline"}
    )


@pytest.mark.gen_test(timeout=T)
async def test_counts_are_sent_only_when_they_change(gw: RunningGateway) -> None:
    watcher, _ = await joined(gw, "w", "r")
    for i in range(5):
        await joined(gw, f"u{i}", "r")
    assert (await watcher.expect("presence_count", match=in_room("r")))["payload"]["count"] == 6
    # Several intervals pass with no change: the next count frame is the changed one.
    member, _ = await joined(gw, "late", "r")
    nxt = await watcher.expect("presence_count", match=in_room("r"))
    assert nxt["payload"]["count"] == 7
    member.close()
    assert (await watcher.expect("presence_count", match=in_room("r")))["payload"]["count"] == 6


@pytest.mark.gen_test(timeout=60)
async def test_filling_a_room_costs_linear_deliveries(make_gateway: Callable[..., Awaitable[RunningGateway]]) -> None:
    """Filling a room of N sends each joiner one page and announces only the first
    PRESENCE_BROADCAST_LIMIT joins: deliveries grow with N, not N^2."""
    gw = await make_gateway(presence_page=10, presence_broadcast_limit=10, presence_count_interval=60.0)
    before = sample("gateway_deliveries_total")
    n = 120
    for i in range(n):
        await joined(gw, f"f{i:03d}", "fill")
    deliveries = sample("gateway_deliveries_total") - before
    assert deliveries <= 10 * 10  # per-user online frames, all before the limit (N^2/2 would be 7,140)


@pytest.mark.slow  # two instances on Redis
@pytest.mark.gen_test(timeout=T)
async def test_counts_and_pages_span_instances(
    io_loop: IOLoop, make_gateway: Callable[..., Awaitable[RunningGateway]]
) -> None:
    prefix = unique_prefix()
    a = await make_gateway(**redis_overrides(shared_redis_port(), prefix, instance_id="big-a", **SMALL))
    b = await make_gateway(**redis_overrides(shared_redis_port(), prefix, instance_id="big-b", **SMALL))
    watcher, _ = await joined(a, "w", "r")
    for i in range(4):
        await joined(b if i % 2 else a, f"u{i}", "r")
    last, state = await joined(b, "v", "r")  # 6 users, 3 here and 3 there
    assert state["payload"]["count"] == 6
    assert await all_pages(last, "r") == ["u0", "u1", "u2", "u3", "v", "w"]
    assert (await watcher.expect("presence_count", match=in_room("r")))["payload"]["count"] == 6
