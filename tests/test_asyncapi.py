"""docs/asyncapi.yaml is the protocol as spoken: generated from the schemas and up to date, valid for
the official AsyncAPI parser, complete (every frame type, event type, error code and close code),
and matched by the frames a real gateway sends (and, with Kafka, by the records it produces)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError

from docgen.asyncapi import render
from schemas import events
from schemas.client import MessageSchema
from schemas.protocol import CLIENT_TYPES, CLOSE_CODES, ERROR_CODES, SERVER_TYPES
from services.settings import Settings
from tests.conftest import unavailable
from tests.helpers import DEFAULT_TIMEOUT, ROOT, Client, readyz, token, wait_for

DOC = os.path.join(ROOT, "docs", "asyncapi.yaml")
CHECKER = os.path.join(ROOT, "scripts", "asyncapi")
REGENERATE = "python -m docgen.asyncapi > docs/asyncapi.yaml"
EVENT_TYPES = sorted(
    v for k, v in vars(events).items() if k.isupper() and isinstance(v, str) and re.fullmatch(r"[a-z_]+\.[a-z_]+", v)
)


def committed() -> str:
    with open(DOC, encoding="utf-8") as fh:
        return fh.read()


def load() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(committed())
    return doc


def payload_schema(doc: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    """The named schema a message's payload refers to (every frame and envelope has one)."""
    ref = message["payload"]["$ref"]
    assert ref.startswith("#/components/schemas/"), ref
    schema: dict[str, Any] = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


def messages_by_type(doc: dict[str, Any], prefix: str) -> dict[str, dict[str, Any]]:
    """`type` const -> message, for the messages whose key starts with `prefix`; a type twice fails."""
    found = [
        (payload_schema(doc, m)["properties"]["type"]["const"], m)
        for key, m in doc["components"]["messages"].items()
        if key.startswith(prefix)
    ]
    twice = [t for t, n in Counter(t for t, _ in found).items() if n > 1]
    assert not twice, f"types documented twice: {twice}"
    return dict(found)


def validator(doc: dict[str, Any], message: dict[str, Any]) -> Draft7Validator:
    """The message's payload schema; the document's components travel with it, so its $refs resolve."""
    Draft7Validator.check_schema(message["payload"])
    return Draft7Validator({**message["payload"], "components": doc["components"]})


def node_checker() -> list[str]:
    """The command that runs scripts/asyncapi/validate.mjs; skipped when it is not installed, failed
    when RTG_REQUIRE_SERVICES=1."""
    node = shutil.which("node")
    installed = os.path.isdir(os.path.join(CHECKER, "node_modules", "@asyncapi", "parser"))
    if node is None or not installed:
        what = "node" if node is None else "the AsyncAPI parser (scripts/asyncapi/node_modules)"
        unavailable(f"{what} not available; `npm ci` in scripts/asyncapi installs it")
    return [node, os.path.join(CHECKER, "validate.mjs")]


# -- (a) up to date, (b) valid ---------------------------------------------------------------------


def test_the_document_is_generated_from_the_schemas() -> None:
    assert committed() == render(), f"docs/asyncapi.yaml is out of date: {REGENERATE}"


