"""Whether a new connection may open, decided before any transport upgrades it.

    Handshake    what a transport read from the request: token, origin, address, start time, headers
    Admitted     who the client is and what the revocation records say of them
    Doorman      the decision: draining, origin, token or connect hook, MAX_CONNECTIONS, revocation

The WebSocket handler asks here before its upgrade; a second transport asks the same. MAX_CONNECTIONS_PER_IP
is checked earlier, when the TCP connection's first request arrives (handlers/http_server.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.admission import Admission
from services.auth import Identity, TokenVerifier
from services.errors import AuthError, HookUnavailable, Refused
from services.hooks import Caller, Hooks, Refusal
from services.hub.control import Control
from services.ids import short_id
from services.metrics import METRICS
from services.revocation import NOTHING, Revocations
from services.settings import Settings

log = logging.getLogger("gateway.connection")


@dataclass(frozen=True, slots=True)
class Handshake:
    token: str | None
    origin: str | None  # None: not a browser, not subject to ALLOWED_ORIGINS
    remote: str
    started: float  # Unix time the request arrived: control-plane actions since then apply to it
    headers: Mapping[str, str] = field(default_factory=dict)  # case-insensitive (the connect hook's)
    query: Mapping[str, list[bytes]] = field(default_factory=dict)  # as parsed; decoded only for the hook
    transport: str = "websocket"


@dataclass(frozen=True, slots=True)
class Reask:
    """What the connect hook is sent again before its `expiresAt` (docs/hooks.md, "connect")."""

    caller: Caller
    headers: dict[str, str]
    query: dict[str, str]


@dataclass(frozen=True, slots=True)
class Admitted:
    identity: Identity
    started: float
    revocations: Revocations  # what the store holds against the user (NOTHING, mostly)
    conn_id: str = ""
    remote: str = ""
    transport: str = "websocket"
    reask: Reask | None = None  # the connect hook's identity with an expiry: asked again before it


class Doorman:
    def __init__(
        self, settings: Settings, verifier: TokenVerifier, admission: Admission, control: Control, hooks: Hooks
    ) -> None:
        self._allowed_origins = settings.allowed_origins
        self._verifier = verifier
        self._hooks = hooks
        self._admission = admission
        self._control = control
        self.draining = False

    async def admit(self, handshake: Handshake) -> Admitted:
        """Admitted, holding one of MAX_CONNECTIONS until `release`; or Refused with the HTTP
        status of docs/protocol.md ("Handshake")."""
        if self.draining:
            raise Refused(503, "server is shutting down")
        if handshake.origin is not None and not self.origin_allowed(handshake.origin):
            raise Refused(403, "origin not allowed")
        conn_id, reask = short_id(), None
        by_hook = handshake.token is None and self._hooks.connect_url is not None
        if not by_hook:
            try:
                identity = self._verifier.verify(handshake.token or "")
            except AuthError as exc:
                METRICS.auth_failures.inc()
                log.info("upgrade refused", extra={"reason": str(exc), "remote": handshake.remote})
                raise Refused(401, str(exc)) from None
        refusal = self._admission.admit()  # before the connect hook: a full instance asks nobody
        if refusal is not None:
            METRICS.upgrades_refused.labels(str(refusal)).inc()
            raise Refused(refusal, "server is at its connection limit; try another instance or later")
        try:
            if by_hook:
                identity, reask = await self._ask(conn_id, handshake)
            found = await self._control.load(identity.user_id)
        except BaseException:
            self._admission.release()
            raise
        if found.refuses(identity.issued_at):
            self._admission.release()
            METRICS.auth_failures.inc()
            METRICS.revoked_upgrades.inc()
            log.info("upgrade refused", extra={"reason": "token revoked", "remote": handshake.remote})
            raise Refused(401, "token revoked")
        revocations = found if found.before else NOTHING
        return Admitted(identity, handshake.started, revocations, conn_id, handshake.remote, handshake.transport, reask)

    async def _ask(self, conn_id: str, handshake: Handshake) -> tuple[Identity, Reask | None]:
        """The connect hook's identity: its refusal is 401 (403 when it said 403), no answer 503."""
        caller = Caller(conn_id, handshake.remote, handshake.transport)
        headers = self._hooks.forwarded(handshake.headers)
        query = {name: values[-1].decode("utf-8", "replace") for name, values in handshake.query.items() if values}
        try:
            answer = await self._hooks.connect(caller, headers, query)
        except HookUnavailable:
            raise Refused(503, "authentication backend unavailable; try again later") from None
        if isinstance(answer, Refusal):
            METRICS.auth_failures.inc()
            log.info("upgrade refused", extra={"reason": "connect hook refused", "remote": handshake.remote})
            raise Refused(403 if answer.status == 403 else 401, answer.error)
        expires = answer.expires_at != math.inf
        return answer, Reask(caller, headers, query) if expires else None

    def release(self) -> None:
        """The admitted connection is over (or never opened)."""
        self._admission.release()

    def origin_allowed(self, origin: str) -> bool:
        return not self._allowed_origins or origin in self._allowed_origins
