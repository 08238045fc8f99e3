"""docs/asyncapi.yaml, the WebSocket protocol and the Kafka topics as AsyncAPI 3.0.0, made from the
schemas in schemas/client.py, schemas/server.py and schemas/events.py, the names in
schemas/protocol.py and the defaults in services/settings:

    python -m schemas.asyncapi > docs/asyncapi.yaml

tests/test_asyncapi.py fails when the committed file differs from what this prints, when the
official parser (`node scripts/asyncapi/validate.mjs docs/asyncapi.yaml`, @asyncapi/parser) reports
an error or a warning, when a frame type, event type, error code or close code is missing, and when
a frame a real gateway sends does not match its schema. Needs apispec (requirements-dev.txt); the
gateway itself never imports this module.

Decisions:
- The document describes the gateway: it `receive`s client frames and the Kafka records it
  consumes, it `send`s server frames and the records it produces; one operation per frame or event
  type. A client frame answered by a reply frame (room_update, ack, presence_state, history,
  refreshed, pong; or error) has an AsyncAPI `reply`, correlated on `$message.payload#/requestId`.
- A message's payload is the whole frame `{type, payload, requestId?}` (for Kafka, the whole
  envelope), converted from FrameSchema / ServerFrame / EnvelopeSchema by apispec's marshmallow
  converter, with `type` a const and `payload` a reference to the type's converted schema. Schema
  names are apispec's (the class name less `Schema`), with `Client` before client payloads.
  Message keys are `client.<type>`, `server.<type>` and `event.<type>`, since `message`,
  `presence` and `history` are both client and server types.
- What the converter cannot say is added here, naming its rule: the length of a client message's
  content (a @validates method: 1 to MAX_CONTENT code points), the payload of each `history`
  entry by its type, and Moment fields (ISO-8601 or Unix seconds, as in schemas/openapi.py).
- Close codes come from CLOSE_CODES: a table in the WebSocket channel's description and the
  machine-readable `x-close-codes` list (code, reason, retry).
- Kafka channels are addressed by the topics' default names (the KAFKA_TOPIC_* settings); record
  keys are the kafka message binding. The Kafka server is 127.0.0.1:9092, not localhost
  (docs/kafka.md: librdkafka may pick ::1).
- AsyncAPI 3.0.0, not 3.1.0: the parser's one remark (information, not a warning) says a newer
  version exists. `moment_types` and `tidy_schemas` are shared with schemas/openapi.py.
- Every frame and envelope is a named schema (`ClientJoinFrame`, `ServerMessageFrame`,
  `MessageIngestEvent`, ...) and every message has a distinct `name`, so code generators make one
  type each. A history entry is a `oneOf` of its three kinds with `discriminator: type`.
- No `additionalProperties: false`: the gateway may add fields to any frame or event, and
  consumers ignore what they do not know (the tests keep the server's own schemas strict).
- A fixed order everywhere (the order of the names in schemas/ and of the tables below), no YAML
  anchors, PyYAML with sort_keys=False: the output is byte-for-byte stable.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

from marshmallow import Schema, validate

from schemas import client, events
from schemas.client import FrameSchema, MessageSchema, payload_schemas
from schemas.openapi import moment_types, tidy_schemas
from schemas.protocol import CLIENT_TYPES, CLOSE_CODES, SERVER_TYPES, Retry
from schemas.server import PAYLOADS, HistoryEntryOut, ServerFrame
from services.settings import OPTIONS
from services.settings.options import Option

VERSION = "1.0.0"
WS = "gateway"  # the WebSocket server's and channel's key
KAFKA = "kafka"  # the Kafka server's key
KAFKA_HOST = "127.0.0.1:9092"
WS_BINDING = "0.1.0"
KAFKA_BINDING = "0.5.0"
PROTOCOL_DOC = "docs/protocol.md"
KAFKA_DOC = "docs/kafka.md"

# -- what the schemas do not say: one line per name, after docs/protocol.md and docs/kafka.md ------

CLIENT_FRAMES: dict[str, str] = {
    "join": "Join a room; with `since: {offset, epoch}`, recover what was missed.",
    "leave": "Leave a room.",
    "message": "Send a message to a joined room.",
    "presence": "Announce a status in a joined room: online, typing or idle.",
    "presence_query": "Ask for a page of a joined room's online members.",
    "history": "Ask for the latest entries of a joined room's history.",
    "refresh": "Hand the socket a new token for the same user before the current one expires.",
    "ping": "An application-level ping (browsers cannot send WebSocket ping frames).",
}
SERVER_FRAMES: dict[str, str] = {
    "message": "A message in a joined room: a history entry, with its offset and epoch.",
    "message_updated": "A message was edited (Kafka message.updated): a history entry.",
    "message_deleted": "A message was deleted (Kafka message.deleted): a history entry.",
    "ack": "To the sender: its message was accepted (and durable, with Kafka).",
    "room_update": "The socket's membership or the room changed: joined, left, removed, deleted, updated.",
    "presence": "A member's status changed: online, typing, idle, offline.",
    "presence_state": "A page of the room's online members (the first page replaces the list).",
    "presence_count": "The room's online count, instead of per-user presence, in a room above the limit.",
    "history": "The latest entries of the room's history, oldest first.",
    "token_expiring": "The token expires soon: send `refresh` with a new one.",
    "refreshed": "An accepted `refresh`: the new token's exp, the socket's new deadline.",
    "pong": "The answer to `ping`.",
    "error": "A refused frame. An error never closes the socket by itself.",
}
# A client frame -> the frame that answers it with the frame's requestId (besides `error`).
REPLIES: dict[str, str] = {
    "join": "room_update",
    "leave": "room_update",
    "message": "ack",
    "presence_query": "presence_state",
    "history": "history",
    "refresh": "refreshed",
    "ping": "pong",
}
RETRY_MEANING: dict[Retry, str] = {
    Retry.RECONNECT: "reconnect with backoff, to any instance",
    Retry.REFRESH: "get a new token, then reconnect",
    Retry.GIVE_UP: "do not reconnect: the same connection would be refused again",
}
# Event type -> (payload schema, what it is or what the gateway does with it).
EVENTS: dict[str, tuple[type[Schema], str]] = {
    events.MESSAGE_INGEST: (events.MessagePayload, "A client message, written before anyone sees it (durable ack)."),
    events.MESSAGE_CREATED: (events.CONSUMED[events.MESSAGE_CREATED], "Delivered to the room as `message`."),
    events.MESSAGE_UPDATED: (events.CONSUMED[events.MESSAGE_UPDATED], "Delivered to the room as `message_updated`."),
    events.MESSAGE_DELETED: (events.CONSUMED[events.MESSAGE_DELETED], "Delivered to the room as `message_deleted`."),
    events.ROOM_UPDATED: (
        events.CONSUMED[events.ROOM_UPDATED],
        "Delivered as `room_update` action updated, every field but roomId under `changes`.",
    ),
    events.ROOM_DELETED: (
        events.CONSUMED[events.ROOM_DELETED],
        "Delivered as `room_update` action deleted; then every member leaves the room.",
    ),
    events.MEMBER_REMOVED: (
        events.CONSUMED[events.MEMBER_REMOVED],
        "The user's sockets get `room_update` action removed and leave the room; older tokens may not re-join it.",
    ),
    events.USER_DISCONNECTED: (
        events.CONSUMED[events.USER_DISCONNECTED],
        "Every socket of the user, on every instance, is closed with 4003.",
    ),
    events.USER_TOKENS_REVOKED: (
        events.CONSUMED[events.USER_TOKENS_REVOKED],
        "The user's tokens issued before issuedBefore are refused; their sockets are closed with 4003.",
    ),
    events.USER_ONLINE: (events.UserOnlinePayload, "A user not announced online opened a socket on any instance."),
    events.USER_OFFLINE: (
        events.UserOfflinePayload,
        "A user announced online has had no socket on any instance for OFFLINE_GRACE seconds.",
    ),
}
# (setting, channel key, the gateway's action, event types, record key), as docs/kafka.md, "Topics".
TOPICS: tuple[tuple[str, str, str, tuple[str, ...], str], ...] = (
    ("kafka_topic_ingest", "ingest", "send", (events.MESSAGE_INGEST,), "roomId"),
    (
        "kafka_topic_message_events",
        "messageEvents",
        "receive",
        (events.MESSAGE_CREATED, events.MESSAGE_UPDATED, events.MESSAGE_DELETED),
        "roomId",
    ),
    (
        "kafka_topic_room_events",
        "roomEvents",
        "receive",
        (events.ROOM_UPDATED, events.ROOM_DELETED, events.MEMBER_REMOVED),
        "roomId",
    ),
    (
        "kafka_topic_user_events",
        "userEvents",
        "receive",
        (events.USER_DISCONNECTED, events.USER_TOKENS_REVOKED),
        "userId",
    ),
    ("kafka_topic_presence_events", "presenceEvents", "send", (events.USER_ONLINE, events.USER_OFFLINE), "userId"),
)


def _option(name: str) -> Option:
    return next(o for o in OPTIONS if o.name == name)


def _ref(*parts: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)}


def _camel(*words: str) -> str:
    parts = [w for word in words for w in word.replace(".", "_").split("_") if w]
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def _check_tables() -> None:
    """Every name in schemas/ has its line above: a new frame or event type must be described."""
    for what, names, table in (
        ("CLIENT_FRAMES", CLIENT_TYPES, CLIENT_FRAMES),
        ("SERVER_FRAMES", SERVER_TYPES, SERVER_FRAMES),
        ("RETRY_MEANING", tuple(Retry), RETRY_MEANING),
    ):
        if set(names) != set(table):
            raise ValueError(f"schemas/asyncapi.py: {what} does not match schemas/protocol.py")
    if not set(REPLIES) <= set(CLIENT_TYPES) or not set(REPLIES.values()) <= set(SERVER_TYPES):
        raise ValueError("schemas/asyncapi.py: REPLIES names a frame type schemas/protocol.py does not")
    on_topics = [t for *_, types, _key in TOPICS for t in types]
    if sorted(on_topics) != sorted(EVENTS) or len(set(on_topics)) != len(on_topics):
        raise ValueError("schemas/asyncapi.py: every event type of EVENTS must be on exactly one topic of TOPICS")


# -- the schemas, through apispec's marshmallow converter ------------------------------------------


def _schema_name(schema: type[Schema] | Schema) -> str:
    from apispec.ext.marshmallow import resolver
    from apispec.ext.marshmallow.common import resolve_schema_cls

    name = resolver(schema)  # type: ignore[arg-type]
    cls = resolve_schema_cls(schema)
    return f"Client{name}" if getattr(cls, "__module__", "") == client.__name__ else name


class _Converted:
    """Marshmallow schemas as JSON Schema: components registered on first use, under `_schema_name`."""

    def __init__(self) -> None:
        from apispec import APISpec
        from apispec.ext.marshmallow import MarshmallowPlugin

        self.plugin = MarshmallowPlugin(schema_name_resolver=_schema_name)
        self.spec = APISpec(title="-", version=VERSION, openapi_version="3.1.0", plugins=[self.plugin])
        assert self.plugin.converter is not None
        self.converter = self.plugin.converter
        self.converter.add_attribute_function(moment_types)  # type: ignore[no-untyped-call]
        self.names: dict[type[Schema], str] = {}

    def ref(self, schema: type[Schema]) -> dict[str, str]:
        """A reference to `schema` under components/schemas."""
        if schema not in self.names:
            self.names[schema] = _schema_name(schema)
            self.spec.components.schema(self.names[schema], schema=schema)
        return _ref("components", "schemas", self.names[schema])

    def inline(self, schema: type[Schema]) -> dict[str, Any]:
        """The JSON Schema of `schema` itself, its nested schemas as references."""
        out: dict[str, Any] = self.converter.schema2jsonschema(schema)  # type: ignore[no-untyped-call]
        return out

    def field(self, schema: type[Schema], name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.converter.field2property(schema._declared_fields[name])
        return out

    def components(self) -> dict[str, Any]:
        out: dict[str, Any] = copy.deepcopy(self.spec.to_dict()["components"]["schemas"])
        return out


# -- parts of the document -------------------------------------------------------------------------


def _frame(conv: _Converted, outer: type[Schema], frame_type: str, payload: type[Schema]) -> dict[str, Any]:
    """The whole frame: `outer` converted, `type` a const, `payload` the type's schema."""
    frame = conv.inline(outer)
    props = frame["properties"]
    props["type"] = {"type": "string", "const": frame_type}
    props["payload"] = conv.ref(payload)
    props["requestId"]["description"] = (
        "Echoed as the top-level requestId of the frame's reply (or error)."
        if outer is FrameSchema
        else "The requestId of the client frame this frame answers, when it answers one."
    )
    frame["required"] = sorted({*frame.get("required", ()), "type"})
    return frame


