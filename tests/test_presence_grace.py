"""PRESENCE_GRACE (docs/protocol.md, "Presence"): a closed socket's user stays in its rooms for the
grace, so a member that comes back meanwhile is not news (no `offline`, no second `online`), and one
that does not is announced offline once it passes. An explicit `leave` and a close that ends the
user's session (4003) are announced at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.hub.departures import Graces
from tests.helpers import Client, RunningGateway, wait_for

T = 20


def status_of(user: str, status: str):
    return lambda f: f["payload"].get("userId") == user and f["payload"].get("status") == status


async def in_room(gw: RunningGateway) -> tuple[Client, Client]:
    """alice and bob in room r, alice told of bob."""
    alice, bob = await gw.client("alice"), await gw.client("bob")
    await alice.join("r")
    await bob.join("r")
    await alice.expect("presence", match=status_of("bob", "online"))
    return alice, bob


@pytest.mark.gen_test(timeout=T)
async def test_a_member_back_within_the_grace_is_not_announced(make_gateway):
    gw = await make_gateway(presence_grace=30.0)
    alice, bob = await in_room(gw)
    bob.close()
    await wait_for(lambda: "bob" not in gw.gateway.hub.users, what="bob's close handled")
    assert len(gw.gateway.hub.departures.graces) == 1
    again = await gw.client("bob")
    state = await again.join("r")
    assert sorted(m["userId"] for m in state["payload"]["members"]) == ["alice", "bob"]
    # Neither offline nor a second online reached alice: the server handles her ping after both.
    await alice.none_before_pong("presence")
    again.send("message", {"roomId": "r", "content": "back"})
    assert (await alice.expect("message"))["payload"]["content"] == "back"


@pytest.mark.gen_test(timeout=T)
async def test_a_member_not_back_is_announced_offline_once_the_grace_passes(make_gateway):
    gw = await make_gateway(presence_grace=1.0)
    alice, bob = await in_room(gw)
    closed_at = time.monotonic()
    bob.close()
    await wait_for(lambda: "bob" not in gw.gateway.hub.users, what="bob's close handled")
    await alice.none_before_pong("presence")  # not at once
    off = await alice.expect("presence", match=status_of("bob", "offline"))
    assert time.monotonic() - closed_at >= 1.0
    assert off["payload"]["roomId"] == "r"
    assert len(gw.gateway.hub.departures.graces) == 0
    state = await alice.join("r")
    assert [m["userId"] for m in state["payload"]["members"]] == ["alice"]


@pytest.mark.gen_test(timeout=T)
async def test_leave_and_a_revoking_close_are_announced_at_once(make_gateway):
    gw = await make_gateway(presence_grace=60.0)
    alice, bob, carol = await gw.client("alice"), await gw.client("bob"), await gw.client("carol")
    for c in (alice, bob, carol):
        await c.join("r")
    bob.send("leave", {"roomId": "r"})
    await alice.expect("presence", match=status_of("bob", "offline"))
    await gw.gateway.hub.control.disconnect("carol")
    await alice.expect("presence", match=status_of("carol", "offline"))
    assert len(gw.gateway.hub.departures.graces) == 0


@pytest.mark.gen_test(timeout=T)
async def test_a_drain_tells_pending_departures_before_the_stores_close(make_gateway):
    gw = await make_gateway(presence_grace=60.0)
    alice, bob = await in_room(gw)
    bob.close()
    await wait_for(lambda: len(gw.gateway.hub.departures.graces) == 1, what="bob's close graced")
    await gw.gateway.hub.settle(2.0)
    assert len(gw.gateway.hub.departures.graces) == 0
    await alice.expect("presence", match=status_of("bob", "offline"))


@pytest.mark.gen_test(timeout=T)
async def test_while_connections_pour_in_a_departure_waits_longer(make_gateway, monkeypatch):
    """A storm's clients may still be in the listen backlog when the grace passes: while the
    instance opens connections faster than STORM_ARRIVALS a second, departures wait (up to
    OFFLINE_GRACE after the close), and are announced once the arrivals slow down."""
    monkeypatch.setattr(Graces, "STORM_ARRIVALS", 5.0)
    gw = await make_gateway(presence_grace=0.3, offline_grace=30.0)
    graces = gw.gateway.hub.departures.graces
    alice, bob = await in_room(gw)
    bob.close()
    await wait_for(lambda: len(graces) == 1, what="bob's close graced")
    closed, arrivals = time.monotonic(), list[Client]()
    while time.monotonic() - closed < 1.5:  # about 20 connections a second, for three graces
        arrivals.append(await gw.client(f"s{len(arrivals)}"))
        await asyncio.sleep(0.05)  # pacing the load, not waiting for a condition
    await alice.none_before_pong("presence")  # the grace passed during the storm: still nobody told
    assert len(graces) == 1
    off = await alice.expect("presence", match=status_of("bob", "offline"), timeout=10)
    assert off["payload"]["roomId"] == "r" and len(graces) == 0
    for c in arrivals:
        c.close()
