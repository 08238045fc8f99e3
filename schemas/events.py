"""Kafka events: one envelope `{eventId, type, version: 1, occurredAt, source, payload}`, key = roomId
(userId for user and presence events).

Consumed payloads ignore unknown fields (producers evolve); produced ones are built by the gateway.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from marshmallow import EXCLUDE, INCLUDE, Schema, ValidationError, fields, validate

from schemas.common import ISO_MS, attachments, room_id

MESSAGE_INGEST = "message.ingest"
MESSAGE_CREATED = "message.created"
MESSAGE_UPDATED = "message.updated"
MESSAGE_DELETED = "message.deleted"
ROOM_UPDATED = "room.updated"
ROOM_DELETED = "room.deleted"
MEMBER_REMOVED = "room.member_removed"
USER_DISCONNECTED = "user.disconnected"
USER_TOKENS_REVOKED = "user.tokens_revoked"
USER_ONLINE = "user.online"
USER_OFFLINE = "user.offline"


def user_id() -> fields.String:
    return fields.String(required=True, validate=validate.Length(min=1, max=128))


class Moment(fields.AwareDateTime):
    """An ISO-8601 time (one without a zone is UTC), or a number of Unix seconds like a JWT's `iat`."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                if math.isfinite(value):
                    return datetime.fromtimestamp(value, UTC)
            except (OverflowError, OSError, ValueError):
                pass
            raise ValidationError("Not a valid time: an ISO-8601 string or Unix seconds.")
        when: datetime = super()._deserialize(value, attr, data, **kwargs)
        try:
            # In range in its own zone is not enough: 9999-12-31T23:59:59-12:00 is past the year 9999
            # in UTC, where every time is compared and written (issue: a 500 with a traceback).
            when.astimezone(UTC).timestamp()
        except (OverflowError, OSError, ValueError):
            raise ValidationError("Not a valid time: out of range once in UTC.") from None
        return when


def moment(required: bool = True, description: str = "ISO-8601 (without a zone: UTC) or Unix seconds") -> Moment:
    return Moment(required=required, default_timezone=UTC, metadata={"description": description})


class EnvelopeSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    eventId = fields.String(required=True, validate=validate.Length(min=1, max=128))
    type = fields.String(required=True)
    version = fields.Integer(required=True, strict=True, validate=validate.Equal(1))
    occurredAt = fields.String(required=True)
    source = fields.String(load_default="unknown")
    payload = fields.Dict(required=True)


class _Payload(Schema):
    class Meta:
        unknown = EXCLUDE


class MessagePayload(_Payload):
    """message.ingest (produced) and message.created (consumed): the full message."""

    id = fields.String(required=True, validate=validate.Length(min=1, max=128))
    roomId = room_id()
    senderType = fields.String(required=True, validate=validate.Length(min=1, max=32))
    senderId = fields.String(required=True, validate=validate.Length(min=1, max=128))
    content = fields.String(required=True)
    attachments = attachments(allow_none=True)
    createdAt = fields.String(required=True)
    dedupeKey = fields.String(allow_none=True)


class MessageUpdatedPayload(_Payload):
    """Optional fields may be null: they are left out of the frame (docs/kafka.md)."""

    id = fields.String(required=True)
    roomId = room_id()
    content = fields.String(allow_none=True)
    attachments = attachments(allow_none=True)
    updatedAt = fields.String(allow_none=True)


class MessageDeletedPayload(_Payload):
    id = fields.String(required=True)
    roomId = room_id()
    deletedAt = fields.String(allow_none=True)


class RoomUpdatedPayload(Schema):
    class Meta:
        unknown = INCLUDE  # every other field is a change, forwarded under `changes`

    roomId = room_id()


class RoomDeletedPayload(_Payload):
    roomId = room_id()


class MemberRemovedPayload(_Payload):
    roomId = room_id()
    userId = user_id()


class UserDisconnectedPayload(_Payload):
    userId = user_id()
    reason = fields.String(validate=validate.Length(max=200))


class TokensRevokedPayload(_Payload):
    userId = user_id()
    issuedBefore = moment()


class UserOnlinePayload(_Payload):
    """user.online (produced to KAFKA_TOPIC_PRESENCE_EVENTS)."""

    userId = user_id()
    at = fields.String(required=True, validate=validate.Regexp(ISO_MS))


class UserOfflinePayload(UserOnlinePayload):
    """user.offline: `lastSeenAt` is when the user's last socket closed, `at` when the grace ended."""

    lastSeenAt = fields.String(required=True, validate=validate.Regexp(ISO_MS))


CONSUMED: dict[str, type[Schema]] = {
    MESSAGE_CREATED: MessagePayload,
    MESSAGE_UPDATED: MessageUpdatedPayload,
    MESSAGE_DELETED: MessageDeletedPayload,
    ROOM_UPDATED: RoomUpdatedPayload,
    ROOM_DELETED: RoomDeletedPayload,
    MEMBER_REMOVED: MemberRemovedPayload,
    USER_DISCONNECTED: UserDisconnectedPayload,
    USER_TOKENS_REVOKED: TokensRevokedPayload,
}
