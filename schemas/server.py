"""Frames the gateway sends. Used to document the protocol and, in tests, to check every frame
received over a real socket has exactly the promised shape."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from schemas.common import ISO_MS, PRESENCE_STATUSES, attachments, room_id
from schemas.protocol import ERROR_CODES, ROOM_ACTIONS, SERVER_TYPES, STREAM_EVENTS


def _offset(first: int) -> fields.Integer:
    """A history position: entries start at 1, a room with none is at 0."""
    return fields.Integer(strict=True, validate=validate.Range(min=first))


def _epoch() -> fields.String:
    return fields.String(validate=validate.Length(min=1, max=64))


def _iso(**kw: object) -> fields.String:
    return fields.String(validate=validate.Regexp(ISO_MS), **kw)  # type: ignore[arg-type]


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class MessageOut(_Strict):
    id = fields.String(required=True)
    roomId = room_id()
    senderType = fields.String(required=True)
    senderId = fields.String(required=True)
    content = fields.String(required=True)
    attachments = attachments(required=True)
    createdAt = _iso(required=True)
    dedupeKey = fields.String()
    offset = _offset(1)
    epoch = _epoch()


class MessageUpdatedOut(_Strict):
    id = fields.String(required=True)
    roomId = room_id()
    content = fields.String()
    attachments = attachments()
    updatedAt = fields.String()
    offset = _offset(1)
    epoch = _epoch()


class MessageDeletedOut(_Strict):
    id = fields.String(required=True)
    roomId = room_id()
    deletedAt = fields.String()
    offset = _offset(1)
    epoch = _epoch()


class AckOut(_Strict):
    id = fields.String(required=True)
    roomId = room_id()
    createdAt = _iso(required=True)
    dedupeKey = fields.String()


class RoomUpdateOut(_Strict):
    roomId = room_id()
    action = fields.String(required=True, validate=validate.OneOf(ROOM_ACTIONS))
    recovered = fields.Boolean()
    offset = _offset(0)
    epoch = _epoch()
    changes = fields.Dict()


class PresenceOut(_Strict):
    roomId = room_id()
    userId = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(("online", "typing", "idle", "offline")))
    at = _iso(required=True)


class MemberOut(_Strict):
    userId = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(PRESENCE_STATUSES))
    since = _iso(required=True)


class PresenceStateOut(_Strict):
    roomId = room_id()
    count = fields.Integer(required=True, validate=validate.Range(min=0))
    members = fields.List(fields.Nested(MemberOut), required=True)
    next = fields.String()


class PresenceCountOut(_Strict):
    roomId = room_id()
    count = fields.Integer(required=True, validate=validate.Range(min=0))


class HistoryEntryOut(_Strict):
    type = fields.String(required=True, validate=validate.OneOf(("message", "message_updated", "message_deleted")))
    payload = fields.Dict(required=True)


class HistoryOut(_Strict):
    roomId = room_id()
    offset = _offset(0)
    epoch = _epoch()
    entries = fields.List(fields.Nested(HistoryEntryOut), required=True)


class PongOut(_Strict):
    pass


class ErrorOut(_Strict):
    message = fields.String(required=True)
    code = fields.String(required=True, validate=validate.OneOf(ERROR_CODES))
    roomId = fields.String()
    dedupeKey = fields.String()
    details = fields.Raw()


class TokenExpiringOut(_Strict):
    expiresAt = _iso(required=True)


class RefreshedOut(_Strict):
    expiresAt = _iso(required=True)


class RpcResultOut(_Strict):
    method = fields.String(required=True)
    data = fields.Raw(required=True, allow_none=True)


class ServerFrame(_Strict):
    type = fields.String(required=True, validate=validate.OneOf(SERVER_TYPES))
    payload = fields.Dict(required=True)
    requestId = fields.String()


PAYLOADS: dict[str, type[Schema]] = {
    "message": MessageOut,
    "message_updated": MessageUpdatedOut,
    "message_deleted": MessageDeletedOut,
    "ack": AckOut,
    "room_update": RoomUpdateOut,
    "presence": PresenceOut,
    "presence_state": PresenceStateOut,
    "presence_count": PresenceCountOut,
    "history": HistoryOut,
    "token_expiring": TokenExpiringOut,
    "refreshed": RefreshedOut,
    "rpc_result": RpcResultOut,
    "pong": PongOut,
    "error": ErrorOut,
}


class SessionOut(_Strict):
    sessionId = fields.String(
        required=True, metadata={"description": "the session's id: the X-Session-Id of its POSTs (a credential)"}
    )
    sendUrl = fields.String(required=True, metadata={"description": "where its frames are POSTed: /sse/send"})


class ClosedOut(_Strict):
    code = fields.Integer(required=True, metadata={"description": "the close code a WebSocket would have got"})
    reason = fields.String(required=True)


class StreamEvent(_Strict):
    type = fields.String(required=True, validate=validate.OneOf(STREAM_EVENTS))
    payload = fields.Dict(required=True)


# The HTTP transport's own events: the stream's first (`session`) and last (`closed`).
STREAM_PAYLOADS: dict[str, type[Schema]] = {"session": SessionOut, "closed": ClosedOut}


def validate_stream_event(event: object) -> None:
    """Raise marshmallow.ValidationError unless `event` is a `session` or `closed` event."""
    StreamEvent().load(event)  # type: ignore[arg-type]
    assert isinstance(event, dict)
    STREAM_PAYLOADS[event["type"]]().load(event["payload"])


def validate_server_frame(frame: object) -> None:
    """Raise marshmallow.ValidationError unless `frame` is a well-formed server frame."""
    ServerFrame().load(frame)  # type: ignore[arg-type]
    assert isinstance(frame, dict)
    PAYLOADS[frame["type"]]().load(frame["payload"])
