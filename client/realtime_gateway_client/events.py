"""Typed events: every server frame becomes one frozen dataclass, so callers match on classes and
fields instead of poking at JSON. Unknown fields are ignored and unknown frame types arrive as
`Unknown`, so a newer gateway does not break an older client."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "Ack",
    "Attachment",
    "Connected",
    "Disconnected",
    "ErrorEvent",
    "Event",
    "History",
    "Member",
    "MembersChanged",
    "Message",
    "MessageDeleted",
    "MessageUpdated",
    "Pong",
    "Presence",
    "PresenceCount",
    "PresenceState",
    "Recovery",
    "RefreshFailed",
    "Refreshed",
    "RoomUpdate",
    "TokenExpiring",
    "Unknown",
    "parse_event",
    "parse_time",
]


def parse_time(value: object) -> datetime | None:
    """ISO-8601 (`...Z`) to an aware UTC datetime; None when absent or unparseable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Attachment:
    url: str
    type: str | None = None
    name: str | None = None
    size: int | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url}
        for key in ("type", "name", "size"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    room_id: str
    sender_type: str
    sender_id: str
    content: str
    created_at: datetime
    attachments: tuple[Attachment, ...] = ()
    dedupe_key: str | None = None
    offset: int | None = None  # the message's place in the room's history (None: history off)
    epoch: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class MessageUpdated:
    id: str
    room_id: str
    content: str | None = None
    attachments: tuple[Attachment, ...] | None = None
    updated_at: datetime | None = None
    offset: int | None = None
    epoch: str | None = None


@dataclass(frozen=True, slots=True)
class MessageDeleted:
    id: str
    room_id: str
    deleted_at: datetime | None = None
    offset: int | None = None
    epoch: str | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    id: str
    room_id: str
    created_at: datetime
    dedupe_key: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class RoomUpdate:
    room_id: str
    action: str  # joined | left | removed | deleted | updated
    recovered: bool | None = None
    changes: dict[str, Any] | None = None
    request_id: str | None = None
    offset: int | None = None  # on `joined`: the room's position in its history
    epoch: str | None = None


@dataclass(frozen=True, slots=True)
class Member:
    user_id: str
    status: str
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class PresenceState:
    """A page of a room's members, sorted by user id; `count` users in all; `next` is the cursor of
    the following page (None on the last), for GatewayClient.presence_query."""

    room_id: str
    members: tuple[Member, ...]
    count: int | None = None
    next: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class PresenceCount:
    """How many users a large room has (sent instead of per-user presence above the gateway's limit)."""

    room_id: str
    count: int


@dataclass(frozen=True, slots=True)
class Presence:
    room_id: str
    user_id: str
    status: str  # online | typing | idle | offline
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Pong:
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class TokenExpiring:
    """The token expires at `expires_at`; the client refreshes through its token source, if any."""

    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Refreshed:
    """The gateway took a new token: the socket now lives until `expires_at`."""

    expires_at: datetime
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class RpcResult:
    """The backend's answer to an `rpc` (docs/hooks.md): any JSON value, None when it gave none."""

    method: str
    data: Any
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    code: str
    message: str
    room_id: str | None = None
    dedupe_key: str | None = None
    details: Any = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class History:
    """The reply to history(): the room's position and its latest entries, oldest first."""

    room_id: str
    offset: int | None
    epoch: str | None
    entries: tuple[Message | MessageUpdated | MessageDeleted | Unknown, ...]
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Recovery:
    """What a join with `since` (or a live entry) says of a room's history. `recovered` True: the
    gateway replays what this client missed, and the entries follow. False: entries were missed
    that the gateway could not replay, after a reconnect (the history no longer holds them, or its
    epoch changed) or while connected (an offset skipped); fetch them from the chat backend. Live
    messages continue after `offset` / `epoch` (None: the gateway could not tell where the room
    stands). The JavaScript client's `recovery` event, in the same place: before the join's reply,
    or before the entry that revealed the loss."""

    room_id: str
    recovered: bool
    offset: int | None
    epoch: str | None


@dataclass(frozen=True, slots=True)
class MembersChanged:
    """The client's list of a room's online members changed (GatewayClient.members): who appeared,
    who went, how many are online in the room, whether the list holds them all (False in a paged
    or large room), and what changed it: `snapshot` (the list sent after a join), `presence` (one
    user's frame) or `count` (a large room's count). After the frame that changed it; JavaScript:
    `members_changed`."""

    room_id: str
    joined: tuple[str, ...]
    left: tuple[str, ...]
    count: int
    complete: bool
    source: str


@dataclass(frozen=True, slots=True)
class RefreshFailed:
    """A refresh with a token from the provider failed (refused, or the provider raised): the socket
    keeps its old token and closes 4001 at its expiry, then reconnects with a fresh one."""

    error: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """A frame type this client does not know yet."""

    type: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Connected:
    """The socket is open (and, after a reconnect, every room is joined again)."""

    reconnected: bool
    rooms: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The socket closed. `retry_in` is the backoff delay before the next attempt, None when the
    client gives up (fatal close code, auth refused, or close() was called)."""

    code: int | None
    reason: str
    retry_in: float | None

    @property
    def will_reconnect(self) -> bool:
        return self.retry_in is not None


Event = (
    Message
    | MessageUpdated
    | MessageDeleted
    | Ack
    | RoomUpdate
    | PresenceState
    | PresenceCount
    | Presence
    | Pong
    | TokenExpiring
    | Refreshed
    | RpcResult
    | ErrorEvent
    | History
    | Recovery
    | MembersChanged
    | RefreshFailed
    | Unknown
    | Connected
    | Disconnected
)


def _str(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    return value if isinstance(value, str) else ""


def _opt_str(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    return value if isinstance(value, str) else None


def _opt_int(payload: dict[str, Any], key: str) -> int | None:
    value = payload.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _attachments(value: object) -> tuple[Attachment, ...]:
    if not isinstance(value, list):
        return ()
    out = []
    for item in value:
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            size = item.get("size")
            out.append(
                Attachment(
                    url=item["url"],
                    type=_opt_str(item, "type"),
                    name=_opt_str(item, "name"),
                    size=size if isinstance(size, int) else None,
                )
            )
    return tuple(out)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_event(frame: dict[str, Any]) -> Event:
    """One decoded server frame to its event class."""
    kind = frame.get("type")
    raw_payload = frame.get("payload")
    p: dict[str, Any] = raw_payload if isinstance(raw_payload, dict) else {}
    rid = frame.get("requestId") if isinstance(frame.get("requestId"), str) else None
    if kind == "message":
        return Message(
            id=_str(p, "id"),
            room_id=_str(p, "roomId"),
            sender_type=_str(p, "senderType"),
            sender_id=_str(p, "senderId"),
            content=_str(p, "content"),
            created_at=parse_time(p.get("createdAt")) or _EPOCH,
            attachments=_attachments(p.get("attachments")),
            dedupe_key=_opt_str(p, "dedupeKey"),
            offset=_opt_int(p, "offset"),
            epoch=_opt_str(p, "epoch"),
            raw=p,
        )
    if kind == "ack":
        return Ack(
            id=_str(p, "id"),
            room_id=_str(p, "roomId"),
            created_at=parse_time(p.get("createdAt")) or _EPOCH,
            dedupe_key=_opt_str(p, "dedupeKey"),
            request_id=rid,
        )
    if kind == "room_update":
        changes = p.get("changes")
        recovered = p.get("recovered")
        return RoomUpdate(
            room_id=_str(p, "roomId"),
            action=_str(p, "action"),
            recovered=recovered if isinstance(recovered, bool) else None,
            changes=changes if isinstance(changes, dict) else None,
            request_id=rid,
            offset=_opt_int(p, "offset"),
            epoch=_opt_str(p, "epoch"),
        )
    if kind == "presence_state":
        members = p.get("members")
        return PresenceState(
            room_id=_str(p, "roomId"),
            members=tuple(
                Member(user_id=_str(m, "userId"), status=_str(m, "status"), since=parse_time(m.get("since")))
                for m in (members if isinstance(members, list) else [])
                if isinstance(m, dict)
            ),
            count=_opt_int(p, "count"),
            next=_opt_str(p, "next"),
            request_id=rid,
        )
    if kind == "presence_count":
        return PresenceCount(room_id=_str(p, "roomId"), count=_opt_int(p, "count") or 0)
    if kind == "presence":
        return Presence(
            room_id=_str(p, "roomId"),
            user_id=_str(p, "userId"),
            status=_str(p, "status"),
            at=parse_time(p.get("at")),
        )
    if kind == "message_updated":
        return MessageUpdated(
            id=_str(p, "id"),
            room_id=_str(p, "roomId"),
            content=_opt_str(p, "content"),
            attachments=_attachments(p["attachments"]) if "attachments" in p else None,
            updated_at=parse_time(p.get("updatedAt")),
            offset=_opt_int(p, "offset"),
            epoch=_opt_str(p, "epoch"),
        )
    if kind == "message_deleted":
        return MessageDeleted(
            id=_str(p, "id"),
            room_id=_str(p, "roomId"),
            deleted_at=parse_time(p.get("deletedAt")),
            offset=_opt_int(p, "offset"),
            epoch=_opt_str(p, "epoch"),
        )
    if kind == "history":
        entries = p.get("entries")
        parsed = [parse_event(e) for e in (entries if isinstance(entries, list) else []) if isinstance(e, dict)]
        return History(
            room_id=_str(p, "roomId"),
            offset=_opt_int(p, "offset"),
            epoch=_opt_str(p, "epoch"),
            entries=tuple(e for e in parsed if isinstance(e, Message | MessageUpdated | MessageDeleted | Unknown)),
            request_id=rid,
        )
    if kind == "pong":
        return Pong(request_id=rid)
    if kind == "token_expiring":
        return TokenExpiring(expires_at=parse_time(p.get("expiresAt")) or _EPOCH)
    if kind == "refreshed":
        return Refreshed(expires_at=parse_time(p.get("expiresAt")) or _EPOCH, request_id=rid)
    if kind == "rpc_result":
        return RpcResult(method=_str(p, "method"), data=p.get("data"), request_id=rid)
    if kind == "error":
        return ErrorEvent(
            code=_str(p, "code"),
            message=_str(p, "message"),
            room_id=_opt_str(p, "roomId"),
            dedupe_key=_opt_str(p, "dedupeKey"),
            details=p.get("details"),
            request_id=rid,
        )
    return Unknown(type=str(kind), payload=p)
