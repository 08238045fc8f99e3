"""What the application's backend answers a hook (docs/hooks.md), one schema per hook.

    ConnectAnswer   {userId, rooms?, expiresAt?}
    JoinAnswer      {allow, reason?}
    PublishAnswer   {allow?, content?, attachments?, reason?}
    RpcAnswer       {data?}
    RefusalBody     {error, code?}: the body of a 401, 403, 404, 409 or 422

An answer that does not load is `unavailable`, like a backend that did not answer: the gateway never
acts on a half-understood decision. Unknown fields are ignored (a backend may add its own).
"""

from __future__ import annotations

import datetime
import math
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates

from schemas.common import attachments, check_content

REASON_CHARS = 512  # a refusal's reason or error, shown to the client


class _Answer(Schema):
    class Meta:
        unknown = EXCLUDE


class Moment(fields.Field):
    """ISO-8601 (an offset or `Z`; naive means UTC) or Unix seconds, as a float of Unix time."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and len(value) <= 64:
            try:
                parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValidationError("expected ISO-8601 or Unix seconds") from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=datetime.UTC)
            seconds = parsed.timestamp()
        else:
            raise ValidationError("expected ISO-8601 or Unix seconds")
        if not math.isfinite(seconds) or not 0 < seconds < 253402300799:  # up to 9999-12-31
            raise ValidationError("not a representable moment")
        return seconds


class StrictBoolean(fields.Field):
    """`true` or `false` only: a backend answering `"no"` or `0` is not understood, not taken as yes."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("expected true or false")
        return value


class ConnectAnswer(_Answer):
    userId = fields.String(required=True, validate=validate.Length(min=1, max=128))
    rooms = fields.List(fields.String(validate=validate.Length(min=1, max=256)), validate=validate.Length(max=10000))
    expiresAt = Moment()


class JoinAnswer(_Answer):
    allow = StrictBoolean(required=True)
    reason = fields.String(validate=validate.Length(max=REASON_CHARS))


class PublishAnswer(_Answer):
    """`{}` sends the message as it is; content and attachments replace the client's and are held to
    the same rules (MAX_CONTENT, at most 10 attachments)."""

    allow = StrictBoolean(load_default=True)
    content = fields.String()
    attachments = attachments()
    reason = fields.String(validate=validate.Length(max=REASON_CHARS))

    def __init__(self, max_content: int = 4000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_content = max_content

    @validates("content")
    def _content_length(self, value: str, **_: Any) -> None:
        check_content(value, self.max_content)


class RpcAnswer(_Answer):
    data = fields.Raw(load_default=None, allow_none=True)


class RefusalBody(_Answer):
    error = fields.String(required=True)
    code = fields.String(validate=validate.Length(max=64))
