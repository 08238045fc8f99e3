"""What the schemas do not say, one line per name (after docs/protocol.md and docs/kafka.md),
and the check that a new frame or event type gets its line."""

from __future__ import annotations

from marshmallow import Schema

from schemas import events
from schemas.protocol import CLIENT_TYPES, SERVER_TYPES, Retry

CLIENT_FRAMES: dict[str, str] = {
    "join": "Join a room; with `since: {offset, epoch}`, recover what was missed.",
    "leave": "Leave a room.",
    "message": "Send a message to a joined room.",
    "presence": "Announce a status in a joined room: online, typing or idle.",
    "presence_query": "Ask for a page of a joined room's online members.",
    "history": "Ask for the latest entries of a joined room's history.",
    "refresh": "Hand the socket a new token for the same user before the current one expires.",
    "rpc": "Ask the application's backend (RPC_HOOK_URL): a method and any JSON data (docs/hooks.md).",
    "ping": "An application-level ping (browsers cannot send WebSocket ping frames).",
}
SERVER_FRAMES: dict[str, str] = {
    "message": "A message in a joined room: a history entry, with its offset and epoch.",
    "message_updated": "A message was edited (Kafka message.updated): a history entry.",
    "message_deleted": "A message was deleted (Kafka message.deleted): a history entry.",
    "ack": "To the sender: its message was accepted (and durable, with Kafka).",
    "room_update": "The socket's membership or the room changed: joined, left, removed, deleted, updated.",
    "presence": "A member's status changed: online, typing, idle, offline.",
    "presence_state": "A page of the room's online members (the first page replaces the list).",
    "presence_count": "The room's online count, instead of per-user presence, in a room above the limit.",
    "history": "The latest entries of the room's history, oldest first.",
    "token_expiring": "The token expires soon: send `refresh` with a new one.",
    "refreshed": "An accepted `refresh`: the new token's exp, the socket's new deadline.",
    "rpc_result": "The backend's answer to `rpc`: the method and the answer's data.",
    "pong": "The answer to `ping`.",
    "error": "A refused frame. An error never closes the socket by itself.",
}
# A client frame -> the frame that answers it with the frame's requestId (besides `error`).
REPLIES: dict[str, str] = {
    "join": "room_update",
    "leave": "room_update",
    "message": "ack",
    "presence_query": "presence_state",
    "history": "history",
    "refresh": "refreshed",
    "rpc": "rpc_result",
    "ping": "pong",
}
RETRY_MEANING: dict[Retry, str] = {
    Retry.RECONNECT: "reconnect with backoff, to any instance",
    Retry.REFRESH: "get a new token, then reconnect",
    Retry.GIVE_UP: "do not reconnect: the same connection would be refused again",
}
# Event type -> (payload schema, what it is or what the gateway does with it).
EVENTS: dict[str, tuple[type[Schema], str]] = {
    events.MESSAGE_INGEST: (events.MessagePayload, "A client message, written before anyone sees it (durable ack)."),
    events.MESSAGE_CREATED: (events.CONSUMED[events.MESSAGE_CREATED], "Delivered to the room as `message`."),
    events.MESSAGE_UPDATED: (events.CONSUMED[events.MESSAGE_UPDATED], "Delivered to the room as `message_updated`."),
    events.MESSAGE_DELETED: (events.CONSUMED[events.MESSAGE_DELETED], "Delivered to the room as `message_deleted`."),
    events.ROOM_UPDATED: (
        events.CONSUMED[events.ROOM_UPDATED],
        "Delivered as `room_update` action updated, every field but roomId under `changes`.",
    ),
    events.ROOM_DELETED: (
        events.CONSUMED[events.ROOM_DELETED],
        "Delivered as `room_update` action deleted; then every member leaves the room.",
    ),
    events.MEMBER_REMOVED: (
        events.CONSUMED[events.MEMBER_REMOVED],
        "The user's sockets get `room_update` action removed and leave the room; older tokens may not re-join it.",
    ),
    events.USER_DISCONNECTED: (
        events.CONSUMED[events.USER_DISCONNECTED],
        "Every socket of the user, on every instance, is closed with 4003.",
    ),
    events.USER_TOKENS_REVOKED: (
        events.CONSUMED[events.USER_TOKENS_REVOKED],
        "The user's tokens issued before issuedBefore are refused; their sockets are closed with 4003.",
    ),
    events.USER_ONLINE: (events.UserOnlinePayload, "A user not announced online opened a socket on any instance."),
    events.USER_OFFLINE: (
        events.UserOfflinePayload,
        "A user announced online has had no socket on any instance for OFFLINE_GRACE seconds.",
    ),
}
# (setting, channel key, the gateway's action, event types, record key), as docs/kafka.md, "Topics".
TOPICS: tuple[tuple[str, str, str, tuple[str, ...], str], ...] = (
    ("kafka_topic_ingest", "ingest", "send", (events.MESSAGE_INGEST,), "roomId"),
    (
        "kafka_topic_message_events",
        "messageEvents",
        "receive",
        (events.MESSAGE_CREATED, events.MESSAGE_UPDATED, events.MESSAGE_DELETED),
        "roomId",
    ),
    (
        "kafka_topic_room_events",
        "roomEvents",
        "receive",
        (events.ROOM_UPDATED, events.ROOM_DELETED, events.MEMBER_REMOVED),
        "roomId",
    ),
    (
        "kafka_topic_user_events",
        "userEvents",
        "receive",
        (events.USER_DISCONNECTED, events.USER_TOKENS_REVOKED),
        "userId",
    ),
    ("kafka_topic_presence_events", "presenceEvents", "send", (events.USER_ONLINE, events.USER_OFFLINE), "userId"),
)


def check_tables() -> None:
    """Every name in schemas/ has its line above: a new frame or event type must be described."""
    for what, names, table in (
        ("CLIENT_FRAMES", CLIENT_TYPES, CLIENT_FRAMES),
        ("SERVER_FRAMES", SERVER_TYPES, SERVER_FRAMES),
        ("RETRY_MEANING", tuple(Retry), RETRY_MEANING),
    ):
        if set(names) != set(table):
            raise ValueError(f"docgen/asyncapi/tables.py: {what} does not match schemas/protocol.py")
    if not set(REPLIES) <= set(CLIENT_TYPES) or not set(REPLIES.values()) <= set(SERVER_TYPES):
        raise ValueError("docgen/asyncapi/tables.py: REPLIES names a frame type schemas/protocol.py does not")
    on_topics = [t for *_, types, _key in TOPICS for t in types]
    if sorted(on_topics) != sorted(EVENTS) or len(set(on_topics)) != len(on_topics):
        raise ValueError("docgen/asyncapi/tables.py: each event type of EVENTS must be on exactly one topic")