def test_the_official_parser_accepts_the_document_without_warnings() -> None:
    run = subprocess.run([*node_checker(), DOC], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "valid AsyncAPI 3.0.0: 0 errors, 0 warnings" in run.stdout, run.stdout


def test_the_parser_check_fails_on_a_broken_document(tmp_path) -> None:
    doc = load()
    # A reference to a message that does not exist, and a binding field that does not exist.
    doc["operations"]["sendPong"]["messages"].append({"$ref": "#/channels/gateway/messages/server.nothing"})
    doc["channels"]["gateway"]["bindings"]["ws"]["bogus"] = True
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    run = subprocess.run(
        [*node_checker(), str(broken)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "INVALID" in run.stdout and "server.nothing" in run.stdout and "bogus" in run.stdout, run.stdout


# -- (c) complete ----------------------------------------------------------------------------------


def test_every_frame_type_is_one_message_on_the_websocket_channel() -> None:
    doc = load()
    client = messages_by_type(doc, "client.")
    server = messages_by_type(doc, "server.")
    assert sorted(client) == sorted(CLIENT_TYPES)
    assert sorted(server) == sorted(SERVER_TYPES)
    channel = doc["channels"]["gateway"]
    assert channel["address"] == "/" and "`/ws`" in channel["description"]
    listed = [ref["$ref"].rsplit("/", 1)[1] for ref in channel["messages"].values()]
    assert sorted(listed) == sorted([f"client.{t}" for t in CLIENT_TYPES] + [f"server.{t}" for t in SERVER_TYPES])
    # The gateway receives each client frame in exactly one operation and sends each server frame in one
    # (on the WebSocket channel; the HTTP transport's channels have theirs, below).
    used: Counter[tuple[str, str]] = Counter()
    for op in doc["operations"].values():
        if op["channel"]["$ref"] != "#/channels/gateway":
            continue
        for ref in op["messages"]:
            used[(op["action"], ref["$ref"].rsplit("/", 1)[1])] += 1
        # The parser does not check this: a reply's messages are its channel's.
        if "reply" in op:
            reply_channel = op["reply"]["channel"]["$ref"]
            for ref in op["reply"]["messages"]:
                assert ref["$ref"].startswith(reply_channel + "/messages/"), (op, ref)
    for t in CLIENT_TYPES:
        assert used[("receive", f"client.{t}")] == 1 and used[("send", f"client.{t}")] == 0, t
    for t in SERVER_TYPES:
        assert used[("send", f"server.{t}")] == 1 and used[("receive", f"server.{t}")] == 0, t
    # Request/reply pairs, correlated on the requestId.
    replies = {
        op["messages"][0]["$ref"].rsplit(".", 1)[1]: [r["$ref"].rsplit(".", 1)[1] for r in op["reply"]["messages"]]
        for op in doc["operations"].values()
        if "reply" in op
    }
    assert replies["join"] == ["room_update", "error"]
    assert replies["message"] == ["ack", "error"]
    assert replies["history"] == ["history", "error"]
    assert replies["presence_query"] == ["presence_state", "error"]
    assert replies["refresh"] == ["refreshed", "error"]
    assert replies["ping"] == ["pong", "error"]
    location = doc["components"]["correlationIds"]["requestId"]["location"]
    assert location == "$message.payload#/requestId"
    correlated = {"$ref": "#/components/correlationIds/requestId"}
    for t in CLIENT_TYPES:
        assert client[t]["correlationId"] == correlated, t
    for t in {r for pair in replies.values() for r in pair}:
        assert server[t]["correlationId"] == correlated, t


def test_every_event_type_is_one_message_on_its_topic() -> None:
    doc = load()
    assert len(EVENT_TYPES) == 11  # the constants of schemas/events.py
    documented = messages_by_type(doc, "event.")
    assert sorted(documented) == EVENT_TYPES
    defaults = Settings()
    topics = {
        defaults.kafka_topic_ingest: ("send", ["message.ingest"]),
        defaults.kafka_topic_message_events: ("receive", ["message.created", "message.updated", "message.deleted"]),
        defaults.kafka_topic_room_events: ("receive", ["room.updated", "room.deleted", "room.member_removed"]),
        defaults.kafka_topic_user_events: ("receive", ["user.disconnected", "user.tokens_revoked"]),
        defaults.kafka_topic_presence_events: ("send", ["user.online", "user.offline"]),
    }
    kafka_channels = {key: ch for key, ch in doc["channels"].items() if ch["servers"] == [{"$ref": "#/servers/kafka"}]}
    assert sorted(ch["address"] for ch in kafka_channels.values()) == sorted(topics)
    seen: Counter[str] = Counter()
    for key, channel in kafka_channels.items():
        action, types = topics[channel["address"]]
        listed = [ref["$ref"].rsplit("/", 1)[1] for ref in channel["messages"].values()]
        assert listed == [f"event.{t}" for t in types]
        seen.update(types)
        ops = [op for op in doc["operations"].values() if op["channel"] == {"$ref": f"#/channels/{key}"}]
        assert sorted(op["messages"][0]["$ref"].rsplit("/", 1)[1] for op in ops) == sorted(listed)
        assert {op["action"] for op in ops} == {action}
    assert all(n == 1 for n in seen.values()) and sorted(seen) == EVENT_TYPES
    for t, message in documented.items():
        envelope = payload_schema(doc, message)
        assert envelope["properties"]["version"] == {"type": "integer", "const": 1}
        assert sorted(envelope["required"]) == ["eventId", "occurredAt", "payload", "type", "version"]
        key = "userId" if t.startswith("user.") else "roomId"
        assert message["bindings"]["kafka"]["key"]["description"] == f"The payload's {key}, UTF-8.", t
    assert doc["servers"]["kafka"]["protocol"] == "kafka"


def test_every_error_code_and_close_code_is_documented() -> None:
    doc = load()
    frame = payload_schema(doc, doc["components"]["messages"]["server.error"])
    error = doc["components"]["schemas"][frame["properties"]["payload"]["$ref"].rsplit("/", 1)[1]]
    assert error["properties"]["code"]["enum"] == list(ERROR_CODES)
    channel = doc["channels"]["gateway"]
    expected = [{"code": c.code, "reason": c.reason, "retry": c.retry.value} for c in CLOSE_CODES.values()]
    assert channel["x-close-codes"] == sorted(expected, key=lambda c: c["code"])
    for c in CLOSE_CODES.values():
        assert f"| {c.code} | {c.reason} | {c.retry.value} |" in channel["description"], c
        assert f"**{c.retry.value}**:" in channel["description"]


def test_the_content_rule_the_converter_cannot_see_is_the_code_s() -> None:
    doc = load()
    check = validator(doc, doc["components"]["messages"]["client.message"])
    most = Settings().max_content
    schema = MessageSchema(max_content=most)
    for content, ok in (("", False), ("é" * most, True), ("é" * (most + 1), False)):
        frame: dict[str, Any] = {"type": "message", "payload": {"roomId": "r", "content": content}}
        assert check.is_valid(frame) == ok, len(content)
        assert (schema.validate(frame["payload"]) == {}) == ok, len(content)


# -- (d) real frames -------------------------------------------------------------------------------


async def collect(client: Client, got: list[dict[str, Any]], done: Callable[[], bool], what: str) -> None:
    """Read `client`'s frames into `got` until `done()`."""
    deadline = time.monotonic() + DEFAULT_TIMEOUT
    while not done():
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            frame = await client.recv(left)
        except TimeoutError:
            raise AssertionError(f"no {what} within {DEFAULT_TIMEOUT}s; got {[f['type'] for f in got]}") from None
        assert frame is not None, f"closed ({client.close_code}) before {what}"
        got.append(frame)


def answered(got: list[dict[str, Any]], frame_type: str, request_id: str) -> Callable[[], bool]:
    return lambda: any(f["type"] == frame_type and f.get("requestId") == request_id for f in got)


def check_frames(doc: dict[str, Any], frames: list[dict[str, Any]], prefix: str) -> None:
    """Each frame matches the payload of its type's message, and still does with a field a later
    version might add (the document promises room to grow); one whose payload is not an object does not."""
    by_type = messages_by_type(doc, prefix)
    for frame in frames:
        check = validator(doc, by_type[frame["type"]])
        errors = [e.message for e in check.iter_errors(frame)]
        assert not errors, (frame, errors)
        check.validate({**frame, "payload": {**frame["payload"], "addedLater": 1}})
        with pytest.raises(ValidationError):
            check.validate({**frame, "payload": "not an object"})


@pytest.mark.gen_test(timeout=30)
async def test_the_frames_of_a_real_gateway_match_the_document(make_gateway) -> None:
    gw = await make_gateway()
    doc = load()
    room = f"room-{uuid.uuid4().hex[:8]}"
    sent: list[dict[str, Any]] = []
    alice_got: list[dict[str, Any]] = []
    bob_got: list[dict[str, Any]] = []

    def send(c: Client, frame_type: str, payload: dict[str, Any], request_id: str) -> None:
        sent.append({"type": frame_type, "payload": payload, "requestId": request_id})
        c.send(frame_type, payload, request_id=request_id)

    # A token shorter-lived than TOKEN_REFRESH_NOTICE: token_expiring comes at once.
    alice = await Client.connect(gw.url, token("alice", ttl=30))
    await collect(alice, alice_got, lambda: any(f["type"] == "token_expiring" for f in alice_got), "token_expiring")
    send(alice, "join", {"roomId": room}, "j1")
    await collect(alice, alice_got, answered(alice_got, "room_update", "j1"), "room_update")
    await collect(alice, alice_got, lambda: alice_got[-1]["type"] == "presence_state", "presence_state")
    bob = await gw.client("bob")
    send(bob, "join", {"roomId": room, "since": {"offset": 0, "epoch": "e"}}, "j2")
    await collect(bob, bob_got, answered(bob_got, "room_update", "j2"), "bob's room_update")
    await collect(alice, alice_got, lambda: alice_got[-1]["type"] == "presence", "bob's presence")
    message = {
        "roomId": room,
        "content": "hello",
        "attachments": [{"url": "https://example.test/a.png", "type": "image/png", "name": "a", "size": 3}],
        "dedupeKey": "d1",
    }
    send(alice, "message", message, "m1")
    await collect(alice, alice_got, answered(alice_got, "ack", "m1"), "ack")
    await collect(alice, alice_got, lambda: any(f["type"] == "message" for f in alice_got), "message")
    await collect(bob, bob_got, lambda: any(f["type"] == "message" for f in bob_got), "bob's message")
    send(alice, "presence", {"roomId": room, "status": "typing"}, "p1")
    await collect(alice, alice_got, lambda: alice_got[-1]["type"] == "presence", "typing")
    send(alice, "history", {"roomId": room, "limit": 10}, "h1")
    await collect(alice, alice_got, answered(alice_got, "history", "h1"), "history")
    send(alice, "presence_query", {"roomId": room}, "q1")
    await collect(alice, alice_got, answered(alice_got, "presence_state", "q1"), "presence_state")
    send(alice, "refresh", {"token": token("alice")}, "f1")
    await collect(alice, alice_got, answered(alice_got, "refreshed", "f1"), "refreshed")
    # Refused frames: each answered with an error.
    alice.send("refresh", {"token": "not-a-token"}, request_id="e1")
    alice.send_raw("{not json")
    alice.send("nope", {}, request_id="e2")
    alice.send("message", {"roomId": room, "content": ""}, request_id="e3")
    alice.send("leave", {"roomId": "elsewhere"}, request_id="e4")
    await collect(alice, alice_got, lambda: sum(f["type"] == "error" for f in alice_got) >= 5, "five errors")
    send(alice, "leave", {"roomId": room}, "l1")
    await collect(alice, alice_got, answered(alice_got, "room_update", "l1"), "room_update left")
    send(alice, "ping", {}, "z1")
    await collect(alice, alice_got, answered(alice_got, "pong", "z1"), "pong")

    frames = alice_got + bob_got
    seen = {f["type"] for f in frames}
    assert seen >= {
        "token_expiring",
        "room_update",
        "presence_state",
        "presence",
        "message",
        "ack",
        "history",
        "refreshed",
        "error",
        "pong",
    }, seen
    codes = {f["payload"]["code"] for f in frames if f["type"] == "error"}
    assert codes == {"invalid_token", "invalid_json", "unknown_type", "validation_failed", "not_in_room"}, codes
    (history,) = [f for f in alice_got if f["type"] == "history"]
    assert [e["type"] for e in history["payload"]["entries"]] == ["message"]
    check_frames(doc, frames, "server.")
    check_frames(doc, sent, "client.")
    # And the schemas do refuse: an entry of the history whose payload is not a message's.
    entry = history["payload"]["entries"][0]
    bad = {**history, "payload": {**history["payload"], "entries": [{**entry, "payload": {"id": "x"}}]}}
    assert not validator(doc, messages_by_type(doc, "server.")["history"]).is_valid(bad)


# -- Kafka records, with a real broker ------------------------------------------------------------


def read_records(brokers: str, topic: str, count: int) -> list[Any]:
    """The first `count` records of `topic` (blocking: run it in a thread)."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {"bootstrap.servers": brokers, "group.id": f"asyncapi-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    records: list[Any] = []
    deadline = time.monotonic() + 20
    try:
        while len(records) < count and time.monotonic() < deadline:
            record = consumer.poll(0.5)
            if record is not None and record.error() is None:
                records.append(record)
    finally:
        consumer.close()
    assert len(records) >= count, f"{len(records)} of {count} records on {topic}"
    return records


@pytest.mark.gen_test(timeout=90)
async def test_the_records_of_a_real_gateway_match_the_document(brokers, make_gateway) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    from tests.kafka_support import Topics, create_topics, kafka_settings

    doc = load()
    by_type = messages_by_type(doc, "event.")
    admin = AdminClient({"bootstrap.servers": brokers})
    tag = uuid.uuid4().hex[:10]
    topics = Topics(*(f"t.{tag}.{kind}" for kind in ("ingest", "messages", "rooms", "users", "presence")))
    await asyncio.to_thread(create_topics, admin, topics.all)
    try:
        gw = await make_gateway(**kafka_settings(brokers, topics))
        await wait_for(lambda: _ready(gw.http), timeout=30, what="kafka ready")
        room = f"room-{uuid.uuid4().hex[:8]}"
        alice = await gw.client("alice")
        await alice.join(room)
        alice.send("message", {"roomId": room, "content": "durable", "dedupeKey": "k1"}, request_id="m1")
        ack = await alice.expect("ack", timeout=10)

        # What another service writes, checked against the document before it is produced.
        written: list[dict[str, Any]] = [
            {
                "eventId": str(uuid.uuid4()),
                "type": event_type,
                "version": 1,
                "occurredAt": "2026-01-02T03:04:05.678Z",
                "source": "test-suite",
                "payload": payload,
            }
            for event_type, payload in (
                ("message.updated", {"id": ack["payload"]["id"], "roomId": room, "content": "edited"}),
                ("message.deleted", {"id": ack["payload"]["id"], "roomId": room}),
            )
        ]
        for envelope in written:
            validator(doc, by_type[envelope["type"]]).validate(envelope)
        producer = Producer({"bootstrap.servers": brokers, "linger.ms": 0})
        for envelope in written:
            producer.produce(topics.messages, key=room.encode(), value=json.dumps(envelope).encode())
        assert await asyncio.to_thread(producer.flush, 10) == 0
        updated = await alice.expect("message_updated", timeout=15)
        deleted = await alice.expect("message_deleted", timeout=15)
        check_frames(doc, [updated, deleted], "server.")

        produced = await asyncio.to_thread(read_records, brokers, topics.ingest, 1)
        produced += await asyncio.to_thread(read_records, brokers, topics.presence, 1)
        assert [json.loads(r.value())["type"] for r in produced] == ["message.ingest", "user.online"]
        for record in produced:
            envelope = json.loads(record.value())
            message = by_type[envelope["type"]]
            validator(doc, message).validate(envelope)
            key = "userId" if envelope["type"].startswith("user.") else "roomId"
            assert record.key().decode() == envelope["payload"][key], (key, record.key())
    finally:
        admin.delete_topics(topics.all, operation_timeout=5)


async def _ready(http: str) -> bool:
    status, body = await readyz(http)
    return status == 200 and body["checks"]["kafka"] == {"producer": "up", "consumer": "assigned"}


def test_the_http_transport_is_two_channels_of_the_same_frames() -> None:
    """docs/protocol.md, "HTTP transport": GET /sse sends every server frame and its own two events,
    POST /sse/send receives every client frame; the messages are the WebSocket channel's."""
    doc = load()
    assert doc["servers"]["sse"]["protocol"] == "http"
    stream, send = doc["channels"]["sse"], doc["channels"]["sseSend"]
    assert (stream["address"], send["address"]) == ("/sse", "/sse/send")
    listed = sorted(ref["$ref"].rsplit("/", 1)[1] for ref in stream["messages"].values())
    assert listed == sorted([f"server.{t}" for t in SERVER_TYPES] + ["stream.session", "stream.closed"])
    assert sorted(ref["$ref"].rsplit("/", 1)[1] for ref in send["messages"].values()) == sorted(
        f"client.{t}" for t in CLIENT_TYPES
    )
    for status in ("202", "400", "404", "413", "429"):
        assert f"| {status}" in send["description"], status
    operations = doc["operations"].values()
    ops = {op["bindings"]["http"]["method"]: op for op in operations if "http" in op.get("bindings", {})}
    assert ops["GET"]["channel"]["$ref"] == "#/channels/sse" and ops["GET"]["action"] == "send"
    assert ops["POST"]["channel"]["$ref"] == "#/channels/sseSend" and ops["POST"]["action"] == "receive"
    session = doc["components"]["schemas"]["StreamSessionEvent"]["properties"]
    assert session["type"]["const"] == "session"
