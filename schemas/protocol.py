"""The protocol's names, in one place (docs/protocol.md): frame types, error codes, close codes
with their reason and what a client should do, bus channels and store keys.

The schemas validate frames with these names; the hub, the handlers, the Python SDK
(client/realtime_gateway_client/sdk.py) and the demo page (handlers/static/demo.js) use them, and
tests/test_protocol_names.py checks that the SDK and the page agree with this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

CLIENT_TYPES = ("join", "leave", "message", "presence", "presence_query", "history", "refresh", "rpc", "ping")
SERVER_TYPES = (
    "message",
    "message_updated",
    "message_deleted",
    "ack",
    "room_update",
    "presence",
    "presence_state",
    "presence_count",
    "history",
    "token_expiring",
    "refreshed",
    "rpc_result",
    "pong",
    "error",
)
ERROR_CODES = (
    "invalid_json",
    "invalid_frame",
    "unknown_type",
    "validation_failed",
    "not_in_room",
    "forbidden_room",
    "too_many_rooms",
    "rate_limited",
    "ingest_failed",
    "unavailable",
    "invalid_token",
    "rejected",
    "rpc_failed",
    "not_enabled",
    "internal",
)
# The HTTP transport (docs/protocol.md, "HTTP transport"): its paths, the header naming the session,
# and its own events, the stream's first and last.
TRANSPORTS = ("websocket", "sse")  # what carries a session's frames (metrics' `transport` label, hooks' calls)
STREAM_PATH = "/sse"
SEND_PATH = "/sse/send"
SESSION_HEADER = "X-Session-Id"
STREAM_EVENTS = ("session", "closed")
ROOM_ACTIONS = ("joined", "left", "removed", "deleted", "updated")
# Errors caused by what the client sent; more than INVALID_FRAME_LIMIT of them in a minute is 1008.
ABUSE_CODES = frozenset({"invalid_json", "invalid_frame", "unknown_type", "validation_failed", "rate_limited"})


# -- close codes -------------------------------------------------------------------------------


class Retry(Enum):
    """What a client should do after a close."""

    RECONNECT = "reconnect"  # with backoff, to any instance
    REFRESH = "refresh"  # get a new token, then reconnect
    GIVE_UP = "give up"  # the same connection would be refused again


@dataclass(frozen=True, slots=True)
class CloseCode:
    code: int
    reason: str
    retry: Retry


CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_RESTART = 1012
CLOSE_TOKEN_EXPIRED = 4001
CLOSE_REVOKED = 4003
CLOSE_SLOW = 4008
CLOSE_TOO_MANY_CONNECTIONS = 4029

CLOSE_CODES: dict[int, CloseCode] = {
    c.code: c
    for c in (
        CloseCode(CLOSE_NORMAL, "normal", Retry.RECONNECT),
        CloseCode(
            CLOSE_PROTOCOL_ERROR, "a frame broke RFC 6455 (unmasked, reserved bits, bad control frame)", Retry.GIVE_UP
        ),
        CloseCode(CLOSE_INVALID_DATA, "a text frame that is not UTF-8", Retry.GIVE_UP),
        CloseCode(CLOSE_POLICY, "repeated invalid or rate-limited frames", Retry.GIVE_UP),
        CloseCode(CLOSE_TOO_BIG, "a frame over MAX_MESSAGE_BYTES", Retry.GIVE_UP),
        CloseCode(CLOSE_INTERNAL, "internal error", Retry.RECONNECT),
        CloseCode(CLOSE_RESTART, "the instance is restarting (drain)", Retry.RECONNECT),
        CloseCode(CLOSE_TOKEN_EXPIRED, "the token expired", Retry.REFRESH),
        CloseCode(CLOSE_REVOKED, "revoked: the user was disconnected or the token revoked", Retry.GIVE_UP),
        CloseCode(CLOSE_SLOW, "slow consumer: the outbound queue passed its bound", Retry.RECONNECT),
        CloseCode(CLOSE_TOO_MANY_CONNECTIONS, "too many connections for this user", Retry.GIVE_UP),
    )
}


# -- bus channels ------------------------------------------------------------------------------


class ChannelKind(Enum):
    ROOM = "room"
    CONTROL = "control"
    RELAY = "relay"


@dataclass(frozen=True, slots=True)
class Channel:
    """A bus channel: a room's events, or the control plane's (every instance). `key` is what the
    bus carries; the hub keeps the Channel it subscribed, so nothing is parsed back from a key."""

    kind: ChannelKind
    name: str

    @property
    def key(self) -> str:
        return f"{self.kind.value}:{self.name}"


def room_channel(room: str) -> Channel:
    return Channel(ChannelKind.ROOM, room)


def control_channel() -> Channel:
    """The control plane's actions on users (disconnect, revoke, remove from a room): every instance
    listens from start to stop, so none misses one while a socket of the user is being opened."""
    return Channel(ChannelKind.CONTROL, "all")


def relay_channel(route: str) -> Channel:
    """One instance's own channel: frames posted to another instance for an HTTP-transport session
    held here, and the answers to the ones it forwarded (services/sse/relay.py)."""
    return Channel(ChannelKind.RELAY, route)


# -- store keys ----------------------------------------------------------------------------------
# The dedupe store holds three kinds of key; each is written by one component and read by another.


def dedupe_key(sender: str, room: str, key: str) -> str:
    """A client's dedupeKey, scoped to (sender, room). Length-prefixed: user "a" with key "b:c" is
    not user "a:b" with key "c"."""
    return f"dk:{len(sender)}:{sender}:{len(room)}:{room}:{key}"


def broadcast_id_key(message_id: str) -> str:
    """Written by the hub before a client message's ingest, so the Kafka consumer does not deliver
    the same message again when it comes back as message.created."""
    return f"id:{message_id}"


def event_key(event_id: str) -> str:
    """Written by the Kafka consumer: an event already handed to the bus (at-least-once delivery)."""
    return f"ev:{event_id}"
