"""The hub's small parts on their own (services/hub/): sender ordering, background tasks, channel
subscriptions, the control plane's actions on sockets being opened. Pure logic on the event loop,
with the in-process bus."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time

import pytest

from schemas.protocol import room_channel
from services.auth import Identity
from services.bus import BusEvent
from services.bus.memory import MemoryBus
from services.hub import ordering
from services.hub.channels import Subscriptions
from services.hub.control import Control
from services.hub.members import Members
from services.hub.ordering import SenderOrder
from services.hub.tasks import TaskGroup
from services.revocation import NOTHING
from services.revocation.memory import MemoryRevocations
from services.session import Session
from tests.helpers import NoExits, wait_for
from tests.helpers import test_settings as settings_for


@pytest.mark.gen_test(timeout=5)
async def test_sender_order_keeps_both_stages_in_sending_order():
    order = SenderOrder()
    log: list[str] = []

    async def message(name: str, produce_delay: float) -> None:
        turn = order.turn("r", None)
        try:
            await turn.my_stage()
            log.append(f"stage {name}")
            turn.stage_done()
            await asyncio.sleep(produce_delay)  # a Kafka delivery report: later ones may come first
            await turn.my_publish()
            log.append(f"publish {name}")
        finally:
            await turn.finish()

    await asyncio.gather(message("a", 0.05), message("b", 0.0), message("c", 0.01))
    assert log == ["stage a", "stage b", "stage c", "publish a", "publish b", "publish c"]
    assert order.idle()


@pytest.mark.gen_test(timeout=5)
async def test_a_failing_message_still_releases_its_successors():
    order = SenderOrder()

    async def failing() -> None:
        turn = order.turn("r", None)
        try:
            await turn.my_stage()
            raise RuntimeError("ingest failed")
        finally:
            await turn.finish()

    async def next_one() -> str:
        turn = order.turn("r", None)
        try:
            await turn.my_stage()
            turn.stage_done()
            await turn.my_publish()
            return "published"
        finally:
            await turn.finish()

    first = asyncio.ensure_future(failing())
    assert await asyncio.wait_for(next_one(), 1) == "published"
    with pytest.raises(RuntimeError):
        await first


@pytest.mark.gen_test(timeout=5)
async def test_task_group_logs_failures_and_settles(caplog):
    caplog.set_level(logging.ERROR, logger="gateway.hub")
    tasks = TaskGroup()

    async def boom() -> None:
        raise ValueError("x")

    done = asyncio.Event()

    async def fine() -> None:
        done.set()

    tasks.spawn(boom())
    tasks.spawn(fine())
    await tasks.settle(1.0)
    assert done.is_set() and len(tasks) == 0
    assert [r.getMessage() for r in caplog.records] == ["background task failed"]
    sleeper = tasks.spawn(asyncio.sleep(10))
    await tasks.cancel()  # returns once the cancelled work has unwound
    assert sleeper is not None and sleeper.cancelled() and len(tasks) == 0
    late = fine()
    assert tasks.spawn(late) is None and len(tasks) == 0  # after the shutdown nothing starts
    assert inspect.getcoroutinestate(late) == inspect.CORO_CLOSED


@pytest.mark.gen_test(timeout=5)
async def test_subscriptions_subscribe_once_and_drop_only_when_unused():
    bus = MemoryBus("i")
    subs = Subscriptions(bus)
    channel = room_channel("r")
    members: list[str] = []
    await asyncio.gather(subs.ensure(channel, then=lambda: members.append("a")), subs.ensure(channel))
    assert subs.keys == {"room:r"} and subs.get("room:r") == channel and members == ["a"]
    await subs.drop_if_unused(channel, in_use=lambda: True)
    assert subs.keys == {"room:r"}
    await subs.drop_if_unused(channel, in_use=lambda: False)
    assert subs.keys == frozenset() and subs.get("room:r") is None
    assert subs.locks == {}  # counted locks are gone once nobody holds or waits for them


class _Socket:
    """What a Session needs of a socket, recording nothing: these tests read the session's state."""

    def write(self, items: object) -> None:
        return None

    def backed_up(self) -> bool:
        return False

    def close(self, code: int, reason: str) -> None:
        return None


def _control(users: dict[str, set[Session]], ttl: float = 60.0) -> tuple[Control, list[BusEvent]]:
    published: list[BusEvent] = []
    bus = MemoryBus("i1")

    async def publish(channel: str, event: BusEvent) -> int:
        published.append(event)
        return 1

    bus.publish = publish  # type: ignore[method-assign]
    members = Members()
    members.users = users
    return Control(MemoryRevocations(), settings_for(revocation_ttl=ttl), bus, members, NoExits()), published


def _session(user: str, issued_at: float) -> Session:
    return Session(f"c-{user}", Identity(user, time.time() + 3600, None, issued_at), _Socket(), settings_for())


