"""The HTTP transport (docs/protocol.md, "HTTP transport"): the same frames over `GET /sse` (a
Server-Sent Events stream, every server frame one event) and `POST /sse/send` (client frames).

Two channels on the `sse` server (protocol `http`): the stream, whose messages are every server frame
plus the transport's own `session` (first) and `closed` (last) events, and the send path, whose
messages are the client frames (one, or a JSON list of them, per POST; its statuses are in the
channel's description, the request in the operation's `http` binding). The frames' messages are
the WebSocket channel's own: one schema per frame whatever carries it.
"""

from __future__ import annotations

from typing import Any

from docgen.asyncapi.common import PROTOCOL_DOC, WS, pascal, ref, token_security
from docgen.asyncapi.convert import Converted
from schemas.protocol import CLIENT_TYPES, SEND_PATH, SERVER_TYPES, SESSION_HEADER, STREAM_EVENTS, STREAM_PATH
from schemas.server import STREAM_PAYLOADS, StreamEvent

SSE = "sse"  # the HTTP transport's server key; its channels are `sse` (the stream) and `sseSend`
SEND = "sseSend"
HTTP_BINDING = "0.3.0"
_EVENTS = {
    "session": "The stream's first event: the session's id (the X-Session-Id of its POSTs) and where to POST.",
    "closed": "The stream's last event, where a WebSocket would get a close frame: its code and reason.",
}

_SEND_STATUSES = """\
| status | meaning |
|---|---|
| 202 `{"accepted": n}` | the frames are the session's, in order; replies come over the stream |
| 400 | not a frame (a JSON object) or a non-empty list of frames; no X-Session-Id |
| 403 | a browser Origin outside ALLOWED_ORIGINS |
| 404 | no such session (it ended, or never was): open a new stream |
| 413 | over SSE_SEND_BYTES, a frame over MAX_MESSAGE_BYTES, or more frames than RATE_BURST |
| 429 + Retry-After | over the session's RATE_LIMIT, or too many of its frames still waiting: send the same again |
| 503 + Retry-After | the instance holding the session could not be reached: send again |"""


def sse_server(port: int) -> dict[str, Any]:
    return {
        "host": f"localhost:{port}",
        "protocol": "http",
        "title": "A gateway instance, over HTTP",
        "description": (
            f"The HTTP transport ({PROTOCOL_DOC}, 'HTTP transport'), on the same port as the WebSocket: for networks "
            "whose proxies refuse upgrades. Any instance takes a POST (no sticky sessions)."
        ),
        "security": token_security(),
        "tags": [{"name": SSE}],
    }


def sse_messages(conv: Converted, frames: dict[str, Any]) -> dict[str, Any]:
    """The `session` and `closed` events' messages; their schemas go into `frames`."""
    messages: dict[str, Any] = {}
    for event_type in STREAM_EVENTS:
        name = pascal("stream", event_type, "event")
        event = conv.inline(StreamEvent)
        event["properties"]["type"] = {"type": "string", "const": event_type}
        event["properties"]["payload"] = conv.ref(STREAM_PAYLOADS[event_type])
        frames[name] = event
        messages[f"stream.{event_type}"] = {
            "name": name,
            "title": f"{event_type} (HTTP transport, server to client)",
            "summary": _EVENTS[event_type],
            "description": f"See {PROTOCOL_DOC}, 'HTTP transport'. The event's `data:` line is this JSON.",
            "contentType": "application/json",
            "payload": ref("components", "schemas", name),
        }
    return messages


def sse_channels() -> dict[str, Any]:
    stream = {
        "address": STREAM_PATH,
        "title": "An event stream (GET /sse)",
        "summary": "Every server frame of one session, one Server-Sent Event each.",
        "description": (
            f"`GET {STREAM_PATH}` with the token as for a WebSocket (or the connect hook's cookie). Refusals before "
            'the stream: 401, 403, 429, 503 with `{"error": "..."}`. Then `200`, '
            "`Content-Type: text/event-stream`, "
            "`Cache-Control: no-cache`, `X-Accel-Buffering: no`; each event's `data:` line is a frame's JSON, the "
            "first `session`, the last `closed` (the close codes of the WebSocket channel); a comment line every "
            f"PING_INTERVAL. See {PROTOCOL_DOC}, 'HTTP transport'."
        ),
        "servers": [ref("servers", SSE)],
        "messages": {
            **{f"stream.{t}": ref("components", "messages", f"stream.{t}") for t in STREAM_EVENTS},
            **{f"server.{t}": ref("components", "messages", f"server.{t}") for t in SERVER_TYPES},
        },
    }
    send = {
        "address": SEND_PATH,
        "title": "A session's frames (POST /sse/send)",
        "summary": "Client frames for a session, whichever instance holds it.",
        "description": (
            f"`POST {SEND_PATH}`, header `{SESSION_HEADER}: <sessionId>`, body one client frame or a JSON list of "
            f"them; the replies come over the stream.\n\n{_SEND_STATUSES}\n"
        ),
        "servers": [ref("servers", SSE)],
        "messages": {f"client.{t}": ref("components", "messages", f"client.{t}") for t in CLIENT_TYPES},
    }
    return {SSE: stream, SEND: send}


def sse_operations() -> dict[str, Any]:
    return {
        "streamServerFrames": {
            "action": "send",
            "channel": ref("channels", SSE),
            "title": "Stream server frames",
            "summary": "`session`, then every server frame the session is sent, then `closed`.",
            "tags": [{"name": SSE}],
            "bindings": {"http": {"method": "GET", "bindingVersion": HTTP_BINDING}},
            "messages": [
                *[ref("channels", SSE, "messages", f"stream.{t}") for t in STREAM_EVENTS],
                *[ref("channels", SSE, "messages", f"server.{t}") for t in SERVER_TYPES],
            ],
        },
        "receivePostedFrames": {
            "action": "receive",
            "channel": ref("channels", SEND),
            "title": "Receive posted frames",
            "summary": "Client frames, handled as the WebSocket channel's are; replies come over the stream.",
            "description": f"The same frames and replies as on the `{WS}` channel ({PROTOCOL_DOC}).",
            "tags": [{"name": SSE}],
            "bindings": {"http": {"method": "POST", "bindingVersion": HTTP_BINDING}},
            "messages": [ref("channels", SEND, "messages", f"client.{t}") for t in CLIENT_TYPES],
        },
    }
