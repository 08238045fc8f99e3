"""How a BusEvent travels through Redis: a compact JSON header, a newline, then the frame's bytes as
they are (never parsed or re-encoded on the way)."""

from __future__ import annotations

import orjson

from services.bus import BusEvent

WIRE_VERSION = 1


def encode_event(event: BusEvent) -> bytes:
    """`[version, origin, exclude, action, user]`, a newline, the frame."""
    head = orjson.dumps([WIRE_VERSION, event.origin, event.exclude, event.action, event.user])
    return head + b"\n" + (event.frame or b"")


def decode_event(data: bytes) -> BusEvent:
    head, sep, frame = data.partition(b"\n")
    if not sep:
        raise ValueError("no header separator")
    fields = orjson.loads(head)
    if not isinstance(fields, list) or len(fields) < 5 or fields[0] != WIRE_VERSION:
        raise ValueError("unknown header")
    origin, exclude, action, user = fields[1:5]
    return BusEvent(frame=frame or None, origin=origin, exclude=exclude, action=action, user=user)