@pytest.mark.gen_test(timeout=5)
async def test_an_action_that_arrives_during_a_handshake_reaches_the_new_socket():
    """Issue: a revocation published between a socket's handshake check and its registration left
    the socket open until exp."""
    users: dict[str, set[Session]] = {}
    control, _ = _control(users)
    handshake_began = time.time()
    revoked_at = time.time() + 0.001
    control.apply(BusEvent(origin="other", action="revoke", user="alice", at=revoked_at))
    late = _session("alice", issued_at=revoked_at - 10)
    users["alice"] = {late}
    control.connected(late, NOTHING, since=handshake_began)
    assert late.closed and late.close_code == 4003

    after = time.time()  # a handshake that began after the action: its load saw the stored record
    newer = _session("bob", issued_at=after)
    control.apply(BusEvent(origin="other", action="disconnect", user="bob", reason="bye"))
    users["bob"] = {newer}
    control.connected(newer, NOTHING, since=time.time() + 1)
    assert not newer.closed


@pytest.mark.gen_test(timeout=5)
async def test_a_removal_heard_during_a_handshake_keeps_the_old_token_out_of_the_room():
    users: dict[str, set[Session]] = {}
    control, published = _control(users)
    began = time.time()
    await control.remove("team", "carol")  # nobody of carol's here yet: stored and published
    assert [e.action for e in published] == ["remove_user"]
    joining = _session("carol", issued_at=began - 5)
    users["carol"] = {joining}
    control.connected(joining, NOTHING, since=began)
    assert control.refuses_room(joining.identity, "team")
    assert not control.refuses_room(joining.identity, "lobby")
    assert not control.refuses_room(Identity("carol", time.time() + 60, None, time.time() + 1), "team")


@pytest.mark.gen_test(timeout=5)
async def test_records_kept_for_local_sockets_lapse_with_revocation_ttl():
    """A socket that outlives REVOCATION_TTL (refreshing its token) is not kept out of a room for ever."""
    users: dict[str, set[Session]] = {}
    control, _ = _control(users, ttl=0.3)
    dave = _session("dave", issued_at=time.time() - 5)
    users["dave"] = {dave}
    await control.remove("team", "dave")
    assert control.refuses_room(dave.identity, "team")
    await wait_for(lambda: not control.refuses_room(dave.identity, "team"), timeout=3, what="the record to lapse")


def test_a_sender_owes_refused_messages_before_new_ones_until_they_come_again(monkeypatch: pytest.MonkeyPatch):
    order = SenderOrder()
    assert not order.waits_for_others("r", "new")
    order.owe("r", "k1")
    order.owe("r", "k2")
    assert order.waits_for_others("r", "new") and order.waits_for_others("r", None)
    assert not order.waits_for_others("other-room", "new")
    assert not order.waits_for_others("r", "k1")  # the oldest owed goes first
    assert order.waits_for_others("r", "k2")  # not before k1 is on its way ahead of it
    order.paid("r", "k1")
    assert order.waits_for_others("r", "new") and not order.waits_for_others("r", "k2")
    order.paid("r", "k2")
    assert not order.waits_for_others("r", "new")
    # A client that gave up on an owed message is forgiven after OWED_FOR without a resend.
    order.owe("r", "k3")
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + ordering.OWED_FOR + 1)
    assert not order.waits_for_others("r", "new")
    assert order.idle()


@pytest.mark.gen_test(timeout=5)
async def test_messages_sent_again_in_order_go_on_behind_each_other():
    """k1 and k2 were refused; sent again, k2 (and a new message behind them) may go on while k1
    is in the queue ahead of them: should k1 be refused again, so are they (the cascade)."""
    order = SenderOrder()
    order.owe("r", "k1")
    order.owe("r", "k2")
    first = order.turn("r", "k1")
    second = order.turn("r", "k2")
    third = order.turn("r", "new")
    assert [t.waits_for_others() for t in (first, second, third)] == [False, False, False]
    first.refused = True
    await first.finish()
    assert await second.my_publish()  # refused ahead: refused too
    await second.finish()
    await third.finish()
    late = order.turn("r", "later")
    assert late.waits_for_others()  # k1 is owed and no longer on its way


def test_what_a_sender_owes_is_bounded_across_rooms():
    """A client that keeps sending new messages during a long outage is refused each of them, and
    each is owed: the keys it can make us hold stop at OWED_MOST, the least recent room first."""
    order = SenderOrder()
    for n in range(ordering.OWED_MOST + 50):
        order.owe(f"room-{n % 3}", f"key-{n}")
    assert 0 < order.owes() <= ordering.OWED_MOST
    for n in range(ordering.OWED_MOST + 5):
        order.owe("only", f"k-{n}")
    assert order.owes() == ordering.OWED_MOST  # the other rooms forgiven first, then the oldest keys
    assert not order.waits_for_others("only", "k-5")  # the oldest kept goes first
    assert order.waits_for_others("only", "k-4")
