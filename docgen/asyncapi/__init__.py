"""docs/asyncapi.yaml, the WebSocket protocol, its HTTP transport and the Kafka topics as AsyncAPI 3.0.0, made from the
schemas in schemas/client.py, schemas/server.py and schemas/events.py, the names in
schemas/protocol.py and the defaults in services/settings:

    python -m docgen.asyncapi > docs/asyncapi.yaml

tests/test_asyncapi.py fails when the committed file differs from what this prints, when the
official parser (`node scripts/asyncapi/validate.mjs docs/asyncapi.yaml`, @asyncapi/parser) reports
an error or a warning, when a frame type, event type, error code or close code is missing, and when
a frame a real gateway sends does not match its schema. Needs apispec (requirements-dev.txt); the
gateway itself never imports this package.

    tables.py      what the schemas do not say: a line per frame and event type, the topics
    convert.py     marshmallow -> JSON Schema (apispec), and the rules the converter cannot see
    websocket.py   the frames' messages, the WebSocket channel with the close codes, its operations
    sse.py         the HTTP transport: the stream and the send path, the same frames' messages
    kafka.py       the events' messages, the topics as channels, their operations and bindings
    common.py      the shared names and helpers

Decisions:
- The document describes the gateway: it `receive`s client frames and the Kafka records it
  consumes, it `send`s server frames and the records it produces; one operation per frame or event
  type. A client frame answered by a reply frame (room_update, ack, presence_state, history,
  refreshed, rpc_result, pong; or error) has an AsyncAPI `reply`, correlated on `$message.payload#/requestId`.
- A message's payload is the whole frame `{type, payload, requestId?}` (for Kafka, the whole
  envelope), converted from FrameSchema / ServerFrame / EnvelopeSchema by apispec's marshmallow
  converter, with `type` a const and `payload` a reference to the type's converted schema. Schema
  names are apispec's (the class name less `Schema`), with `Client` before client payloads.
  Message keys are `client.<type>`, `server.<type>` and `event.<type>`, since `message`,
  `presence` and `history` are both client and server types.
- What the converter cannot say is added here, naming its rule: the length of a client message's
  content (a @validates method: 1 to MAX_CONTENT code points), the payload of each `history`
  entry by its type, and Moment fields (ISO-8601 or Unix seconds, as in docgen/openapi.py).
- Close codes come from CLOSE_CODES: a table in the WebSocket channel's description and the
  machine-readable `x-close-codes` list (code, reason, retry).
- Kafka channels are addressed by the topics' default names (the KAFKA_TOPIC_* settings); record
  keys are the kafka message binding. The Kafka server is 127.0.0.1:9092, not localhost
  (docs/kafka.md: librdkafka may pick ::1).
- AsyncAPI 3.0.0, not 3.1.0: the parser's one remark (information, not a warning) says a newer
  version exists. docgen/json_schema.py (the converter's mapping of Moment fields, ECMA patterns)
  is shared with docgen/openapi.py.
- Every frame and envelope is a named schema (`ClientJoinFrame`, `ServerMessageFrame`,
  `MessageIngestEvent`, ...) and every message has a distinct `name`, so code generators make one
  type each. A history entry is a `oneOf` of its three kinds with `discriminator: type`.
- No `additionalProperties: false`: the gateway may add fields to any frame or event, and
  consumers ignore what they do not know (the tests keep the server's own schemas strict).
- A fixed order everywhere (the order of the names in schemas/ and of the tables below), no YAML
  anchors, PyYAML with sort_keys=False: the output is byte-for-byte stable.
"""

from __future__ import annotations

from typing import Any

from docgen.asyncapi.common import (
    KAFKA,
    KAFKA_DOC,
    KAFKA_HOST,
    PROTOCOL_DOC,
    VERSION,
    WS,
    option,
    token_security,
)
from docgen.asyncapi.convert import Converted, entry_kinds, open_objects, refine
from docgen.asyncapi.kafka import event_messages, kafka_channels_and_operations, operation_bindings
from docgen.asyncapi.sse import SSE, sse_channels, sse_messages, sse_operations, sse_server
from docgen.asyncapi.tables import check_tables
from docgen.asyncapi.websocket import ws_channel, ws_messages, ws_operations
from docgen.json_schema import ecma_patterns, yaml_dumper
from schemas.server import PAYLOADS


def document() -> dict[str, Any]:
    check_tables()
    conv = Converted()
    max_content = option("max_content")
    port = option("port")
    brokers = option("kafka_brokers")

    frames: dict[str, Any] = {}
    frame_messages = ws_messages(conv, max_content.default, frames)
    stream_messages = sse_messages(conv, frames)
    record_messages = event_messages(conv, frames)
    entries = {kind: conv.ref(PAYLOADS[kind]) for kind in entry_kinds()}
    schemas = {**conv.components(), **frames}
    refine(schemas, entries, max_content)
    kafka_channels, kafka_operations = kafka_channels_and_operations()
    operations = ws_operations()
    for more in (sse_operations(), kafka_operations):
        assert not set(operations) & set(more), "an operation key is taken twice"
        operations.update(more)

    doc: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Realtime Gateway",
            "version": VERSION,
            "description": (
                "The chat gateway's WebSocket protocol (also over HTTP: an event stream and POSTs) and the Kafka "
                "topics it produces and consumes, from the "
                "gateway's side: it receives client frames and sends server frames, consumes events and produces "
                f"records. The reference is {PROTOCOL_DOC} (frames, error and close codes) and {KAFKA_DOC} "
                "(topics, envelope, semantics). Generated from the marshmallow schemas in schemas/ by "
                "`python -m docgen.asyncapi`."
            ),
            "tags": [
                {"name": "websocket", "description": f"The client protocol ({PROTOCOL_DOC})."},
                {"name": SSE, "description": f"The same frames over HTTP ({PROTOCOL_DOC}, 'HTTP transport')."},
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
                "security": token_security(),
                "tags": [{"name": "websocket"}],
            },
            SSE: sse_server(port.default),
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
        "channels": {WS: ws_channel(frame_messages), **sse_channels(), **kafka_channels},
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": {**frame_messages, **stream_messages, **record_messages},
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
            "operationBindings": operation_bindings(),
        },
    }
    ecma_patterns(doc)
    open_objects(doc)
    return doc


def render() -> str:
    import yaml

    # The channel's description and its close-code table as literal blocks.
    dumper = yaml_dumper(literal_blocks=True)
    header = "# Generated by `python -m docgen.asyncapi` from schemas/: do not edit by hand.\n"
    body: str = yaml.dump(document(), Dumper=dumper, sort_keys=False, width=110, allow_unicode=True)
    return header + body
