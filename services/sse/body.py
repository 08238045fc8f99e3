"""A POST /sse/send body read into frames, or refused whole (docs/protocol.md, "HTTP transport").

    read_body    one frame or a JSON list of frames -> [Posted], or BadBody(400 | 413)

Nothing of a refused body is handled: a client that sends it again loses nothing and doubles
nothing. Limits: the body itself is at most SSE_SEND_BYTES (handlers/http_server.py answers 413
before reading more); each frame at most MAX_MESSAGE_BYTES, as a WebSocket frame; at most
RATE_BURST frames (a larger request could never pass the rate limit: 413, not 429 for ever).
A frame is kept as its JSON bytes, parsed again when its turn comes (services/sse/inbox.py): what
waits is bounded in bytes, not in Python objects twenty times their size.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from services.errors import GatewayError


@dataclass(frozen=True, slots=True)
class Posted:
    data: bytes  # one frame's JSON; services/connection/inbound.py says what a frame must be

    @property
    def size(self) -> int:
        return len(self.data)


class BadBody(GatewayError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def read_body(body: bytes, max_frame_bytes: int, max_frames: int) -> list[Posted]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadBody(400, "body is not JSON (UTF-8): send one frame or a list of frames") from None
    if isinstance(parsed, dict):
        frames = [Posted(body)]
    elif isinstance(parsed, list) and parsed and all(isinstance(f, dict) for f in parsed):
        if len(parsed) > max_frames:
            raise BadBody(413, f"at most {max_frames} frames per request (RATE_BURST)")
        try:
            frames = [Posted(orjson.dumps(f)) for f in parsed]
        except orjson.JSONEncodeError:  # nested deeper than JSON is written back (255 levels)
            raise BadBody(400, "a frame is nested too deeply") from None
    else:
        raise BadBody(400, "body must be a frame (a JSON object) or a non-empty list of frames")
    if max(f.size for f in frames) > max_frame_bytes:
        raise BadBody(413, f"a frame over {max_frame_bytes} bytes (MAX_MESSAGE_BYTES)")
    return frames