def _pascal(*words: str) -> str:
    camel = _camel(*words)
    return camel[:1].upper() + camel[1:]


def _ws_messages(conv: _Converted, max_content: int, frames: dict[str, Any]) -> dict[str, Any]:
    """The frames' messages; each frame's schema goes into `frames` under its name."""
    correlation = _ref("components", "correlationIds", "requestId")
    messages: dict[str, Any] = {}
    client_payloads = payload_schemas(max_content)
    for frame_type in CLIENT_TYPES:
        name = _pascal("client", frame_type, "frame")
        frames[name] = _frame(conv, FrameSchema, frame_type, type(client_payloads[frame_type]))
        messages[f"client.{frame_type}"] = {
            "name": name,
            "title": f"{frame_type} (client to server)",
            "summary": CLIENT_FRAMES[frame_type],
            "description": f"See {PROTOCOL_DOC}. Unknown fields are ignored.",
            "contentType": "application/json",
            "correlationId": dict(correlation),
            "payload": _ref("components", "schemas", name),
        }
    for frame_type in SERVER_TYPES:
        name = _pascal("server", frame_type, "frame")
        frames[name] = _frame(conv, ServerFrame, frame_type, PAYLOADS[frame_type])
        message: dict[str, Any] = {
            "name": name,
            "title": f"{frame_type} (server to client)",
            "summary": SERVER_FRAMES[frame_type],
            "description": f"See {PROTOCOL_DOC}, 'Server frames'.",
            "contentType": "application/json",
        }
        if frame_type in REPLIES.values() or frame_type == "error":
            message["correlationId"] = dict(correlation)
        message["payload"] = _ref("components", "schemas", name)
        messages[f"server.{frame_type}"] = message
    return messages


