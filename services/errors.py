"""Every exception the gateway raises on purpose, in one hierarchy (python-websockets style), so a
reader finds them in one place and each boundary can catch exactly what it expects.

    GatewayError
    ├── ConfigError      bad configuration: one line on stderr, exit code 2 (server.py)
    ├── StartupError     a configured dependency is unusable at start: exit code 2
    ├── AuthError        a token that cannot be accepted: HTTP 401 (message safe to show, no token in it)
    ├── Refused          a connection refused before its upgrade: an HTTP status (401, 403, 503, ...)
    ├── ClientError      an expected refusal of a frame: an `error` frame, never a close
    ├── IngestError      Kafka did not take a message: the sender gets `ingest_failed`
    ├── BusError         the bus could not subscribe or publish (Redis unreachable)
    ├── StoreError       a shared store (presence, dedupe) could not be reached
    ├── HookUnavailable  the application's backend gave no usable answer: `unavailable` (retryable)
    └── InvalidRecord    a Kafka record that cannot be delivered: logged, counted, skipped
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base of the gateway's own exceptions."""


class ConfigError(GatewayError):
    """Bad configuration: reported as one line on stderr and exit code 2."""


class StartupError(GatewayError):
    """A dependency the configuration asks for is not usable at start (exit code 2)."""


class AuthError(GatewayError):
    """A token that cannot be accepted; the message is safe to show the client (no token in it)."""


class ClientError(GatewayError):
    """An expected refusal, answered with an `error` frame (never a close)."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


class IngestError(GatewayError):
    """The message could not be made durable; the client gets ingest_failed."""


class BusError(GatewayError):
    """The bus could not subscribe or publish (Redis unreachable)."""


class StoreError(GatewayError):
    """A shared store (Redis) could not be reached; the store logs once per change of state.
    Presence answers from this instance instead (presence/fallback.py); a message, a join or a
    history read that needs Redis is refused as `unavailable` (retryable)."""


class HookUnavailable(GatewayError):
    """The backend did not answer usably (timeout, refused connection, a 5xx, an answer that does not
    load, HOOK_CONCURRENCY reached); logged once per episode by the hook client (docs/hooks.md)."""


class InvalidRecord(GatewayError):
    """A Kafka record that cannot be delivered; the reason never contains the record's content."""


class Refused(GatewayError):
    """A connection refused before it is upgraded (or its stream starts): an HTTP status and a
    message safe to show the client, sent as `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
