"""Presence events on Kafka (docs/kafka.md, "Presence events"), read back from a real broker:
user.online when a user comes online anywhere, user.offline after OFFLINE_GRACE with no socket
anywhere, nothing for a reconnect within the grace or for one of two instances closing, exactly
one record per transition with two instances on Redis, and a survivor's user.offline for the users
of an instance killed with SIGKILL.

Each test has its own one-partition topic, so records arrive in the order they were produced. An
absence is proven with a marker user whose records are produced after the unwanted one would be.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from tornado.ioloop import IOLoop

from schemas.events import EnvelopeSchema, UserOfflinePayload, UserOnlinePayload
from services.online.redis import RedisOnline
from tests.helpers import Client, GatewayProcess, RunningGateway, sample, spawn_server, token
from tests.kafka_support import create_topics, kafka_settings
from tests.redis_support import backend_overrides, redis_overrides, server_args, shared_redis_port, unique_prefix
from tests.redis_support import client as redis_client

GRACE = 1.0  # OFFLINE_GRACE in these tests
Factory = Callable[..., Awaitable[RunningGateway]]
Record = dict[str, Any]


@pytest.fixture
def topic(brokers: str) -> Iterator[str]:
    """A topic of the test's own with one partition, so records arrive in the order produced."""
    name = f"t.{uuid.uuid4().hex[:10]}.presence"
    admin = AdminClient({"bootstrap.servers": brokers})
    create_topics(admin, [name], partitions=1)
    yield name
    admin.delete_topics([name], operation_timeout=5)


class Records:
    """Everything produced to the topic, read from its beginning in a thread."""

    def __init__(self, brokers: str, topic: str) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": brokers, "group.id": f"reader-{uuid.uuid4().hex}", "enable.auto.commit": False}
        )
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self.got: list[Record] = []

    def _poll(self) -> None:
        for msg in self._consumer.consume(100, timeout=0.2):
            if msg.error() is None:
                record = json.loads(msg.value())
                record["key"] = msg.key().decode()
                self.got.append(record)

    async def until(self, what: Callable[[Record], bool], timeout: float = 15.0, start: int = 0) -> Record:
        """The first record from the `start`th on that matches `what`."""
        deadline = time.monotonic() + timeout
        seen = start
        while True:
            for record in self.got[seen:]:
                if what(record):
                    return record
            seen = len(self.got)
            if time.monotonic() > deadline:
                raise AssertionError(f"no such record within {timeout}s; got {self.got!r}")
            await asyncio.to_thread(self._poll)

    def of(self, user: str) -> list[str]:
        return [r["type"] for r in self.got if r["payload"]["userId"] == user]

    def close(self) -> None:
        self._consumer.close()


@pytest.fixture
def records(brokers: str, topic: str) -> Iterator[Records]:
    reader = Records(brokers, topic)
    yield reader
    reader.close()


def kafka(brokers: str, topic: str, **extra: Any) -> dict[str, Any]:
    return kafka_settings(brokers, kafka_topic_presence_events=topic, **{"offline_grace": GRACE, **extra})


def is_(event_type: str, user: str) -> Callable[[Record], bool]:
    return lambda r: r["type"] == event_type and r["payload"]["userId"] == user


def checked(record: Record) -> Record:
    """The envelope of docs/kafka.md, keyed by userId, with the payload its schema promises."""
    EnvelopeSchema().load({k: v for k, v in record.items() if k != "key"})
    schema = UserOfflinePayload if record["type"] == "user.offline" else UserOnlinePayload
    schema().load(record["payload"])
    assert record["key"] == record["payload"]["userId"]
    return record


async def marker(url: str, records: Records) -> None:
    """A user who comes and goes now: once its offline is read, anything due before it was produced."""
    name = f"marker-{uuid.uuid4().hex[:6]}"
    client = await Client.connect(url, token(name))
    await records.until(is_("user.online", name))
    client.close()
    await records.until(is_("user.offline", name))


@pytest.mark.gen_test(timeout=60)
async def test_online_then_offline_after_the_grace(make_gateway: Factory, brokers: str, topic: str, records: Records):
    gw = await make_gateway(**kafka(brokers, topic))
    produced = sample("gateway_presence_events_total", type="user.offline")
    alice = await gw.client("alice")
    online = checked(await records.until(is_("user.online", "alice")))
    alice.close()
    closed = time.time()
    offline = checked(await records.until(is_("user.offline", "alice")))
    at, seen = offline["payload"]["at"], offline["payload"]["lastSeenAt"]
    assert online["payload"]["at"] <= seen < at
    assert datetime.fromisoformat(at).timestamp() >= closed + GRACE - 0.01  # not before the grace ended
    assert sample("gateway_presence_events_total", type="user.offline") > produced