def _event_messages(conv: _Converted, envelopes: dict[str, Any]) -> dict[str, Any]:
    """The events' messages; each event's envelope goes into `envelopes` under its name."""
    messages: dict[str, Any] = {}
    for setting, _channel, action, types, key in TOPICS:
        topic = _option(setting)
        for event_type in types:
            payload, summary = EVENTS[event_type]
            envelope = conv.inline(events.EnvelopeSchema)
            props = envelope["properties"]
            props["eventId"]["description"] = "Unique per event: consumers drop duplicates by it."
            props["type"] = {"type": "string", "const": event_type}
            props["version"] = {"type": "integer", "const": 1}
            props["occurredAt"]["description"] = "ISO-8601 UTC."
            props["source"]["description"] = "Who wrote the record; the gateway writes {KAFKA_CLIENT_ID}/{instance id}."
            props["payload"] = conv.ref(payload)
            record_key = conv.field(payload, key)
            record_key["description"] = f"The payload's {key}, UTF-8."
            who = "Produced by the gateway" if action == "send" else "Consumed by the gateway"
            name = _pascal(event_type, "event")
            envelopes[name] = envelope
            messages[f"event.{event_type}"] = {
                "name": name,
                "title": event_type,
                "summary": summary,
                "description": f"{who} on {topic.env}. Consumers ignore unknown fields. See {KAFKA_DOC}.",
                "contentType": "application/json",
                "payload": _ref("components", "schemas", name),
                "bindings": {"kafka": {"key": record_key, "bindingVersion": KAFKA_BINDING}},
            }
    return messages


