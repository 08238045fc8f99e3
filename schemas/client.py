"""Frames a client may send: `{"type", "payload", "requestId"?}` and one payload schema per type.

Unknown payload fields are ignored (forward compatible clients); wrong types and bad values are
`validation_failed` with marshmallow's field messages as `details`.
"""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

from schemas.common import PRESENCE_STATUSES, ContentRule, attachments, room_id

RPC_METHOD_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}\Z"
RPC_METHOD_MESSAGE = "method must be 1-64 characters: letters, digits, and _ . : -"


class _Payload(Schema):
    class Meta:
        unknown = EXCLUDE


class RecoverySinceSchema(_Payload):
    offset = fields.Integer(strict=True, required=True, validate=validate.Range(min=0))
    epoch = fields.String(required=True, validate=validate.Length(max=64))


class JoinSchema(_Payload):
    roomId = room_id()
    since = fields.Nested(RecoverySinceSchema)


class LeaveSchema(_Payload):
    roomId = room_id()


class MessageSchema(ContentRule, _Payload):
    roomId = room_id()
    content = fields.String(required=True)
    attachments = attachments()
    dedupeKey = fields.String(validate=validate.Length(max=128))


class HistorySchema(_Payload):
    roomId = room_id()
    limit = fields.Integer(strict=True, load_default=50, validate=validate.Range(min=1, max=100))


class PresenceQuerySchema(_Payload):
    roomId = room_id()
    cursor = fields.String(validate=validate.Length(min=1, max=1024))


class PresenceSchema(_Payload):
    roomId = room_id()
    status = fields.String(required=True, validate=validate.OneOf(PRESENCE_STATUSES))


class RefreshSchema(_Payload):
    token = fields.String(required=True, validate=validate.Length(min=1, max=8192))


class RpcSchema(_Payload):
    """`data` is any JSON value, handed to the backend as it came (docs/hooks.md, "rpc")."""

    method = fields.String(required=True, validate=validate.Regexp(RPC_METHOD_PATTERN, error=RPC_METHOD_MESSAGE))
    data = fields.Raw(load_default=None, allow_none=True)


class PingSchema(_Payload):
    pass


class FrameSchema(Schema):
    """The outer frame. `type` is checked against CLIENT_TYPES by the caller (unknown_type)."""

    class Meta:
        unknown = EXCLUDE

    type = fields.String(required=True, validate=validate.Length(min=1, max=64))
    payload = fields.Dict(load_default=dict)
    requestId = fields.String(validate=validate.Length(max=64))


def payload_schemas(max_content: int) -> dict[str, Schema]:
    """One instance per type, built once per server (schemas are reusable and thread-safe to load)."""
    return {
        "join": JoinSchema(),
        "leave": LeaveSchema(),
        "message": MessageSchema(max_content=max_content),
        "presence": PresenceSchema(),
        "history": HistorySchema(),
        "presence_query": PresenceQuerySchema(),
        "refresh": RefreshSchema(),
        "rpc": RpcSchema(),
        "ping": PingSchema(),
    }
