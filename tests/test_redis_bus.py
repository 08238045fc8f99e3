"""RedisBus behaviour the memory bus has no counterpart for: the wire format, the unsubscribe
grace, fail-fast while down, reconnect + resubscribe, and the probe that catches a subscription
that died without its socket closing."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from tornado.ioloop import IOLoop

from services.bus import BusEvent
from services.bus.redis import RedisBus
from services.bus.redis_subscriber import BusTimings, SubscriberSocket
from services.bus.wire import decode_event, encode_event
from services.errors import BusError
from services.redis_common import RedisClient, make_client
from services.settings import Settings
from tests.helpers import test_settings as settings_for
from tests.helpers import wait_for
from tests.redis_support import PrivateRedis, command_calls, numsub, redis_overrides, shared_redis_port


class Buses:
    """Started RedisBus instances (and their clients), closed after the test."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started: list[tuple[RedisBus, RedisClient]] = []

    async def start(self, instance_id: str, **kw: Any) -> tuple[RedisBus, list[tuple[str, BusEvent]]]:
        got: list[tuple[str, BusEvent]] = []
        redis_client = make_client(self.settings, instance_id)
        bus = RedisBus(instance_id, self.settings, redis_client, **kw)
        await bus.start(lambda channel, event: got.append((channel, event)))
        self.started.append((bus, redis_client))
        return bus, got

    def close(self, io_loop: IOLoop) -> None:
        for bus, redis_client in self.started:
            io_loop.run_sync(bus.close)
            io_loop.run_sync(redis_client.aclose)


@pytest.fixture
def shared_buses(io_loop: IOLoop) -> Iterator[Buses]:
    buses = Buses(settings_for(**redis_overrides(shared_redis_port())))
    yield buses
    buses.close(io_loop)


@pytest.fixture
def private_buses(io_loop: IOLoop, private_redis: PrivateRedis) -> Iterator[Buses]:
    buses = Buses(settings_for(**redis_overrides(private_redis.port)))
    yield buses
    buses.close(io_loop)


def test_wire_format_round_trips_and_keeps_the_frame_verbatim() -> None:
    frame = b'{"type":"message","payload":{"content":"a\\nb"}}\n\x00'
    event = BusEvent(frame=frame, origin="i1", exclude="c9", action=None, user="u\n1")
    raw = encode_event(event)
    assert raw.endswith(b"\n" + frame)  # the frame is appended as is, never re-encoded
    assert len(raw) - len(frame) < 40  # a small header
    assert decode_event(raw) == event
    assert decode_event(encode_event(BusEvent(origin="i1", action="delete_room"))).frame is None
    for bad in (b"no separator", b'{"v":1}\nframe', b"[2,1,2,3,4]\nframe"):
        with pytest.raises(ValueError):
            decode_event(bad)


@pytest.mark.gen_test(timeout=15)
async def test_published_payload_is_header_then_frame(shared_buses: Buses) -> None:
    prefix = shared_buses.settings.redis_prefix
    raw = aioredis.Redis(port=shared_buses.settings.redis_port)
    pubsub = raw.pubsub()
    await pubsub.subscribe(prefix + "room:wire")
    await pubsub.get_message(timeout=2)  # the subscribe confirmation
    bus, _ = await shared_buses.start("W")
    frame = b'{"type":"presence","payload":{}}'
    await bus.publish("room:wire", BusEvent(frame=frame, origin="W"))
    message = await wait_for(lambda: pubsub.get_message(timeout=0.1), what="the raw message")
    assert message["channel"] == (prefix + "room:wire").encode()
    assert message["data"] == encode_event(BusEvent(frame=frame, origin="W"))
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    await raw.aclose()


@pytest.mark.gen_test(timeout=15)
async def test_unsubscribe_grace_absorbs_churn(private_buses: Buses, private_redis: PrivateRedis) -> None:
    port = private_redis.port
    channel = private_buses.settings.redis_prefix + "room:churn"
    bus, _ = await private_buses.start("G", timings=BusTimings(unsubscribe_grace=0.5))

    def calls(command: str) -> int:
        return command_calls(port, command)

    subscribes = calls("subscribe")
    for _ in range(10):  # a room whose only member keeps reconnecting
        await bus.subscribe("room:churn")
        await bus.unsubscribe("room:churn")
    await bus.subscribe("room:churn")
    assert calls("subscribe") == subscribes + 1
    assert calls("unsubscribe") == 0
    assert numsub(port, channel) == 1

    await bus.unsubscribe("room:churn")
    await wait_for(lambda: numsub(port, channel) == 0, what="UNSUBSCRIBE after the grace")
    assert calls("unsubscribe") == 1
    assert "room:churn" not in bus.subscribed


@pytest.mark.gen_test(timeout=30)
async def test_down_fails_fast_then_reconnects_and_resubscribes(
    private_buses: Buses, private_redis: PrivateRedis
) -> None:
    a, got_a = await private_buses.start("A", timings=BusTimings(reconnect_cap=0.5))
    b, _ = await private_buses.start("B", timings=BusTimings(reconnect_cap=0.5))
    await a.subscribe("room:r")
    await a.subscribe("user:u")

    private_redis.stop()
    await wait_for(lambda: not a.ready() and not b.ready(), what="both buses down")
    started = time.monotonic()
    with pytest.raises(BusError):
        await b.publish("room:r", BusEvent(frame=b"lost", origin="B"))
    with pytest.raises(BusError):
        await a.subscribe("room:new")
    assert time.monotonic() - started < 0.5  # no connect attempt, no timeout: fail fast

    private_redis.start()
    await wait_for(lambda: a.ready() and b.ready(), timeout=10, what="both buses back")
    assert a.subscribed == {"room:r", "user:u"}
    await b.publish("room:r", BusEvent(frame=b"back", origin="B"))
    await b.publish("user:u", BusEvent(frame=b"direct", origin="B"))
    await wait_for(lambda: len(got_a) == 2, what="events after the reconnect")
    assert [e.frame for _, e in got_a] == [b"back", b"direct"]
    assert "room:new" not in a.subscribed  # a failed subscribe leaves nothing behind


@pytest.mark.gen_test(timeout=20)
async def test_silently_dead_subscription_is_detected_and_rebuilt(
    shared_buses: Buses, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.bus")
    a, got_a = await shared_buses.start("S", timings=BusTimings(probe_interval=0.1, probe_timeout=0.5))
    b, _ = await shared_buses.start("T")
    await a.subscribe("room:quiet")
    # Redis drops every subscription of A's socket while the socket itself stays open: nothing
    # arrives any more and nothing reports an error. Only the probe can notice.
    sub = a._sub
    assert isinstance(sub, SubscriberSocket) and sub._conn is not None
    await sub._conn.send_command("UNSUBSCRIBE")
    await b.publish("room:quiet", BusEvent(frame=b"into the void", origin="T"))

    await wait_for(
        lambda: any(r.getMessage() == "bus down, reconnecting" for r in caplog.records),
        what="the probe to declare the subscription dead",
    )
    await wait_for(a.ready, what="the subscription rebuilt")
    events = [r.getMessage() for r in caplog.records if r.name == "gateway.bus"]
    assert events.index("bus probe unanswered") < events.index("bus down, reconnecting")
    assert events.index("bus down, reconnecting") < events.index("bus reconnected")
    await b.publish("room:quiet", BusEvent(frame=b"heard again", origin="T"))
    await wait_for(lambda: any(e.frame == b"heard again" for _, e in got_a), what="delivery after the rebuild")
    assert not any(r.exc_info for r in caplog.records)