def _refine(schemas: dict[str, Any], entries: dict[str, dict[str, str]], max_content: Option) -> None:
    """What the marshmallow converter cannot express. `entries`: a history entry's type -> a
    reference to its payload's schema (registered before the components were taken)."""
    content = schemas[_schema_name(MessageSchema)]["properties"]["content"]
    content["minLength"] = 1
    content["maxLength"] = max_content.default
    content["description"] = (
        f"1 to {max_content.env} (default {max_content.default}) characters, counted in code points "
        "(MessageSchema's @validates rule)."
    )
    name = _schema_name(HistoryEntryOut)
    schemas[name] = {
        "type": "object",
        "description": "One history entry: the frame `type` names, with its payload as it was delivered.",
        "properties": {"type": {"type": "string", "enum": list(entries)}, "payload": {"type": "object"}},
        "required": ["type", "payload"],
        "discriminator": "type",
        "oneOf": [
            {
                "type": "object",
                "title": _pascal(kind, "entry"),
                "properties": {"type": {"type": "string", "const": kind}, "payload": ref},
                "required": ["type", "payload"],
            }
            for kind, ref in entries.items()
        ],
    }


def _entry_kinds() -> tuple[str, ...]:
    """The frame types a history entry can be, as HistoryEntryOut's `type` allows them."""
    (kinds,) = [v for v in HistoryEntryOut._declared_fields["type"].validators if isinstance(v, validate.OneOf)]
    return tuple(str(kind) for kind in kinds.choices)


