"""Helpers of the recovery tests (memory and Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.helpers import Client


def position(frame: dict[str, Any]) -> dict[str, Any]:
    """`since` for a frame that carries a position (an entry, or a `joined` reply)."""
    return {"offset": frame["payload"]["offset"], "epoch": frame["payload"]["epoch"]}


def in_room(room: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f["payload"].get("roomId") == room


async def say(sender: Client, room: str, *contents: str) -> None:
    """Send each message and wait for its ack (so all are in the history before going on)."""
    for content in contents:
        request_id = f"say-{content}"
        sender.send("message", {"roomId": room, "content": content}, request_id=request_id)
        await sender.expect("ack", match=_replying_to(request_id))


async def rejoin(client: Client, room: str, since: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Join with `since`: the reply, then every frame up to the room's presence_state (the replay
    comes between the two), in the order they arrived."""
    client.send("join", {"roomId": room, "since": since}, request_id="rejoin")
    joined = await client.expect("room_update", match=lambda f: f.get("requestId") == "rejoin")
    between: list[dict[str, Any]] = []
    while True:
        frame = await client.recv()
        assert frame is not None, "closed during the join"
        if frame["type"] == "presence_state" and in_room(room)(frame):
            return joined, between
        between.append(frame)


async def messages(client: Client, room: str, count: int) -> list[dict[str, Any]]:
    return [await client.expect("message", match=in_room(room)) for _ in range(count)]


def _replying_to(request_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f.get("requestId") == request_id


async def seen_then_gone(alice: Client, bob: Client, room: str) -> dict[str, Any]:
    """alice and bob in `room`; bob says "seen", alice receives it and goes away: her last position."""
    await alice.join(room)
    await bob.join(room)
    await say(bob, room, "seen")
    last = position((await messages(alice, room, 1))[0])
    alice.close()
    return last


async def send_until_acked(sender: Client, room: str, content: str, key: str) -> dict[str, Any]:
    """Send with `key` until acked, as the clients do: `unavailable` means try again, a moment
    later (the clients' own pace; not a wait for a condition: each attempt's reply is awaited)."""
    for attempt in range(120):  # bounded: a gateway that never stores it fails the test
        request_id = f"{key}-{attempt}"
        sender.send("message", {"roomId": room, "content": content, "dedupeKey": key}, request_id=request_id)
        reply = await sender.reply_to(request_id, timeout=30)
        if reply["type"] == "ack":
            return reply
        assert reply["payload"]["code"] == "unavailable", reply
        await asyncio.sleep(0.25)
    raise AssertionError(f"{key} never acked")
