"""Python async client SDK for the Realtime Gateway (and `python -m client` on top of it).

No dependency beyond tornado, which the gateway already needs.
"""

from client.events import (
    Ack,
    Attachment,
    Connected,
    Disconnected,
    ErrorEvent,
    Event,
    Member,
    Message,
    MessageDeleted,
    MessageUpdated,
    Pong,
    Presence,
    PresenceState,
    RoomUpdate,
    Unknown,
    parse_event,
)
from client.sdk import (
    AckTimeout,
    AuthError,
    Backoff,
    ClientError,
    ConnectError,
    ConnectionClosed,
    ConnectionLost,
    GatewayClient,
    GatewayError,
    TokenSource,
)

__all__ = [
    "Ack",
    "AckTimeout",
    "Attachment",
    "AuthError",
    "Backoff",
    "ClientError",
    "ConnectError",
    "Connected",
    "ConnectionClosed",
    "ConnectionLost",
    "Disconnected",
    "ErrorEvent",
    "Event",
    "GatewayClient",
    "GatewayError",
    "Member",
    "Message",
    "MessageDeleted",
    "MessageUpdated",
    "Pong",
    "Presence",
    "PresenceState",
    "RoomUpdate",
    "TokenSource",
    "Unknown",
    "parse_event",
]
