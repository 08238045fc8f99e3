"""The WebSocket side: one message per client and server frame, the channel (with the close
codes) and the operations, request/reply pairs correlated by requestId."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema

from docgen.asyncapi.common import PROTOCOL_DOC, WS, WS_BINDING, camel, pascal, ref
from docgen.asyncapi.convert import Converted
from docgen.asyncapi.tables import CLIENT_FRAMES, REPLIES, RETRY_MEANING, SERVER_FRAMES
from schemas.client import FrameSchema, payload_schemas
from schemas.protocol import CLIENT_TYPES, CLOSE_CODES, SERVER_TYPES, Retry
from schemas.server import PAYLOADS, ServerFrame


def frame(conv: Converted, outer: type[Schema], frame_type: str, payload: type[Schema]) -> dict[str, Any]:
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


def ws_messages(conv: Converted, max_content: int, frames: dict[str, Any]) -> dict[str, Any]:
    """The frames' messages; each frame's schema goes into `frames` under its name."""
    correlation = ref("components", "correlationIds", "requestId")
    messages: dict[str, Any] = {}
    client_payloads = payload_schemas(max_content)
    for frame_type in CLIENT_TYPES:
        name = pascal("client", frame_type, "frame")
        frames[name] = frame(conv, FrameSchema, frame_type, type(client_payloads[frame_type]))
        messages[f"client.{frame_type}"] = {
            "name": name,
            "title": f"{frame_type} (client to server)",
            "summary": CLIENT_FRAMES[frame_type],
            "description": f"See {PROTOCOL_DOC}. Unknown fields are ignored.",
            "contentType": "application/json",
            "correlationId": dict(correlation),
            "payload": ref("components", "schemas", name),
        }
    for frame_type in SERVER_TYPES:
        name = pascal("server", frame_type, "frame")
        frames[name] = frame(conv, ServerFrame, frame_type, PAYLOADS[frame_type])
        message: dict[str, Any] = {
            "name": name,
            "title": f"{frame_type} (server to client)",
            "summary": SERVER_FRAMES[frame_type],
            "description": f"See {PROTOCOL_DOC}, 'Server frames'.",
            "contentType": "application/json",
        }
        if frame_type in REPLIES.values() or frame_type == "error":
            message["correlationId"] = dict(correlation)
        message["payload"] = ref("components", "schemas", name)
        messages[f"server.{frame_type}"] = message
    return messages


def close_codes() -> list[dict[str, Any]]:
    return [
        {"code": c.code, "reason": c.reason, "retry": c.retry.value}
        for c in sorted(CLOSE_CODES.values(), key=lambda c: c.code)
    ]


def ws_channel(messages: dict[str, Any]) -> dict[str, Any]:
    table = ["| code | reason | then |", "|---|---|---|"]
    table += [f"| {c['code']} | {c['reason']} | {c['retry']} |" for c in close_codes()]
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
        "servers": [ref("servers", WS)],
        "messages": {key: ref("components", "messages", key) for key in messages},
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
        "x-close-codes": close_codes(),
    }


def ws_operations() -> dict[str, Any]:
    def message(key: str) -> dict[str, str]:
        return ref("channels", WS, "messages", key)

    operations: dict[str, Any] = {}
    for frame_type in CLIENT_TYPES:
        op: dict[str, Any] = {
            "action": "receive",
            "channel": ref("channels", WS),
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
        op["reply"] = {"channel": ref("channels", WS), "messages": [message(f"server.{t}") for t in answers]}
        operations[camel("receive", frame_type)] = op
    for frame_type in SERVER_TYPES:
        operations[camel("send", frame_type)] = {
            "action": "send",
            "channel": ref("channels", WS),
            "title": f"Send {frame_type}",
            "summary": SERVER_FRAMES[frame_type],
            "tags": [{"name": "websocket"}],
            "messages": [message(f"server.{frame_type}")],
        }
    return operations