def _open_objects(node: Any) -> None:
    """Drop `additionalProperties: false`: documented objects may grow fields (see the module's docstring)."""
    if isinstance(node, dict):
        if node.get("additionalProperties") is False:
            del node["additionalProperties"]
        for value in node.values():
            _open_objects(value)
    elif isinstance(node, list):
        for value in node:
            _open_objects(value)


def _close_codes() -> list[dict[str, Any]]:
    return [
        {"code": c.code, "reason": c.reason, "retry": c.retry.value}
        for c in sorted(CLOSE_CODES.values(), key=lambda c: c.code)
    ]


def _ws_channel(messages: dict[str, Any]) -> dict[str, Any]:
    table = ["| code | reason | then |", "|---|---|---|"]
    table += [f"| {c['code']} | {c['reason']} | {c['retry']} |" for c in _close_codes()]
    then = "\n".join(f"- **{r.value}**: {RETRY_MEANING[r]}" for r in Retry)
    description = f"""\
`ws://host:port/` (also `/ws`). Every frame is a JSON text object
`{{"type": ..., "payload": {{...}}, "requestId"?: "..."}}`; the reply to a frame carries the same
top-level `requestId`. See {PROTOCOL_DOC}.

A missing or invalid token is refused before the upgrade with HTTP 401 and `{{"error": "..."}}`, a
browser Origin outside ALLOWED_ORIGINS with 403, a draining server or one at MAX_CONNECTIONS with 503,
a client address at MAX_CONNECTIONS_PER_IP with 429.

Close codes ({PROTOCOL_DOC}, 'Close codes'; also `x-close-codes`):

{chr(10).join(table)}

What a client does then (`Retry` in schemas/protocol.py):

{then}
"""
    return {
        "address": "/",
        "title": "A WebSocket connection",
        "summary": "The frames of one connection, both ways.",
        "description": description,
        "servers": [_ref("servers", WS)],
        "messages": {key: _ref("components", "messages", key) for key in messages},
        "bindings": {
            "ws": {
                "method": "GET",
                "query": {
                    "type": "object",
                    "properties": {
                        "token": {"type": "string", "description": "The JWT, unless it is in the Authorization header."}
                    },
                },
                "headers": {
                    "type": "object",
                    "properties": {
                        "Authorization": {
                            "type": "string",
                            "pattern": "^Bearer ",
                            "description": "`Bearer <JWT>`, unless the token is in the query.",
                        }
                    },
                },
                "bindingVersion": WS_BINDING,
            }
        },
        "x-close-codes": _close_codes(),
    }


