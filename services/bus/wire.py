"""How a BusEvent travels through Redis: a compact JSON header, a newline, then the frame's bytes as
they are (never parsed or re-encoded on the way).

    [version, origin, exclude, action, user]                  any event
    [version, origin, exclude, action, user, offset, epoch]   a history entry (services/history)
    [version, origin, exclude, action, user, null, null, room, at, reason]   a control-plane action

An entry's header is finished by the history's Redis script, which alone knows the offset:
`entry_head` is the part before it.
"""

from __future__ import annotations

import orjson

from services.bus import BusEvent

WIRE_VERSION = 1


def bus_key(prefix: str, channel: str, sharded: bool = False) -> str:
    """The Redis channel of a bus channel: `<prefix>room:<id>`, `<prefix>user:<id>` (the history's
    script publishes entries on it too). Sharded (a cluster): `<prefix>room:{<id>}`, so a room's
    channel lives in the slot of its history and presence keys, which share the hash tag {<id>}."""
    if not sharded:
        return prefix + channel
    kind, _, name = channel.partition(":")
    return f"{prefix}{kind}:{{{name}}}"


def bus_channel(prefix: str, key: bytes, sharded: bool = False) -> str:
    """The bus channel of a Redis channel (`bus_key` undone)."""
    name = key.decode("utf-8", "replace")[len(prefix) :]
    if not sharded:
        return name
    kind, _, tagged = name.partition(":")
    return f"{kind}:{tagged[1:-1]}"


def encode_event(event: BusEvent) -> bytes:
    """`[version, origin, exclude, action, user(, null, null, room, at, reason)]`, a newline, the frame."""
    fields = [WIRE_VERSION, event.origin, event.exclude, event.action, event.user]
    if event.room is not None or event.at is not None or event.reason is not None:
        fields += [None, None, event.room, event.at, event.reason]
    head = orjson.dumps(fields)
    return head + b"\n" + (event.frame or b"")


def entry_head(origin: str) -> bytes:
    """The header of an entry up to its offset: the script appends `offset,"epoch"]`."""
    return orjson.dumps([WIRE_VERSION, origin, None, None, None])[:-1] + b","


def decode_event(data: bytes) -> BusEvent:
    head, sep, frame = data.partition(b"\n")
    if not sep:
        raise ValueError("no header separator")
    fields = orjson.loads(head)
    if not isinstance(fields, list) or len(fields) < 5 or fields[0] != WIRE_VERSION:
        raise ValueError("unknown header")
    origin, exclude, action, user = fields[1:5]
    offset, epoch = (fields[5], fields[6]) if len(fields) >= 7 else (None, None)
    room, at, reason = (fields[7], fields[8], fields[9]) if len(fields) >= 10 else (None, None, None)
    return BusEvent(
        frame=frame or None,
        origin=origin,
        exclude=exclude,
        action=action,
        user=user,
        offset=offset,
        epoch=epoch,
        room=room,
        at=at,
        reason=reason,
    )
