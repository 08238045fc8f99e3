"""How long a connection may live: its token's deadline, a refresh that moves it, and keepalive.

    Lifetime     one connection's deadlines on the shared TimerWheel (timers.py)
    Lifetimes    every open connection's Lifetime, and the `refresh` decision

Token: `token_expiring` TOKEN_REFRESH_NOTICE seconds before `exp` (at once for a shorter-lived
token), close 4001 at `exp` + JWT_LEEWAY; a refresh moves both. An identity from the connect hook
with `expiresAt` is not the client's to refresh: TOKEN_REFRESH_NOTICE before it the gateway asks
the hook again with the handshake's headers, and an answer for the same user moves the deadline
(`refreshed`); otherwise the socket closes 4001 at `expiresAt` (docs/hooks.md). Keepalive: every PING_INTERVAL the
transport probes the peer and the peer has PING_TIMEOUT to answer, or it is dropped as dead (a
transport whose peer cannot answer, such as a one-way stream, reports it answered).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, KeysView

from schemas.protocol import CLOSE_NORMAL, CLOSE_TOKEN_EXPIRED
from services import frames
from services.auth import Identity, TokenVerifier
from services.connection.handshake import Reask
from services.connection.timers import Deadline, TimerWheel
from services.errors import AuthError, ClientError, HookUnavailable
from services.hooks import Hooks
from services.hub.control import Control
from services.hub.tasks import TaskGroup
from services.ids import iso
from services.metrics import METRICS
from services.session import Probed, Session
from services.settings import Settings

log = logging.getLogger("gateway.connection")


REASK_RETRY = 5.0  # seconds between connect-hook re-asks while the backend does not answer


class Lifetime:
    __slots__ = ("_asked_at", "_expiry", "_keepalive", "_notice", "_owner", "_reask", "_transport", "session")

    def __init__(self, owner: Lifetimes, session: Session, transport: Probed, reask: Reask | None) -> None:
        self._owner = owner
        self.session = session
        self._transport = transport
        self._reask = reask
        self._asked_at: float | None = None  # when the connect hook was last asked again
        self._expiry: Deadline | None = None
        self._notice: Deadline | None = None
        self._keepalive: Deadline | None = None

    def watch_token(self, identity: Identity, now: float) -> None:
        s, timers = self._owner.settings, self._owner.timers
        for deadline in (self._expiry, self._notice):
            if deadline is not None:
                deadline.cancel()
        if math.isinf(identity.expires_at):  # the connect hook's identity without expiresAt
            self._expiry = self._notice = None
            return
        if self._reask is None:
            self._expiry = timers.after(identity.expires_at + s.jwt_leeway - now, self._token_expired)
            self._notice = timers.after(
                max(0.0, identity.expires_at - s.token_refresh_notice - now), self._token_expiring
            )
            return
        # The connect hook's expiresAt is the backend's word, not a JWT's: no leeway. The hook is
        # asked again at most every REASK_RETRY seconds (an answer whose expiresAt is inside
        # TOKEN_REFRESH_NOTICE would otherwise be asked again at every tick of the wheel).
        self._expiry = timers.after(identity.expires_at - now, self._token_expired)
        ask_in = max(0.0, identity.expires_at - s.token_refresh_notice - now)
        if self._asked_at is not None:
            ask_in = max(ask_in, self._asked_at + REASK_RETRY - now)
        self._notice = timers.after(ask_in, self._token_expiring) if ask_in < identity.expires_at - now else None

    def notice_again(self, after: float) -> None:
        self._notice = self._owner.timers.after(after, self._token_expiring)

    def start_keepalive(self) -> None:
        interval = self._owner.settings.ping_interval
        if interval > 0:
            self._keepalive = self._owner.timers.after(interval, self._probe)

    def stop(self) -> None:
        for deadline in (self._expiry, self._notice, self._keepalive):
            if deadline is not None:
                deadline.cancel()

    def _token_expired(self) -> None:
        self.session.close(CLOSE_TOKEN_EXPIRED, "token expired")

    def _token_expiring(self) -> None:
        """(A refresh cancels the old token's notice: the session's identity is the one due.)"""
        if self._reask is not None:
            self._asked_at = self._owner.now()
            self._owner.tasks.spawn(self._owner.reask(self, self._reask))
            return
        self.session.send(frames.encode("token_expiring", {"expiresAt": iso(self.session.identity.expires_at)}))

    def _probe(self) -> None:
        if self.session.closed or not self._transport.probe():
            return
        self._keepalive = self._owner.timers.after(self._owner.settings.ping_timeout, self._probe_due)

    def _probe_due(self) -> None:
        session = self.session
        if session.closed:
            return
        if not self._transport.probe_answered():
            log.info("ping timed out", extra={"conn": session.conn_id})
            session.close(CLOSE_NORMAL, "ping timed out", flush=False)  # a dead peer reads nothing more
            return
        s = self._owner.settings
        self._keepalive = self._owner.timers.after(s.ping_interval - s.ping_timeout, self._probe)


class Lifetimes:
    def __init__(
        self,
        settings: Settings,
        timers: TimerWheel,
        verifier: TokenVerifier,
        control: Control,
        hooks: Hooks,
        tasks: TaskGroup,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock`: Unix time (tokens' `exp` are Unix times); a test gives a fake one with the wheel's."""
        self.settings = settings
        self.timers = timers
        self.tasks = tasks
        self._verifier = verifier
        self._control = control
        self._hooks = hooks
        self._clock = clock
        self._lives: dict[Session, Lifetime] = {}

    def sessions(self) -> KeysView[Session]:
        return self._lives.keys()

    def now(self) -> float:
        return self._clock()

    def begin(self, session: Session, transport: Probed, reask: Reask | None = None) -> None:
        self._lives[session] = Lifetime(self, session, transport, reask)

    def watch(self, session: Session) -> None:
        """Start the deadlines of a session the hub accepted."""
        life = self._lives[session]
        life.watch_token(session.identity, self._clock())
        life.start_keepalive()

    def end(self, session: Session) -> None:
        life = self._lives.pop(session, None)
        if life is not None:
            life.stop()

    async def refresh(self, session: Session, token: str, request_id: str | None) -> None:
        """`refresh {token}`: a token that verifies like a handshake's (revocations included) and
        names the same user replaces the connection's; anything else is invalid_token and changes
        nothing (docs/protocol.md, "Token refresh")."""
        try:
            identity = self._verifier.verify(token)
        except AuthError as exc:
            METRICS.token_refreshes.labels("invalid").inc()
            raise ClientError("invalid_token", str(exc)) from None
        if identity.user_id != session.user_id:
            METRICS.token_refreshes.labels("other_user").inc()
            raise ClientError("invalid_token", "the token names another user")
        if (await self._control.load(identity.user_id)).refuses(identity.issued_at):
            METRICS.token_refreshes.labels("revoked").inc()
            raise ClientError("invalid_token", "token revoked")
        life = self._lives.get(session)
        if session.closed or life is None:
            return
        METRICS.token_refreshes.labels("ok").inc()
        life.watch_token(identity, self._clock())
        session.send(frames.encode("refreshed", {"expiresAt": iso(identity.expires_at)}, request_id))
        self._control.reauthorize(session, identity)

    async def reask(self, life: Lifetime, reask: Reask) -> None:
        """The connect hook asked again before `expiresAt`: the same user with a later expiresAt moves
        the deadline; a refusal, another user or the same expiresAt lets it close 4001 then; no answer
        is asked again every REASK_RETRY seconds while there is time."""
        session = life.session
        try:
            identity = await self._hooks.connect(reask.caller, reask.headers, reask.query)
        except HookUnavailable:
            left = session.identity.expires_at - self._clock()
            if left > REASK_RETRY and not session.closed:
                life.notice_again(REASK_RETRY)
            return
        if (
            isinstance(identity, Identity)
            and identity.user_id == session.user_id
            and identity.expires_at > session.identity.expires_at
            and self._lives.get(session) is life
        ):
            METRICS.token_refreshes.labels("ok").inc()
            life.watch_token(identity, self._clock())
            if not math.isinf(identity.expires_at):  # (an answer without expiresAt: no deadline any more)
                session.send(frames.encode("refreshed", {"expiresAt": iso(identity.expires_at)}))
            self._control.reauthorize(session, identity)
        elif not isinstance(identity, Identity):
            METRICS.token_refreshes.labels("invalid").inc()
        elif identity.user_id != session.user_id:
            METRICS.token_refreshes.labels("other_user").inc()
        else:  # the same or an earlier expiresAt, or the connection ended meanwhile
            METRICS.token_refreshes.labels("not_later").inc()
