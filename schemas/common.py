"""Field rules shared by client frames, server frames and Kafka events."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates

ROOM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z"  # \Z: no trailing newline
ROOM_ID_MESSAGE = "roomId must be 1-128 characters: letters, digits, and _ . : - (not first)"
PRESENCE_STATUSES = ("online", "typing", "idle")
MAX_ATTACHMENTS = 10
ISO_MS = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"  # ISO-8601 UTC with milliseconds, as the gateway writes


def room_id() -> fields.String:
    return fields.String(required=True, validate=validate.Regexp(ROOM_ID_PATTERN, error=ROOM_ID_MESSAGE))


class AttachmentSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    url = fields.String(required=True, validate=validate.Length(min=1, max=2048))
    type = fields.String(validate=validate.Length(max=128))
    name = fields.String(validate=validate.Length(max=256))
    size = fields.Integer(strict=True, validate=validate.Range(min=0))


def attachments(**kw: bool) -> fields.List:
    return fields.List(fields.Nested(AttachmentSchema), validate=validate.Length(max=MAX_ATTACHMENTS), **kw)


def check_content(value: str, most: int) -> None:
    """A message's content: 1 to MAX_CONTENT characters. len() counts code points, which is what
    MAX_CONTENT promises (client messages and the control API's publish alike)."""
    if not 1 <= len(value) <= most:
        raise ValidationError(f"content must be 1 to {most} characters")


class ContentRule(Schema):
    """A schema whose `content` is held to MAX_CONTENT, given when the schema is made (client messages
    and the publish hook's rewrite: a backend cannot send what a client could not)."""

    def __init__(self, max_content: int = 4000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_content = max_content

    @validates("content")
    def _content_length(self, value: str, **_: Any) -> None:
        check_content(value, self.max_content)
