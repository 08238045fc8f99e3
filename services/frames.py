"""Server frames are encoded once, as bytes, and the same object is queued for every recipient."""

from __future__ import annotations

from typing import Any

import orjson

from services.metrics import METRICS

_out: dict[str, Any] = {}  # frame type -> bound counter child, resolved once


def encode(frame_type: str, payload: dict[str, Any], request_id: str | None = None) -> bytes:
    frame: dict[str, Any] = {"type": frame_type, "payload": payload}
    if request_id is not None:
        frame["requestId"] = request_id
    counter = _out.get(frame_type)
    if counter is None:
        counter = _out[frame_type] = METRICS.frames_out.labels(frame_type)
    counter.inc()
    return orjson.dumps(frame, option=orjson.OPT_NON_STR_KEYS)


def error(code: str, message: str, request_id: str | None = None, **extra: Any) -> bytes:
    payload: dict[str, Any] = {"message": message, "code": code}
    payload.update({k: v for k, v in extra.items() if v is not None})
    return encode("error", payload, request_id)
