"""One contract for every Bus: the same tests against MemoryBus and RedisBus (real redis-server).

Absence is always checked against a later marker event on the same path, never by waiting a
while: when the marker arrives, anything that was going to arrive before it would have.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from tornado.ioloop import IOLoop

from services.bus import Bus, BusEvent
from services.bus.memory import MemoryBus, MemoryNetwork
from services.bus.redis import RedisBus
from services.bus.redis_subscriber import BusTimings
from services.redis_common import make_client
from tests.helpers import test_settings as settings_for
from tests.helpers import wait_for
from tests.redis_support import backend_overrides


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, BusEvent]] = []

    def __call__(self, channel: str, event: BusEvent) -> None:
        self.events.append((channel, event))

    def frames(self, channel: str | None = None) -> list[bytes | None]:
        return [e.frame for c, e in self.events if channel is None or c == channel]

    async def wait_frame(self, frame: bytes, timeout: float = 5.0) -> None:
        await wait_for(lambda: frame in self.frames(), timeout, what=f"event {frame!r}")


BusFactory = Callable[[str], Awaitable[tuple[Bus, Recorder]]]


@pytest.fixture(params=["memory", "redis", "cluster"])
def make_bus(request: pytest.FixtureRequest, io_loop: IOLoop) -> Iterator[BusFactory]:
    """`await make_bus(instance_id)` -> a started bus of the parametrized kind and what it received."""
    kind = request.param
    network = MemoryNetwork()
    started: list[Bus] = []
    clients: list[Any] = []
    settings = settings_for(**backend_overrides(kind, request)) if kind != "memory" else None

    async def factory(instance_id: str) -> tuple[Bus, Recorder]:
        bus: Bus
        if settings is None:
            bus = MemoryBus(instance_id, network)
        else:
            redis_client = make_client(settings, instance_id)
            clients.append(redis_client)
            bus = RedisBus(instance_id, settings, redis_client, BusTimings(unsubscribe_grace=0.2))
        recorder = Recorder()
        await bus.start(recorder)
        started.append(bus)
        return bus, recorder

    yield factory
    for bus in started:
        io_loop.run_sync(bus.close)
    for redis_client in clients:
        io_loop.run_sync(redis_client.aclose)


def ev(frame: bytes | None, origin: str, **kw: Any) -> BusEvent:
    return BusEvent(frame=frame, origin=origin, **kw)


@pytest.mark.gen_test(timeout=15)
async def test_event_arrives_intact(make_bus: BusFactory) -> None:
    a, got_a = await make_bus("A")
    b, _ = await make_bus("B")
    assert a.ready() and b.ready()
    await a.subscribe("room:r1")
    frame = b'{"type":"message","payload":{"content":"line\\nbreak \xc3\xa9"}}\n\x00\xff'
    await b.publish("room:r1", ev(frame, "B", exclude="conn-1"))
    await b.publish("room:r1", ev(None, "B", action="remove_user", user="u:with:colons\n"))
    await wait_for(lambda: len(got_a.events) == 2, what="two events")
    assert got_a.events[0] == ("room:r1", BusEvent(frame=frame, origin="B", exclude="conn-1"))
    assert got_a.events[1] == ("room:r1", BusEvent(origin="B", action="remove_user", user="u:with:colons\n"))


@pytest.mark.gen_test(timeout=15)
async def test_publisher_does_not_get_its_own_event(make_bus: BusFactory) -> None:
    a, got_a = await make_bus("A")
    b, got_b = await make_bus("B")
    await a.subscribe("room:r")
    await b.subscribe("room:r")
    await a.publish("room:r", ev(b"from-a", "A"))
    await got_b.wait_frame(b"from-a")
    await b.publish("room:r", ev(b"marker", "B"))
    await got_a.wait_frame(b"marker")
    assert got_a.frames() == [b"marker"]
    assert got_b.frames() == [b"from-a"]


@pytest.mark.gen_test(timeout=15)
async def test_only_subscribed_channels_are_delivered(make_bus: BusFactory) -> None:
    a, got_a = await make_bus("A")
    b, _ = await make_bus("B")
    await a.subscribe("room:x")
    await a.subscribe("user:alice")
    await b.publish("room:y", ev(b"y", "B"))
    await b.publish("user:bob", ev(b"bob", "B"))
    await b.publish("user:alice", ev(b"alice", "B"))
    await b.publish("room:x", ev(b"x", "B"))
    await got_a.wait_frame(b"x")
    await got_a.wait_frame(b"alice")
    # (Two channels: on a cluster, two shards and two subscriber sockets, in no order to each other.)
    assert sorted(got_a.events, key=lambda e: e[0]) == [
        ("room:x", BusEvent(frame=b"x", origin="B")),
        ("user:alice", BusEvent(frame=b"alice", origin="B")),
    ]


@pytest.mark.gen_test(timeout=15)
async def test_unsubscribe_stops_delivery_at_once(make_bus: BusFactory) -> None:
    a, got_a = await make_bus("A")
    b, _ = await make_bus("B")
    await a.subscribe("room:gone")
    await a.subscribe("room:stay")
    await b.publish("room:gone", ev(b"before", "B"))
    await got_a.wait_frame(b"before")
    await a.unsubscribe("room:gone")
    await b.publish("room:gone", ev(b"after", "B"))
    await b.publish("room:stay", ev(b"marker", "B"))
    await got_a.wait_frame(b"marker")
    assert got_a.frames() == [b"before", b"marker"]


@pytest.mark.gen_test(timeout=15)
async def test_subscription_is_live_when_subscribe_returns(make_bus: BusFactory) -> None:
    a, got_a = await make_bus("A")
    b, _ = await make_bus("B")
    for i in range(20):
        await a.subscribe(f"room:fresh{i}")
        await b.publish(f"room:fresh{i}", ev(f"f{i}".encode(), "B"))
    await wait_for(lambda: len(got_a.events) == 20, what="20 events")
    assert got_a.frames() == [f"f{i}".encode() for i in range(20)]


@pytest.mark.gen_test(timeout=15)
async def test_resubscribe_after_unsubscribe_delivers(make_bus: BusFactory) -> None:
    """Churn: the last member leaves and a new one joins at once; nothing may be lost."""
    a, got_a = await make_bus("A")
    b, _ = await make_bus("B")
    for _ in range(5):
        await a.subscribe("room:churn")
        await a.unsubscribe("room:churn")
    await a.subscribe("room:churn")
    await b.publish("room:churn", ev(b"after-churn", "B"))
    await got_a.wait_frame(b"after-churn")
    assert got_a.frames() == [b"after-churn"]


@pytest.mark.gen_test(timeout=15)
async def test_one_sender_order_is_kept(make_bus: BusFactory) -> None:
    a, got_a = await make_bus("A")
    b, _ = await make_bus("B")
    await a.subscribe("room:order")
    for i in range(300):
        await b.publish("room:order", ev(str(i).encode(), "B"))
    await wait_for(lambda: len(got_a.events) == 300, what="300 events")
    assert got_a.frames() == [str(i).encode() for i in range(300)]


@pytest.mark.gen_test(timeout=15)
async def test_every_subscribed_instance_receives(make_bus: BusFactory) -> None:
    a, got_a = await make_bus("A")
    b, got_b = await make_bus("B")
    c, _ = await make_bus("C")
    await a.subscribe("room:all")
    await b.subscribe("room:all")
    await c.publish("room:all", ev(b"hello", "C"))
    await got_a.wait_frame(b"hello")
    await got_b.wait_frame(b"hello")
    assert got_a.frames() == got_b.frames() == [b"hello"]


@pytest.mark.gen_test(timeout=15)
async def test_closed_bus_receives_nothing(make_bus: BusFactory) -> None:
    a, got_a = await make_bus("A")
    b, got_b = await make_bus("B")
    c, _ = await make_bus("C")
    await a.subscribe("room:c")
    await b.subscribe("room:c")
    await a.close()
    await c.publish("room:c", ev(b"after-close", "C"))
    await got_b.wait_frame(b"after-close")
    assert got_a.frames() == []


@pytest.mark.gen_test(timeout=15)
async def test_publish_says_how_many_instances_it_reached(make_bus: BusFactory) -> None:
    """What the HTTP transport's forwarding counts on: nobody subscribed is 0 (a POST for a stream
    no instance holds is 404 at once), one subscriber is 1."""
    a, got_a = await make_bus("A")
    b, _ = await make_bus("B")
    assert await b.publish("relay:nobody", ev(b"lost", "B")) == 0
    await a.subscribe("relay:a")
    assert await b.publish("relay:a", ev(b"found", "B")) == 1
    await got_a.wait_frame(b"found")