def _ws_operations() -> dict[str, Any]:
    def message(key: str) -> dict[str, str]:
        return _ref("channels", WS, "messages", key)

    operations: dict[str, Any] = {}
    for frame_type in CLIENT_TYPES:
        op: dict[str, Any] = {
            "action": "receive",
            "channel": _ref("channels", WS),
            "title": f"Receive {frame_type}",
            "summary": CLIENT_FRAMES[frame_type],
        }
        if frame_type in REPLIES:
            op["description"] = (
                f"Answered with `{REPLIES[frame_type]}` or `error`, with the frame's requestId ({PROTOCOL_DOC})."
            )
        else:
            op["description"] = (
                f"No reply of its own; a refused frame is answered with `error`, with its requestId ({PROTOCOL_DOC})."
            )
        op["tags"] = [{"name": "websocket"}]
        op["messages"] = [message(f"client.{frame_type}")]
        answers = [REPLIES[frame_type], "error"] if frame_type in REPLIES else ["error"]
        op["reply"] = {"channel": _ref("channels", WS), "messages": [message(f"server.{t}") for t in answers]}
        operations[_camel("receive", frame_type)] = op
    for frame_type in SERVER_TYPES:
        operations[_camel("send", frame_type)] = {
            "action": "send",
            "channel": _ref("channels", WS),
            "title": f"Send {frame_type}",
            "summary": SERVER_FRAMES[frame_type],
            "tags": [{"name": "websocket"}],
            "messages": [message(f"server.{frame_type}")],
        }
    return operations


def _kafka_channels_and_operations() -> tuple[dict[str, Any], dict[str, Any]]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for setting, channel, action, types, key in TOPICS:
        topic = _option(setting)
        produced = action == "send"
        channels[channel] = {
            "address": topic.default,
            "title": topic.env,
            "summary": f"{'Produced' if produced else 'Consumed'} by the gateway: {', '.join(types)}.",
            "description": (
                f"The default name; set by {topic.env} ({topic.help}). Records are keyed by {key}. "
                + ("" if produced else "A consumed type is accepted on either consumed topic. ")
                + f"See {KAFKA_DOC}, 'Topics'."
            ),
            "servers": [_ref("servers", KAFKA)],
            "messages": {f"event.{t}": _ref("components", "messages", f"event.{t}") for t in types},
        }
        for event_type in types:
            operations[_camel(action, event_type)] = {
                "action": action,
                "channel": _ref("channels", channel),
                "title": f"{'Produce' if produced else 'Consume'} {event_type}",
                "summary": EVENTS[event_type][1],
                "tags": [{"name": "kafka"}],
                "bindings": _ref("components", "operationBindings", "producer" if produced else "consumer"),
                "messages": [_ref("channels", channel, "messages", f"event.{event_type}")],
            }
    return channels, operations


def _operation_bindings() -> dict[str, Any]:
    group = _option("kafka_group_id")
    client_id = _option("kafka_client_id")
    client_id_schema = {"type": "string", "default": client_id.default, "description": f"{client_id.env}."}
    return {
        "consumer": {
            "kafka": {
                "groupId": {"type": "string", "default": group.default, "description": f"{group.env}: {group.help}."},
                "clientId": client_id_schema,
                "bindingVersion": KAFKA_BINDING,
            }
        },
        "producer": {"kafka": {"clientId": dict(client_id_schema), "bindingVersion": KAFKA_BINDING}},
    }


