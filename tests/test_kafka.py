"""Kafka against a real Apache Kafka broker: durable ingest acks, event delivery, outages.

The shared broker comes from RTG_TEST_KAFKA_BROKERS (scripts/test.sh starts it); each test gets
its own topics and consumer group, so tests never see each other's records. The outage tests
stop and start a private broker (scripts/kafka.sh with its own KAFKA_DIR), never the shared one.
Two in-process gateways given one MemoryNetwork and one MemoryDedupe act as two instances that
share Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from tornado.httpclient import AsyncHTTPClient
from tornado.ioloop import IOLoop

from services.bus.memory import MemoryNetwork
from services.dedupe import DedupeStore
from services.dedupe.memory import MemoryDedupe
from services.ids import iso_now, uuid7
from tests.conftest import need_service
from tests.helpers import (
    ROOT,
    SECRET,
    Client,
    RunningGateway,
    free_port,
    readyz,
    refused_status,
    sample,
    spawn_server,
    start_gateway,
    token,
    wait_for,
)
from tests.helpers import (
    test_settings as gateway_settings,
)
from tests.kafka_support import PARTITIONS, Topics, create_topics, kafka_settings

ISO_MS = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"
READY_TIMEOUT = 30.0  # a consumer group join on a fresh single-node broker takes a few seconds


# -- broker plumbing ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def admin(brokers: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": brokers})


@pytest.fixture(scope="module")
def producer(brokers: str) -> Iterator[Producer]:
    """Plays the other services (bots, REST API, persistence) putting events on Kafka."""
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 0})
    yield p
    p.flush(5)


@pytest.fixture
def topics(admin: AdminClient) -> Iterator[Topics]:
    tag = uuid.uuid4().hex[:10]
    names = Topics(*(f"t.{tag}.{kind}" for kind in ("ingest", "messages", "rooms", "users", "presence")))
    create_topics(admin, names.all)
    yield names
    admin.delete_topics(names.all, operation_timeout=5)


def event(event_type: str, payload: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    """An envelope as another service writes it (built here, not with the gateway's own code)."""
    return {
        "eventId": event_id or str(uuid.uuid4()),
        "type": event_type,
        "version": 1,
        "occurredAt": iso_now(),
        "source": "test-suite",
        "payload": payload,
    }


def put(producer: Producer, topic: str, key: str, value: dict[str, Any] | bytes) -> None:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    producer.produce(topic, key=key.encode(), value=raw)
    assert producer.flush(10) == 0, "test producer could not deliver"


def agent_message(room: str, **fields: Any) -> dict[str, Any]:
    msg = {
        "id": uuid7(),
        "roomId": room,
        "senderType": "agent",
        "senderId": "bot-1",
        "content": "beep from the bot",
        "attachments": [],
        "createdAt": iso_now(),
    }
    msg.update(fields)
    return msg


def topic_size(brokers: str, topic: str) -> int:
    """Records ever written to `topic` (sum of the partitions' high watermarks)."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": f"size-{uuid.uuid4().hex}"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def read_topic(brokers: str, topic: str, count: int, timeout: float = 15.0) -> list[Any]:
    """The first `count` records of `topic`, from the beginning."""
    c = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < count and time.monotonic() < deadline:
            for rec in c.consume(count - len(got), 0.5):
                assert rec.error() is None, rec.error()
                got.append(rec)
    finally:
        c.close()
    assert len(got) == count, f"expected {count} records on {topic}, got {len(got)}"
    return got


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Blocking Kafka client calls run off the IOLoop, which the in-process gateways need."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def wait_ready(*gws: RunningGateway, timeout: float = READY_TIMEOUT) -> None:
    for gw in gws:

        async def ready(gw: RunningGateway = gw) -> bool:
            return (await readyz(gw.http))[0] == 200

        await wait_for(ready, timeout, interval=0.1, what=f"{gw.gateway.instance_id} /readyz 200")


@dataclass
class Gateways:
    """In-process gateways started inside a test (with the IOLoop running), stopped after it."""

    started: list[RunningGateway]

    async def start(
        self, network: MemoryNetwork | None = None, dedupe: DedupeStore | None = None, **overrides: Any
    ) -> RunningGateway:
        running = await start_gateway(gateway_settings(**overrides), network, dedupe)
        self.started.append(running)
        return running

    async def stop(self, running: RunningGateway) -> None:
        self.started.remove(running)
        await running.stop()


@pytest.fixture
def gateways(io_loop: IOLoop) -> Iterator[Gateways]:
    g = Gateways([])
    yield g
    for running in reversed(g.started):
        io_loop.run_sync(running.stop, timeout=20)


async def connect(gw: RunningGateway, user: str, *rooms: str) -> Client:
    client = await Client.connect(gw.url, token(user))
    for room in rooms:
        await client.join(room)
    return client


def unplaced(payload: dict[str, Any]) -> dict[str, Any]:
    """An entry's payload without its place in the room's history (which it must have)."""
    rest = dict(payload)
    offset, epoch = rest.pop("offset"), rest.pop("epoch")
    assert isinstance(offset, int) and offset >= 1 and isinstance(epoch, str)
    return rest


def new_room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


# -- durable ingest ----------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_new_group_commits_where_it_starts(brokers, topics, gateways):
    """Readiness says "assigned" only once every partition's start is committed: a session lost before
    any record arrived (a broker outage of about session.timeout.ms) then resumes there, instead of
    resolving "latest" again past what was produced meanwhile (the cause of a flaky outage test)."""
    settings = kafka_settings(brokers, topics)
    gw = await gateways.start(**settings)
    await wait_ready(gw)
    names = (topics.messages, topics.rooms, topics.users)
    partitions = [TopicPartition(name, p) for name in names for p in range(PARTITIONS)]
    reader = Consumer({"bootstrap.servers": brokers, "group.id": settings["kafka_group_id"]})
    try:
        committed = await in_thread(reader.committed, partitions, 10)
    finally:
        reader.close()
    assert [tp.offset >= 0 for tp in committed] == [True] * len(partitions), committed


@pytest.mark.gen_test(timeout=60)
async def test_ingest_record_matches_ack(brokers, topics, gateways):
    gw = await gateways.start(**kafka_settings(brokers, topics))
    await wait_ready(gw)
    status, body = await readyz(gw.http)
    assert status == 200 and body["checks"]["kafka"] == {"producer": "up", "consumer": "assigned"}
    room = new_room()
    alice = await connect(gw, "alice", room)
    bob = await connect(gw, "bob", room)

    sent = {
        "roomId": room,
        "content": "hello over kafka",
        "attachments": [{"url": "https://example.test/a.png", "type": "image/png"}],
        "dedupeKey": "dk-1",
    }
    before_ok = sample("gateway_kafka_produce_seconds_count")
    alice.send("message", sent, request_id="r1")
    ack = (await alice.expect("ack", timeout=10))["payload"]
    broadcast = (await bob.expect("message", timeout=10))["payload"]
    assert ack["dedupeKey"] == "dk-1" and ack["id"] == broadcast["id"]

    (record,) = await in_thread(read_topic, brokers, topics.ingest, 1)
    assert record.key() == room.encode()
    env = json.loads(record.value())
    assert set(env) == {"eventId", "type", "version", "occurredAt", "source", "payload"}
    assert env["type"] == "message.ingest" and env["version"] == 1
    assert env["occurredAt"] == ack["createdAt"] and re.match(ISO_MS, env["occurredAt"])
    assert env["source"] == f"realtime-gateway/{gw.gateway.instance_id}"
    assert env["eventId"] and env["eventId"] != ack["id"]
    assert env["payload"] == {
        "id": ack["id"],
        "roomId": room,
        "senderType": "human",
        "senderId": "alice",
        "content": "hello over kafka",
        "attachments": [{"url": "https://example.test/a.png", "type": "image/png"}],
        "createdAt": ack["createdAt"],
        "dedupeKey": "dk-1",
    }
    assert env["payload"] == unplaced(broadcast)  # what members got is what was made durable, placed in history
    assert sample("gateway_kafka_produce_seconds_count") == before_ok + 1

    # A retry with the same dedupeKey: the same ack, no second record, no second broadcast.
    alice.send("message", sent, request_id="r2")
    again = await alice.expect("ack", timeout=10)
    assert again["requestId"] == "r2" and again["payload"] == ack
    await bob.none_before_pong("message")
    assert await in_thread(topic_size, brokers, topics.ingest) == 1


# -- events from Kafka -------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_message_created_reaches_both_instances_once(brokers, topics, gateways, producer):
    net, dedupe = MemoryNetwork(), MemoryDedupe()
    settings = kafka_settings(brokers, topics)
    gw1 = await gateways.start(net, dedupe, **settings, instance_id="gw1")
    gw2 = await gateways.start(net, dedupe, **settings, instance_id="gw2")
    await wait_ready(gw1, gw2)
    room = new_room()
    alice = await connect(gw1, "alice", room)
    bob = await connect(gw2, "bob", room)
    carol = await connect(gw2, "carol", room)

    msg = agent_message(room, attachments=[{"url": "https://example.test/b.pdf", "name": "b.pdf"}])
    put(producer, topics.messages, room, event("message.created", {**msg, "futureField": {"x": 1}}))
    for client in (alice, bob, carol):
        got = await client.expect("message", timeout=10)
        assert unplaced(got["payload"]) == msg  # unknown fields dropped, everything else as produced
    marker = agent_message(room)  # the same partition (key = roomId): it comes after any second copy
    put(producer, topics.messages, room, event("message.created", marker))
    for client in (alice, bob, carol):
        await client.expect_absent(
            "message",
            until=lambda f: f["type"] == "message" and f["payload"]["id"] == marker["id"],
            timeout=10,
        )


@pytest.mark.gen_test(timeout=60)
async def test_kafka_messages_take_offsets_and_are_recovered(brokers, topics, gateways, producer):
    gw = await gateways.start(**kafka_settings(brokers, topics))
    await wait_ready(gw)
    room = new_room()
    alice, bob = await connect(gw, "alice", room), await connect(gw, "bob", room)
    first = agent_message(room, content="first")
    put(producer, topics.messages, room, event("message.created", first))
    got = await alice.expect("message", timeout=10)
    since = {"offset": got["payload"]["offset"], "epoch": got["payload"]["epoch"]}
    alice.close()
    missed = agent_message(room, content="while away")
    put(producer, topics.messages, room, event("message.created", missed))
    put(producer, topics.messages, room, event("message.deleted", {"id": first["id"], "roomId": room}))
    await bob.expect("message_deleted", timeout=10)  # both are in the room's history now
    back = await Client.connect(gw.url, token("alice"))
    back.send("join", {"roomId": room, "since": since}, request_id="back")
    joined = await back.expect("room_update", match=lambda f: f.get("requestId") == "back")
    assert joined["payload"]["recovered"] is True
    replayed = [await back.expect(kind) for kind in ("message", "message_deleted")]
    assert [(f["type"], f["payload"]["offset"]) for f in replayed] == [
        ("message", since["offset"] + 1),
        ("message_deleted", since["offset"] + 2),
    ]
    assert unplaced(replayed[0]["payload"]) == missed


@pytest.mark.gen_test(timeout=60)
async def test_duplicates_are_not_redelivered(brokers, topics, gateways, producer):
    gw = await gateways.start(**kafka_settings(brokers, topics))
    await wait_ready(gw)
    room = new_room()
    alice = await connect(gw, "alice", room)
    bob = await connect(gw, "bob", room)

    first = agent_message(room)
    created = event("message.created", first)
    put(producer, topics.messages, room, created)
    put(producer, topics.messages, room, created)  # the same record again (at-least-once)
    put(producer, topics.messages, room, event("message.created", first))  # same message, new eventId
    # A client's own message, then its copy coming back from the persistence side.
    alice.send("message", {"roomId": room, "content": "mine"})
    ack = (await alice.expect("ack", timeout=10))["payload"]
    echo = agent_message(room, id=ack["id"], senderType="human", senderId="alice", content="mine")
    put(producer, topics.messages, room, event("message.created", echo))
    updated = event("message.updated", {"id": first["id"], "roomId": room, "content": "edited"})
    put(producer, topics.messages, room, updated)
    put(producer, topics.messages, room, updated)
    last = agent_message(room, content="the end")
    put(producer, topics.messages, room, event("message.created", last))

    # One partition (key = roomId) keeps the records' order: once `last` is here, the rest was
    # handled. (Alice's own message is broadcast on its ack, unordered with the Kafka events.)
    seen: list[str] = []
    while last["id"] not in seen:
        seen.append((await bob.expect("message", timeout=10))["payload"]["id"])
    assert sorted(seen) == sorted([first["id"], ack["id"], last["id"]])
    edits = []
    while True:
        try:
            edits.append(await bob.expect("message_updated", timeout=0.3))
        except AssertionError:
            break
    assert [unplaced(e["payload"]) for e in edits] == [{"id": first["id"], "roomId": room, "content": "edited"}]


@pytest.mark.gen_test(timeout=60)
async def test_invalid_records_are_skipped(brokers, topics, gateways, producer, caplog):
    caplog.set_level(logging.DEBUG, logger="gateway.kafka")
    gw = await gateways.start(**kafka_settings(brokers, topics))
    await wait_ready(gw)
    room = new_room()
    bob = await connect(gw, "bob", room)
    before = sample("gateway_kafka_invalid_total")

    secret = "s3cret-content"
    bad_payload = agent_message("not a room!", content=secret)
    for raw in (
        f"not json {secret}".encode(),
        json.dumps([secret]).encode(),
        json.dumps({"type": "message.created", "payload": {"content": secret}}).encode(),  # no envelope
        json.dumps(event("message.exploded", {"roomId": room, "content": secret})).encode(),
        json.dumps(event("message.created", bad_payload)).encode(),
        json.dumps({**event("message.created", agent_message(room, content=secret)), "version": 2}).encode(),
    ):
        put(producer, topics.messages, room, raw)
    put(producer, topics.rooms, room, b"\xff\xfe garbage")
    valid = agent_message(room, content="still alive")
    put(producer, topics.messages, room, event("message.created", valid))

    got = await bob.expect("message", timeout=10)
    assert unplaced(got["payload"]) == valid
    await wait_for(lambda: sample("gateway_kafka_invalid_total") == before + 7, what="7 invalid records")
    skipped = [r for r in caplog.records if r.getMessage() == "kafka record skipped"]
    assert len(skipped) == 7
    assert {r.__dict__["reason"].split(" ")[0] for r in skipped} >= {"not", "envelope", "unknown"}
    for r in caplog.records:  # content never reaches a log line, not even in extras
        assert secret not in r.getMessage() and secret not in json.dumps(r.__dict__, default=str)


@pytest.mark.gen_test(timeout=60)
async def test_update_delete_and_room_updated_events(brokers, topics, gateways, producer):
    gw = await gateways.start(**kafka_settings(brokers, topics))
    await wait_ready(gw)
    room = new_room()
    bob = await connect(gw, "bob", room)
    msg_id = uuid7()
    put(
        producer,
        topics.messages,
        room,
        event(
            "message.updated",
            {
                "id": msg_id,
                "roomId": room,
                "content": "fixed typo",
                "attachments": [{"url": "https://example.test/c.png"}],
                "updatedAt": "2026-01-02T03:04:05.678Z",
                "editor": "ignored",
            },
        ),
    )
    # A null optional field is left out of the frame (docs/kafka.md), not a reason to skip the record.
    put(producer, topics.messages, room, event("message.deleted", {"id": msg_id, "roomId": room, "deletedAt": None}))
    put(producer, topics.rooms, room, event("room.updated", {"roomId": room, "name": "Lobby", "topic": None}))

    upd = await bob.expect("message_updated", timeout=10)
    assert unplaced(upd["payload"]) == {
        "id": msg_id,
        "roomId": room,
        "content": "fixed typo",
        "attachments": [{"url": "https://example.test/c.png"}],
        "updatedAt": "2026-01-02T03:04:05.678Z",
    }
    deleted = await bob.expect("message_deleted", timeout=10)
    assert unplaced(deleted["payload"]) == {"id": msg_id, "roomId": room}
    changed = await bob.expect("room_update", timeout=10, match=lambda f: f["payload"]["action"] == "updated")
    assert changed["payload"] == {
        "roomId": room,
        "action": "updated",
        "changes": {"name": "Lobby", "topic": None},
    }


@pytest.mark.gen_test(timeout=60)
async def test_member_removed_leaves_room_but_keeps_socket(brokers, topics, gateways, producer):
    net, dedupe = MemoryNetwork(), MemoryDedupe()
    settings = kafka_settings(brokers, topics)
    gw1 = await gateways.start(net, dedupe, **settings, instance_id="gw1")
    gw2 = await gateways.start(net, dedupe, **settings, instance_id="gw2")
    await wait_ready(gw1, gw2)
    room, other = new_room(), new_room()
    alice1 = await connect(gw1, "alice", room, other)
    alice2 = await connect(gw2, "alice", room)
    bob = await connect(gw1, "bob", room)
    dave = await connect(gw2, "dave", room)

    put(producer, topics.rooms, room, event("room.member_removed", {"roomId": room, "userId": "alice"}))
    for client in (alice1, alice2):
        removed = await client.expect("room_update", timeout=10, match=lambda f: f["payload"]["action"] == "removed")
        assert removed["payload"] == {"roomId": room, "action": "removed"}
    bob.send("message", {"roomId": room, "content": "alice is gone"})  # a marker for bob and dave
    await dave.expect_absent("room_update", until=lambda f: f["type"] == "message", timeout=10)
    await bob.expect_absent("room_update", until=lambda f: f["type"] == "ack", timeout=10)
    for client in (alice1, alice2):
        await client.none_before_pong("message")  # and the socket stayed open
    alice2.send("message", {"roomId": room, "content": "let me back"})
    assert (await alice2.expect_error("not_in_room"))["payload"]["roomId"] == room
    # Membership elsewhere is untouched.
    bob.send("join", {"roomId": other})
    await bob.expect("presence_state", match=lambda f: f["payload"]["roomId"] == other)
    bob.send("message", {"roomId": other, "content": "still here?"})
    assert (await alice1.expect("message", timeout=10))["payload"]["roomId"] == other


@pytest.mark.gen_test(timeout=60)
async def test_user_events_disconnect_and_revoke(brokers, topics, gateways, producer):
    """user.disconnected and user.tokens_revoked from KAFKA_TOPIC_USER_EVENTS close the user's
    sockets with 4003; after a revocation older tokens are refused (401), newer ones welcome; a
    member_removed keeps older tokens out of the room."""
    gw = await gateways.start(**kafka_settings(brokers, topics))
    await wait_ready(gw)
    room = new_room()
    alice, bob = await connect(gw, "alice", room), await connect(gw, "bob", room)
    put(producer, topics.users, "alice", event("user.disconnected", {"userId": "alice", "reason": "logged out"}))
    assert await alice.wait_closed(timeout=10) == 4003 and alice.conn.close_reason == "logged out"

    old = token("carol", iat=int(time.time()) - 30)
    carol = await Client.connect(gw.url, old)
    revoked_at = datetime.now(UTC).isoformat()
    put(producer, topics.users, "carol", event("user.tokens_revoked", {"userId": "carol", "issuedBefore": revoked_at}))
    assert await carol.wait_closed(timeout=10) == 4003
    assert await refused_status(f"{gw.url}?token={old}") == (401, {"error": "token revoked"})
    await Client.connect(gw.url, token("carol", iat=int(time.time()) + 2))

    dave_old = token("dave", iat=int(time.time()) - 30)
    dave = await Client.connect(gw.url, dave_old)
    await dave.join(room)
    put(producer, topics.rooms, room, event("room.member_removed", {"roomId": room, "userId": "dave"}))
    await dave.expect("room_update", timeout=10, match=lambda f: f["payload"]["action"] == "removed")
    dave.send("join", {"roomId": room})
    await dave.expect_error("forbidden_room")
    again = await Client.connect(gw.url, dave_old)
    again.send("join", {"roomId": room})
    await again.expect_error("forbidden_room")
    await (await Client.connect(gw.url, token("dave", iat=int(time.time()) + 2))).join(room)
    bob.send("ping", request_id="still")
    await bob.expect("pong")


@pytest.mark.gen_test(timeout=60)
async def test_room_deleted_removes_all_members(brokers, topics, gateways, producer):
    net, dedupe = MemoryNetwork(), MemoryDedupe()
    settings = kafka_settings(brokers, topics)
    gw1 = await gateways.start(net, dedupe, **settings, instance_id="gw1")
    gw2 = await gateways.start(net, dedupe, **settings, instance_id="gw2")
    await wait_ready(gw1, gw2)
    room = new_room()
    alice = await connect(gw1, "alice", room)
    bob = await connect(gw2, "bob", room)

    put(producer, topics.rooms, room, event("room.deleted", {"roomId": room}))
    for client in (alice, bob):
        frame = await client.expect("room_update", timeout=10, match=lambda f: f["payload"]["action"] == "deleted")
        assert frame["payload"] == {"roomId": room, "action": "deleted"}
    await wait_for(lambda: room not in gw1.gateway.hub.rooms and room not in gw2.gateway.hub.rooms)
    alice.send("message", {"roomId": room, "content": "anyone?"})
    await alice.expect_error("not_in_room")
    bob.send("ping", {})
    await bob.expect("pong")


# -- unreachable broker (no broker needed) -----------------------------------------------------


def test_unreachable_broker_process_keeps_serving():
    """A gateway whose broker is down starts, is unready, fails sends within the bound, logs the
    outage once without tracebacks or librdkafka noise, and stops cleanly."""
    dead = f"127.0.0.1:{free_port()}"
    gp = spawn_server(
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        env={
            "JWT_DEV": SECRET,
            "KAFKA_BROKER_URL": dead,
            "KAFKA_MESSAGE_TIMEOUT": "1.5",
            "DRAIN_DELAY": "0",
            "DRAIN_WINDOW": "0",
        },
    )
    try:

        async def scenario() -> float:
            async def unready_down() -> bool:
                status, body = await readyz(gp.http)
                return status == 503 and body["checks"]["kafka"]["producer"] == "down"

            await wait_for(unready_down, 10, interval=0.1, what="/readyz 503 with producer down")
            health = await AsyncHTTPClient().fetch(f"{gp.http}/healthz", raise_error=False)
            assert health.code == 200
            alice = await Client.connect(gp.url, token("alice"))
            bob = await Client.connect(gp.url, token("bob"))
            await alice.join("lobby")
            await bob.join("lobby")
            started = time.monotonic()
            alice.send("message", {"roomId": "lobby", "content": "lost words", "dedupeKey": "k1"})
            err = await alice.expect_error("ingest_failed", timeout=10)
            elapsed = time.monotonic() - started
            assert err["payload"]["dedupeKey"] == "k1" and err["payload"]["roomId"] == "lobby"
            await bob.none_before_pong("message")
            alice.close()
            bob.close()
            return elapsed

        elapsed = asyncio.run(asyncio.wait_for(scenario(), 30))
        assert elapsed < 1.5 + 2.5, f"ingest_failed took {elapsed:.1f}s"
        gp.signal(signal.SIGTERM)
        assert gp.wait(20) == 0
    finally:
        gp.kill()
    lines = [json.loads(line) for line in gp.lines if line.startswith("{")]
    raw = [line for line in gp.lines if not line.startswith("{")]
    assert not raw, f"non-JSON output (librdkafka noise?): {raw[:5]}"
    assert not [entry for entry in lines if "exc" in entry], "traceback logged for an expected outage"
    downs = [e for e in lines if e["event"] == "kafka producer down"]
    assert len(downs) == 1, downs
    flushed = [e for e in lines if e["event"] == "kafka producer flushed and stopped"]
    assert len(flushed) == 1 and flushed[0]["undelivered"] == 0  # SIGTERM flushed the producer
    assert "lost words" not in "".join(gp.lines)


@pytest.mark.gen_test(timeout=30)
async def test_stop_flushes_with_a_bound_and_reports_undelivered(gateways, caplog):
    caplog.set_level(logging.INFO, logger="gateway.kafka")
    dead = f"127.0.0.1:{free_port()}"
    gw = await gateways.start(**kafka_settings(dead, kafka_message_timeout=30.0, kafka_flush_timeout=0.5))
    alice = await connect(gw, "alice", "lobby")
    alice.send("message", {"roomId": "lobby", "content": "pending"})
    producer = gw.gateway.producer
    assert producer is not None
    # alice's user.online (presence events) and the message
    await wait_for(lambda: producer.in_flight() == 2, what="the records to be queued")
    gateways.started.remove(gw)
    for server in gw.servers:
        server.stop()
    started = time.monotonic()
    await gw.gateway.stop()
    assert time.monotonic() - started < 0.5 + 1.5, "flush not bounded by KAFKA_FLUSH_TIMEOUT"
    reports = [r for r in caplog.records if r.getMessage() == "kafka producer stopped with undelivered records"]
    assert len(reports) == 1 and reports[0].__dict__["undelivered"] == 2
    # The sender is not left hanging: the dropped record fails its ingest.
    await alice.expect_error("ingest_failed", timeout=2)
    alice.close()


# -- broker outage (private broker) ------------------------------------------------------------


@dataclass
class PrivateBroker:
    script: str
    run_dir: str

    def _run(self, command: str) -> None:
        env = {**os.environ, "KAFKA_DIR": self.run_dir}
        proc = subprocess.run([self.script, command], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"kafka.sh {command} failed: {proc.stdout}{proc.stderr}"

    def start(self) -> None:
        self._run("start")

    def stop(self) -> None:
        self._run("stop")

    @property
    def address(self) -> str:
        with open(os.path.join(self.run_dir, "brokers")) as f:
            return f.read().strip()


@pytest.fixture(scope="module")
def private_broker(brokers: str) -> Iterator[PrivateBroker]:
    """A broker of this module's own, to stop and start; scripts/kafka.sh keeps its port between a
    stop and the next start. Its folder is made anew for each run: ports remembered from an earlier
    run lie in the ephemeral range, where a client socket may hold one by now (the broker then
    exits at start)."""
    script = os.environ.get("RTG_KAFKA_SCRIPT") or os.path.join(ROOT, "scripts", "kafka.sh")
    if not os.path.exists(script):
        need_service("RTG_KAFKA_SCRIPT", "scripts/kafka.sh")
    run_dir = os.path.join(ROOT, ".cache", "kafka", "test-outage")
    shutil.rmtree(run_dir, ignore_errors=True)
    broker = PrivateBroker(script, run_dir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def broker_state(gw: RunningGateway) -> tuple[int, str]:
    status, body = await readyz(gw.http)
    return status, body["checks"]["kafka"]["producer"]


async def roundtrip(sender: Client, receiver: Client, room: str, key: str, timeout: float = 15) -> str:
    """A message that must be acked and broadcast; returns its id."""
    sender.send("message", {"roomId": room, "content": "are we back?", "dedupeKey": key})
    ack = await sender.expect("ack", timeout=timeout)
    got = await receiver.expect("message", timeout=timeout)
    assert got["payload"]["id"] == ack["payload"]["id"]
    return str(ack["payload"]["id"])


@pytest.mark.gen_test(timeout=90)
async def test_broker_down_at_start_then_back(private_broker, gateways):
    await in_thread(private_broker.stop)
    settings = kafka_settings(private_broker.address, kafka_message_timeout=2.0)
    gw = await gateways.start(**settings)  # starts although Kafka is down
    await wait_for(async_eq(lambda: broker_state(gw), (503, "down")), 10, interval=0.1, what="503 with producer down")
    room = new_room()
    alice = await connect(gw, "alice", room)
    bob = await connect(gw, "bob", room)
    await fails_then_recovers(gw, private_broker, room, alice, bob, "retry-me")


@pytest.mark.gen_test(timeout=90)
async def test_broker_outage_then_recovery(private_broker, gateways):
    await in_thread(private_broker.start)  # a no-op unless an earlier test left it stopped
    settings = kafka_settings(private_broker.address, kafka_message_timeout=2.0)
    gw = await gateways.start(**settings)
    await wait_ready(gw)
    # gateway_kafka_up says what /readyz says (read at each scrape; this gateway started last).
    assert [sample("gateway_kafka_up", role=role) for role in ("producer", "consumer")] == [1.0, 1.0]
    room = new_room()
    alice = await connect(gw, "alice", room)
    bob = await connect(gw, "bob", room)
    await roundtrip(alice, bob, room, "before")

    await in_thread(private_broker.stop)
    await wait_for(async_eq(lambda: broker_state(gw), (503, "down")), 15, interval=0.1, what="503 when down")
    assert sample("gateway_kafka_up", role="producer") == 0.0
    await fails_then_recovers(gw, private_broker, room, alice, bob, "during")


async def fails_then_recovers(gw, broker, room: str, alice: Client, bob: Client, key: str) -> None:
    """With the broker down: ingest_failed within the 2 s timeout (+ grace), nothing broadcast.
    Broker back: the same dedupeKey is processed anew (acked and broadcast), and events flow again."""
    started = time.monotonic()
    alice.send("message", {"roomId": room, "content": "into the void", "dedupeKey": key})
    err = await alice.expect_error("ingest_failed", timeout=10)
    assert time.monotonic() - started < 2.0 + 2.5
    assert err["payload"]["dedupeKey"] == key
    await bob.none_before_pong("message")

    await in_thread(broker.start)
    await wait_ready(gw)
    await roundtrip(alice, bob, room, key)
    await consumes_again(gw, broker.address, room, bob)


def async_eq(get: Callable[[], Awaitable[Any]], want: Any) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(await get() == want)

    return check


async def consumes_again(gw: RunningGateway, brokers: str, room: str, member: Client) -> None:
    """Events produced now reach the room (the consumer came back by itself)."""
    p = Producer({"bootstrap.servers": brokers})
    msg = agent_message(room, content="welcome back")
    await in_thread(put, p, gw.settings.kafka_topic_message_events, room, event("message.created", msg))
    got = await member.expect("message", timeout=20, match=lambda f: f["payload"]["id"] == msg["id"])
    assert unplaced(got["payload"]) == msg


@pytest.mark.gen_test(timeout=60)
async def test_the_publish_hook_decides_before_the_ingest(brokers, topics, gateways):
    """docs/hooks.md, "publish": a rejected message is neither delivered nor ingested; a rewritten
    one is ingested as the backend rewrote it."""
    from tests.hook_support import HookBackend

    backend = await HookBackend.start()
    try:
        backend.answers["publish"] = lambda body: (
            (200, {"allow": False, "reason": "no"})
            if "reject" in body["message"]["content"]
            else (200, {"allow": True, "content": body["message"]["content"].upper()})
        )
        gw = await gateways.start(**kafka_settings(brokers, topics), publish_hook_url=backend.url("publish"))
        await wait_ready(gw)
        room = new_room()
        alice = await connect(gw, "alice", room)
        alice.send("message", {"roomId": room, "content": "reject me", "dedupeKey": "a"}, request_id="r1")
        assert (await alice.reply_to("r1", timeout=10))["payload"]["code"] == "rejected"
        alice.send("message", {"roomId": room, "content": "shout me", "dedupeKey": "b"}, request_id="r2")
        assert (await alice.reply_to("r2", timeout=10))["type"] == "ack"
        (record,) = await in_thread(read_topic, brokers, topics.ingest, 1)
        payload = json.loads(record.value())["payload"]
        assert (payload["content"], payload["dedupeKey"]) == ("SHOUT ME", "b")  # the only record: "a" never went
        alice.close()
    finally:
        await backend.stop()
