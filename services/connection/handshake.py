"""Whether a new connection may open, decided before any transport upgrades it.

    Handshake    what a transport read from the request: token, origin, address, start time
    Admitted     who the client is and what the revocation records say of them
    Doorman      the decision: draining, origin, token, MAX_CONNECTIONS, revocation

The WebSocket handler asks here before its upgrade; a second transport asks the same. MAX_CONNECTIONS_PER_IP
is checked earlier, when the TCP connection's first request arrives (handlers/http_server.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from services.admission import Admission
from services.auth import Identity, TokenVerifier
from services.errors import AuthError, Refused
from services.hub.control import Control
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


@dataclass(frozen=True, slots=True)
class Admitted:
    identity: Identity
    started: float
    revocations: Revocations  # what the store holds against the user (NOTHING, mostly)


class Doorman:
    def __init__(self, settings: Settings, verifier: TokenVerifier, admission: Admission, control: Control) -> None:
        self._allowed_origins = settings.allowed_origins
        self._verifier = verifier
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
        try:
            identity = self._verifier.verify(handshake.token or "")
        except AuthError as exc:
            METRICS.auth_failures.inc()
            log.info("upgrade refused", extra={"reason": str(exc), "remote": handshake.remote})
            raise Refused(401, str(exc)) from None
        refusal = self._admission.admit()
        if refusal is not None:
            METRICS.upgrades_refused.labels(str(refusal)).inc()
            raise Refused(refusal, "server is at its connection limit; try another instance or later")
        try:
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
        return Admitted(identity, handshake.started, found if found.before else NOTHING)

    def release(self) -> None:
        """The admitted connection is over (or never opened)."""
        self._admission.release()

    def origin_allowed(self, origin: str) -> bool:
        return not self._allowed_origins or origin in self._allowed_origins
