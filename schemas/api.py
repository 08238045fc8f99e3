"""The HTTP control API's bodies (docs/protocol.md, "Control API"; docs/openapi.yaml is generated
from these by `python -m docgen.openapi`).

Unknown request fields are ignored, as in client frames and Kafka events (callers evolve; a missing
required field is still a 400 naming it). Responses are what the handlers write; tests check real
answers against these schemas through docs/openapi.yaml.
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, RAISE, Schema, fields, validate, validates

from schemas.common import attachments, check_content, room_id
from schemas.events import moment, user_id
from schemas.server import PresenceStateOut

MAX_REASON = 200


class _Request(Schema):
    class Meta:
        unknown = EXCLUDE


class _Answer(Schema):
    class Meta:
        unknown = RAISE


class ApiMessageSchema(_Request):
    """A message from the backend (a bot, a system notice): delivered like a Kafka message.created."""

    senderId = user_id()
    senderType = fields.String(load_default="system", validate=validate.Length(min=1, max=32))
    content = fields.String(required=True)
    attachments = attachments()
    id = fields.String(validate=validate.Length(min=1, max=128), metadata={"description": "default: a new UUIDv7"})
    createdAt = moment(
        required=False, description="default: now; ISO-8601 or Unix seconds, sent as ISO-8601 UTC with milliseconds"
    )

    max_content = 4000  # MAX_CONTENT: publish_schema() makes the gateway's

    @validates("content")
    def _content_length(self, value: str, **_: Any) -> None:
        check_content(value, self.max_content)


class PublishSchema(_Request):
    roomId = room_id()
    message = fields.Nested(ApiMessageSchema, required=True)


def publish_schema(max_content: int) -> PublishSchema:
    """PublishSchema whose content limit is MAX_CONTENT, as for a client's message."""
    inner = type("ApiMessageSchema", (ApiMessageSchema,), {"max_content": max_content})
    outer = type("PublishSchema", (PublishSchema,), {"message": fields.Nested(inner, required=True)})
    schema: PublishSchema = outer()
    return schema


class PublishedOut(_Answer):
    id = fields.String(required=True)
    offset = fields.Integer(metadata={"description": "the entry's place in the room's history (history on)"})
    epoch = fields.String()
    duplicate = fields.Boolean(metadata={"description": "true: a message with this id was delivered before"})


class DisconnectSchema(_Request):
    userId = user_id()
    reason = fields.String(
        validate=validate.Length(max=MAX_REASON),
        metadata={"description": "the close frame's reason (cut to 120 bytes)"},
    )


class DisconnectedOut(_Answer):
    userId = fields.String(required=True)


class RevokeSchema(_Request):
    userId = user_id()
    issuedBefore = moment(required=False, description="default: now; ISO-8601 (without a zone: UTC) or Unix seconds")


class RevokedOut(_Answer):
    userId = fields.String(required=True)
    issuedBefore = fields.String(required=True)


class PresenceQueryArgs(_Request):
    roomId = room_id()
    cursor = fields.String(validate=validate.Length(min=1, max=1024))


class PresencePageOut(PresenceStateOut):
    """GET /api/presence: a presence_state's payload."""


class ApiErrorOut(Schema):
    error = fields.String(required=True)
    details = fields.Dict(metadata={"description": "field -> messages, for a body that failed validation"})
