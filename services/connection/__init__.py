"""Connections: the one interface a transport calls, whatever carries the frames.

A transport (handlers/socket.py for WebSockets) parses nothing and decides nothing: it reads a
request into a `Handshake`, writes what it is told, and reports what arrives:

    admit(handshake)        -> Admitted, or Refused(status, message) before any upgrade
    open(admitted, transport) -> the Session, registered with the hub and its deadlines running
    receive(session, frame) / control(session, ping, data)
    closed(session)         the transport is gone: the hub forgets the session in the background
    release()               the admitted connection is over (after `closed`, or it never opened)

Inside: handshake.py (who may connect), lifetime.py (token deadline, refresh, keepalive),
inbound.py (a frame to the hub), timers.py (the deadlines' wheel).
"""

from __future__ import annotations

import logging
from collections.abc import KeysView

from services.admission import Admission
from services.auth import TokenVerifier
from services.connection.handshake import Admitted, Doorman, Handshake
from services.connection.inbound import Inbound
from services.connection.lifetime import Lifetimes
from services.connection.timers import TimerWheel, wheel_tick
from services.hooks import Hooks
from services.hub import RoomHub
from services.ids import short_id
from services.metrics import METRICS
from services.session import Probed, Session
from services.settings import Settings

__all__ = ["Admitted", "Connections", "Handshake"]

log = logging.getLogger("gateway.connection")


class Connections:
    def __init__(
        self, settings: Settings, verifier: TokenVerifier, admission: Admission, hub: RoomHub, hooks: Hooks
    ) -> None:
        self._settings = settings
        self._hub = hub
        # One timer for every connection's keepalive and token expiry (Tornado's own pings are off).
        timers = TimerWheel(wheel_tick(settings))
        self.doorman = Doorman(settings, verifier, admission, hub.control, hooks)
        self.lifetimes = Lifetimes(settings, timers, verifier, hub.control, hooks, hub.tasks)
        self.inbound = Inbound(settings, hub, self.lifetimes, hooks)
        self.receive = self.inbound.receive
        self.control = self.inbound.control

    @property
    def sessions(self) -> KeysView[Session]:
        return self.lifetimes.sessions()

    @property
    def draining(self) -> bool:
        """Set by the drain: every new connection is refused 503 from then on."""
        return self.doorman.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.doorman.draining = value

    def origin_allowed(self, origin: str) -> bool:
        return self.doorman.origin_allowed(origin)

    async def admit(self, handshake: Handshake) -> Admitted:
        return await self.doorman.admit(handshake)

    def release(self) -> None:
        self.doorman.release()

    def open(self, admitted: Admitted, transport: Probed) -> Session:
        """The session, registered; already closed (4029) when the user has too many connections.
        Either way the transport reports `closed` for it when it goes."""
        session = Session(
            admitted.conn_id or short_id(),
            admitted.identity,
            transport,
            self._settings,
            on_close=_count_close,
            remote=admitted.remote,
            transport_kind=admitted.transport,
        )
        self.lifetimes.begin(session, transport, admitted.reask)
        if not self._hub.connect(session, admitted.revocations, admitted.started):
            return session
        self.lifetimes.watch(session)
        log.debug("connected", extra={"conn": session.conn_id, "user": session.user_id})
        return session

    def closed(self, session: Session) -> None:
        session.closed = True
        self.lifetimes.end(session)
        self._hub.spawn(self._hub.disconnect(session))


def _count_close(session: Session, code: int) -> None:
    METRICS.closes.labels(str(code)).inc()
