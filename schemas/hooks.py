"""What the gateway sends the application's backend, and what it answers (docs/hooks.md).

    ConnectCall, JoinCall, PublishCall, RpcCall   the bodies the gateway POSTs (docs/openapi.yaml, webhooks)
    ConnectAnswer   {userId, rooms?, expiresAt?}
    JoinAnswer      {allow, reason?}
    PublishAnswer   {allow?, content?, attachments?, reason?}
    RpcAnswer       {data?}
    RefusalBody     {error, code?}: the body of a 401, 403, 404, 409 or 422

An answer that does not load is `unavailable`, like a backend that did not answer: the gateway never
acts on a half-understood decision. Unknown fields are ignored (a backend may add its own).
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from schemas.common import ContentRule, attachments
from schemas.events import moment
from schemas.protocol import TRANSPORTS

REASON_CHARS = 512  # a refusal's reason or error, shown to the client


class _Answer(Schema):
    class Meta:
        unknown = EXCLUDE


class StrictBoolean(fields.Field):
    """`true` or `false` only: a backend answering `"no"` or `0` is not understood, not taken as yes."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("expected true or false")
        return value


class ConnectAnswer(_Answer):
    userId = fields.String(required=True, validate=validate.Length(min=1, max=128))
    rooms = fields.List(fields.String(validate=validate.Length(min=1, max=256)), validate=validate.Length(max=10000))
    expiresAt = moment(required=False, description="ISO-8601 (without a zone: UTC) or Unix seconds; absent: no expiry")


class JoinAnswer(_Answer):
    allow = StrictBoolean(required=True, metadata={"type": "boolean"})
    reason = fields.String(validate=validate.Length(max=REASON_CHARS))


class PublishAnswer(ContentRule, _Answer):
    """`{}` sends the message as it is; content and attachments replace the client's and are held to
    the same rules (MAX_CONTENT, at most 10 attachments)."""

    allow = StrictBoolean(load_default=True, metadata={"type": "boolean", "description": "absent: true"})
    content = fields.String()
    attachments = attachments()
    reason = fields.String(validate=validate.Length(max=REASON_CHARS))


class RpcAnswer(_Answer):
    data = fields.Raw(load_default=None, allow_none=True, metadata={"description": "any JSON value, for the client"})


class _Call(Schema):
    hook = fields.String(required=True, validate=validate.OneOf(("connect", "join", "publish", "rpc")))
    instance = fields.String(required=True, metadata={"description": "the gateway instance's id"})
    connId = fields.String(required=True, metadata={"description": "the connection's id, as in the gateway's logs"})
    remoteAddr = fields.String(required=True, metadata={"description": "the client's address"})
    transport = fields.String(
        required=True,
        validate=validate.OneOf(TRANSPORTS),
        metadata={"description": "`websocket` or `sse` (the HTTP transport)"},
    )


class ConnectCall(_Call):
    headers = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        required=True,
        metadata={"description": "the HOOK_FORWARD_HEADERS present in the handshake, names lower-cased"},
    )
    query = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


class JoinCall(_Call):
    userId = fields.String(required=True)
    roomId = fields.String(required=True)


class PublishedMessage(Schema):
    id = fields.String(required=True)
    content = fields.String(required=True)
    attachments = attachments(required=True)
    createdAt = fields.String(required=True)
    dedupeKey = fields.String()


class PublishCall(_Call):
    userId = fields.String(required=True)
    roomId = fields.String(required=True)
    message = fields.Nested(PublishedMessage, required=True)


class RpcCall(_Call):
    userId = fields.String(required=True)
    method = fields.String(required=True)
    data = fields.Raw(required=True, allow_none=True, metadata={"description": "the client's data, any JSON value"})


class RefusalBody(_Answer):
    error = fields.String(required=True)
    code = fields.String(validate=validate.Length(max=64))