@pytest.mark.gen_test(timeout=60)
async def test_a_reconnect_within_the_grace_is_silent(
    make_gateway: Factory, brokers: str, topic: str, records: Records
):
    gw = await make_gateway(**kafka(brokers, topic, offline_grace=3.0))
    first = await gw.client("alice")
    await records.until(is_("user.online", "alice"))
    first.close()
    await (await gw.client("alice")).join("r")  # back well within 3 s
    await marker(gw.url, records)
    assert records.of("alice") == ["user.online"]


@pytest.fixture(params=["redis", "cluster"])
def redis_pair(
    request: pytest.FixtureRequest, io_loop: IOLoop, make_gateway: Factory, brokers: str, topic: str
) -> tuple[RunningGateway, ...]:
    """Two instances on one Redis, or on the Redis Cluster (each user's state is one key there)."""
    settings = {**backend_overrides(request.param, request, unique_prefix()), **kafka(brokers, topic)}
    return tuple(io_loop.run_sync(lambda i=i: make_gateway(**settings, instance_id=f"gw-{i}")) for i in "ab")


@pytest.mark.gen_test(timeout=60)
async def test_two_instances_one_record_per_transition(redis_pair: tuple[RunningGateway, ...], records: Records):
    a, b = redis_pair
    on_a = await a.client("alice")
    await records.until(is_("user.online", "alice"))
    on_b = await b.client("alice")
    await b.client("bob")
    await records.until(is_("user.online", "bob"))  # after alice's second socket: no second online
    on_a.close()  # alice still has a socket on b: nothing
    await marker(a.url, records)
    assert records.of("alice") == ["user.online"]
    on_b.close()
    offline = checked(await records.until(is_("user.offline", "alice")))
    assert offline["source"].endswith(("/gw-a", "/gw-b"))
    await marker(b.url, records)
    await marker(a.url, records)  # both instances polled past alice's due: still one record
    assert records.of("alice") == ["user.online", "user.offline"]
    start = len(records.got)
    await a.client("alice")  # offline was said: the next socket is online anew
    await records.until(is_("user.online", "alice"), start=start)


@pytest.mark.gen_test(timeout=90)
async def test_a_survivor_says_offline_for_a_killed_instance(
    make_gateway: Factory, brokers: str, topic: str, records: Records, processes: list[GatewayProcess]
):
    port, prefix, ttl = shared_redis_port(), unique_prefix(), 2.0
    doomed = spawn_server(
        *server_args(port, "--presence-ttl", str(ttl), "--offline-grace", str(GRACE), prefix=prefix),
        env={
            "KAFKA_BROKER_URL": brokers,
            "KAFKA_TOPIC_PRESENCE_EVENTS": topic,
            "KAFKA_GROUP_ID": f"test-{uuid.uuid4().hex[:10]}",
        },
    )
    processes.append(doomed)
    survivor = await make_gateway(
        **redis_overrides(port, prefix, presence_ttl=ttl), **kafka(brokers, topic), instance_id="survivor"
    )
    await Client.connect(doomed.url, token("alice"))
    await records.until(is_("user.online", "alice"))
    doomed.proc.send_signal(signal.SIGKILL)
    bound = ttl + 2 * 0.5 + GRACE + 1.0 + 3.0  # PRESENCE_TTL, sweeps, the grace, the 1 s poll, slack
    offline = checked(await records.until(is_("user.offline", "alice"), timeout=bound))
    assert offline["source"].endswith("/survivor")
    await marker(survivor.url, records)
    assert records.of("alice") == ["user.online", "user.offline"]


@pytest.mark.gen_test(timeout=60)
async def test_an_instance_taken_for_dead_writes_its_users_again(
    make_gateway: Factory, brokers: str, topic: str, records: Records
):
    """Late, not dead: a sweeper purged the instance's flags while its heartbeat had lapsed, and
    alice was made offline. At its next heartbeat the instance says again who is connected: alice
    is online again, with a record, and her flag is back."""
    port, prefix = shared_redis_port(), unique_prefix()
    overrides = redis_overrides(port, prefix, presence_ttl=1.5)
    gw = await make_gateway(**overrides, **kafka(brokers, topic, offline_grace=0.0), instance_id="late")
    await gw.client("alice")
    await records.until(is_("user.online", "alice"))
    r = redis_client(port)
    state = f"{prefix}online:{{alice}}"
    online = gw.gateway.online
    assert isinstance(online, RedisOnline)
    await online.purge_instance("late")  # what the sweeper does for an instance it takes for dead
    await records.until(is_("user.offline", "alice"))  # settled by the poller: no grace
    start = len(records.got)
    r.delete(f"{prefix}presence:alive:{{late}}")  # the heartbeat had lapsed
    await records.until(is_("user.online", "alice"), start=start)
    assert r.hexists(state, "i:late") and r.hget(state, "state") == "on" and not r.hexists(state, "due")
    await marker(gw.url, records)
    assert records.of("alice") == ["user.online", "user.offline", "user.online"]