# -- the document ----------------------------------------------------------------------------------


def document() -> dict[str, Any]:
    _check_tables()
    conv = _Converted()
    max_content = _option("max_content")
    port = _option("port")
    brokers = _option("kafka_brokers")

    frames: dict[str, Any] = {}
    ws_messages = _ws_messages(conv, max_content.default, frames)
    event_messages = _event_messages(conv, frames)
    entries = {kind: conv.ref(PAYLOADS[kind]) for kind in _entry_kinds()}
    schemas = {**conv.components(), **frames}
    _refine(schemas, entries, max_content)
    kafka_channels, kafka_operations = _kafka_channels_and_operations()
    operations = _ws_operations()
    assert not set(operations) & set(kafka_operations), "an operation key is taken twice"
    operations.update(kafka_operations)

    doc: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Realtime Gateway",
            "version": VERSION,
            "description": (
                "The chat gateway's WebSocket protocol and the Kafka topics it produces and consumes, from the "
                "gateway's side: it receives client frames and sends server frames, consumes events and produces "
                f"records. The reference is {PROTOCOL_DOC} (frames, error and close codes) and {KAFKA_DOC} "
                "(topics, envelope, semantics). Generated from the marshmallow schemas in schemas/ by "
                "`python -m schemas.asyncapi`."
            ),
            "tags": [
                {"name": "websocket", "description": f"The client protocol ({PROTOCOL_DOC})."},
                {"name": "kafka", "description": f"Records produced and consumed ({KAFKA_DOC})."},
            ],
        },
        "defaultContentType": "application/json",
        "servers": {
            WS: {
                "host": f"localhost:{port.default}",
                "protocol": "ws",
                "title": "A gateway instance",
                "description": (
                    f"{port.env} (default {port.default}). The token is the query parameter `token` or the header "
                    "`Authorization: Bearer <JWT>`; the user id is its `sub` claim."
                ),
                "security": [
                    _ref("components", "securitySchemes", "queryToken"),
                    _ref("components", "securitySchemes", "bearerToken"),
                ],
                "tags": [{"name": "websocket"}],
            },
            KAFKA: {
                "host": KAFKA_HOST,
                "protocol": "kafka",
                "title": "Kafka brokers",
                "description": (
                    f"{brokers.env}: {brokers.help}. Use 127.0.0.1, not localhost (librdkafka may pick ::1); "
                    f"see {KAFKA_DOC}."
                ),
                "tags": [{"name": "kafka"}],
            },
        },
        "channels": {WS: _ws_channel(ws_messages), **kafka_channels},
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": {**ws_messages, **event_messages},
            "securitySchemes": {
                "queryToken": {
                    "type": "httpApiKey",
                    "name": "token",
                    "in": "query",
                    "description": "`?token=<JWT>`.",
                },
                "bearerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "`Authorization: Bearer <JWT>`.",
                },
            },
            "correlationIds": {
                "requestId": {
                    "description": "A client frame's requestId (a string of at most 64 characters), echoed on the "
                    "frame that answers it.",
                    "location": "$message.payload#/requestId",
                }
            },
            "operationBindings": _operation_bindings(),
        },
    }
    tidy_schemas(doc)
    _open_objects(doc)
    return doc


def render() -> str:
    import yaml

    def text(dumper: Any, value: str) -> Any:
        """Text of several lines (the channel's description, its table) as a literal block."""
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    # No anchors and aliases: every repeated part is written out.
    dumper: Any = type("Dumper", (yaml.SafeDumper,), {"ignore_aliases": lambda _self, _data: True})
    dumper.add_representer(str, text)
    header = "# Generated by `python -m schemas.asyncapi` from schemas/: do not edit by hand.\n"
    body: str = yaml.dump(document(), Dumper=dumper, sort_keys=False, width=110, allow_unicode=True)
    return header + body


if __name__ == "__main__":
    sys.stdout.write(render())
