"""GatewaySocket: one per WebSocket connection. Authenticates before the upgrade, parses every
frame with a schema, hands it to the RoomHub, and turns refusals into `error` frames."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any

import orjson
from marshmallow import ValidationError
from tornado.iostream import IOStream, StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketHandler, WebSocketProtocol

from handlers.common import RedactedSummary
from handlers.keepalive import Deadline, TimerWheel
from handlers.protocol import OP_PING, OP_PONG, OP_TEXT, GatewayProtocol, wire_frame
from schemas.protocol import ABUSE_CODES, CLIENT_TYPES, CLOSE_POLICY, CLOSE_TOKEN_EXPIRED
from services import frames
from services.auth import Identity
from services.errors import AuthError, ClientError
from services.gateway import Gateway
from services.ids import iso, short_id
from services.metrics import METRICS
from services.ratelimit import frame_cost
from services.revocation import NOTHING, Revocations
from services.session import Pong, Session

log = logging.getLogger("gateway.socket")


class GatewaySocket(WebSocketHandler, RedactedSummary):
    gateway: Gateway
    identity: Identity | None = None
    session: Session | None = None
    # What the handshake found against the user (services/revocation), handed to the hub at open.
    # Set on the instance only when there is something (rare): one more attribute on every
    # handler grew each connection by 1.4 KiB (the instance dict's next size; BENCHMARKS.md).
    _revocations: Revocations = NOTHING

    def initialize(self, gateway: Gateway, timers: TimerWheel) -> None:
        self.gateway = gateway
        self._timers = timers
        self._frame_schema = gateway.frame_schema
        self._payloads = gateway.payload_schemas
        self._expiry: Deadline | None = None
        self._notice: Deadline | None = None
        self._keepalive: Deadline | None = None

    # -- handshake ---------------------------------------------------------------------------

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if self.gateway.draining:
            self._refuse(503, "server is shutting down")
            return
        origin = self.request.headers.get("Origin")
        if origin is not None and not self.check_origin(origin):
            self._refuse(403, "origin not allowed")
            return
        token = self.get_query_argument("token", None) or _bearer(self.request.headers.get("Authorization"))
        try:
            self.identity = self.gateway.verifier.verify(token or "")
        except AuthError as exc:
            METRICS.auth_failures.inc()
            log.info("upgrade refused", extra={"reason": str(exc), "remote": self.request.remote_ip})
            self._refuse(401, str(exc))
            return
        # (MAX_CONNECTIONS_PER_IP was checked when the request came in: handlers/http_server.py.)
        refusal = self.gateway.admission.admit()
        if refusal is not None:
            METRICS.upgrades_refused.labels(str(refusal)).inc()
            self._refuse(refusal, "server is at its connection limit; try another instance or later")
            return
        try:
            if await self._revoked(self.identity):
                self._refuse(401, "token revoked")
                return
            await super().get(*args, **kwargs)  # returns when the WebSocket is over
        finally:
            self.gateway.admission.release()

    async def _revoked(self, identity: Identity) -> bool:
        """Is the token revoked (services/revocation)? What was found is kept for the hub only when
        there is something: `get` lives as long as the socket, and so would its locals."""
        found = await self.gateway.hub.control.load(identity.user_id)
        if found.refuses(identity.issued_at):
            METRICS.auth_failures.inc()
            METRICS.revoked_upgrades.inc()
            log.info("upgrade refused", extra={"reason": "token revoked", "remote": self.request.remote_ip})
            return True
        if found.before:
            self._revocations = found
        return False

    def _refuse(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps({"error": message}))

    def check_origin(self, origin: str) -> bool:
        allowed = self.gateway.settings.allowed_origins
        return not allowed or origin in allowed

    def get_compression_options(self) -> dict[str, Any] | None:
        return None  # per-message deflate costs more CPU than chat frames save

    def get_websocket_protocol(self) -> WebSocketProtocol | None:
        """Tornado's protocol with the gateway's frame reader (handlers/protocol.py)."""
        if self.request.headers.get("Sec-WebSocket-Version") not in ("7", "8", "13"):
            return None
        return GatewayProtocol.for_handler(self)

    # -- lifecycle ---------------------------------------------------------------------------

    def _detach_stream(self) -> IOStream:
        """Tornado replaces seven HTTP methods on each socket's instance here, which grows every
        handler's attribute dict by about 1.5 KB (issue: 25 KiB per idle connection). Detaching marks
        the response finished, so `write` and `finish` refuse already."""
        return self.detach()

    def _shed_request(self) -> None:
        """Once upgraded, a socket needs of its request only what log lines name: method, path,
        address, times. The headers, the query (the token in it), the parsed arguments and the
        detached HTTP connection (which keeps the headers too) go: about 2 KB per connection held
        for the socket's whole life."""
        request = self.request
        request.connection = None
        request.headers.clear()  # emptied, not replaced: Tornado's `get` holds them to the end
        request.uri = request.path
        request.query = ""
        request.arguments, request.query_arguments, request.body_arguments = {}, {}, {}

    async def open(self, *args: Any, **kwargs: Any) -> None:
        assert self.identity is not None
        self._shed_request()
        self.set_nodelay(True)
        self.session = Session(
            short_id(), self.identity, _SocketTransport(self), self.gateway.settings, on_close=_count_close
        )
        self.gateway.sessions.add(self.session)
        # Control-plane actions that arrived since this request began apply to it (hub/control.py).
        since = time.time() - self.request.request_time()
        if not self.gateway.hub.connect(self.session, self._revocations, since):
            return
        settings = self.gateway.settings
        self._watch_token(self.identity)
        if settings.ping_interval > 0:
            self._keepalive = self._timers.after(settings.ping_interval, self._ping)
        log.debug("connected", extra={"conn": self.session.conn_id, "user": self.session.user_id})

    def _watch_token(self, identity: Identity) -> None:
        """token_expiring TOKEN_REFRESH_NOTICE seconds before exp (at once for a shorter-lived
        token), 4001 at exp + JWT_LEEWAY; a refresh moves both."""
        for deadline in (self._expiry, self._notice):
            if deadline is not None:
                deadline.cancel()
        settings = self.gateway.settings
        now = time.time()
        self._expiry = self._timers.after(identity.expires_at + settings.jwt_leeway - now, self._token_expired)
        notice = max(0.0, identity.expires_at - settings.token_refresh_notice - now)
        self._notice = self._timers.after(notice, self._token_expiring)

    def _token_expired(self) -> None:
        if self.session is not None:
            self.session.close(CLOSE_TOKEN_EXPIRED, "token expired")

    def _token_expiring(self) -> None:
        """(A refresh cancels the old token's notice: the session's identity is the one due.)"""
        if self.session is not None:
            expires = self.session.identity.expires_at
            self.session.send(frames.encode("token_expiring", {"expiresAt": iso(expires)}))

    async def _refresh(self, session: Session, token: str, request_id: str | None) -> None:
        """`refresh {token}`: a token that verifies like a handshake's (revocations included) and
        names the same user replaces the socket's; anything else is invalid_token and changes
        nothing (docs/protocol.md)."""
        try:
            identity = self.gateway.verifier.verify(token)
        except AuthError as exc:
            METRICS.token_refreshes.labels("invalid").inc()
            raise ClientError("invalid_token", str(exc)) from None
        if identity.user_id != session.user_id:
            METRICS.token_refreshes.labels("other_user").inc()
            raise ClientError("invalid_token", "the token names another user")
        if (await self.gateway.hub.control.load(identity.user_id)).refuses(identity.issued_at):
            METRICS.token_refreshes.labels("revoked").inc()
            raise ClientError("invalid_token", "token revoked")
        if session.closed:
            return
        reply = frames.encode("refreshed", {"expiresAt": iso(identity.expires_at)}, request_id)
        METRICS.token_refreshes.labels("ok").inc()
        self.identity = identity
        self._watch_token(identity)
        session.send(reply)
        self.gateway.hub.control.reauthorize(session, identity)

    def _ping(self) -> None:
        """Keepalive (PING_INTERVAL): a ping, and PING_TIMEOUT for a pong (a pong's arrival is
        recorded by the frame reader), or the socket is dropped as dead."""
        conn = self.ws_connection
        if not isinstance(conn, GatewayProtocol) or conn.is_closing():
            return
        conn.expect_pong()
        self._keepalive = self._timers.after(self.gateway.settings.ping_timeout, self._pong_due)

    def _pong_due(self) -> None:
        conn = self.ws_connection
        if not isinstance(conn, GatewayProtocol) or conn.is_closing():
            return
        if not conn.pong_received():
            log.info("ping timed out", extra={"conn": self.session.conn_id if self.session else None})
            conn.close(reason="ping timed out")
            return
        interval = self.gateway.settings.ping_interval - self.gateway.settings.ping_timeout
        self._keepalive = self._timers.after(interval, self._ping)

    def on_close(self) -> None:
        for deadline in (self._expiry, self._notice, self._keepalive):
            if deadline is not None:
                deadline.cancel()
        session = self.session
        if session is None:
            return
        session.closed = True
        self.gateway.sessions.discard(session)
        self.gateway.hub.spawn(self.gateway.hub.disconnect(session))

    # -- frames ------------------------------------------------------------------------------

    def on_control(self, opcode: int, data: bytes) -> None:
        """Ping and pong frames cost what any frame costs: a token from the rate limit, and a
        violation when there is none (issue: a ping flood starved every other client). A ping
        that is over the limit gets no pong."""
        session = self.session
        if session is None or session.closed:
            return
        METRICS.frames_in.labels("ws_ping" if opcode == OP_PING else "ws_pong").inc()
        if not session.rate.take():
            METRICS.errors.labels("rate_limited").inc()
            self._count_violation(session)
            return
        if opcode == OP_PING:
            session.send_pong(data)

    def fail(self, code: int, reason: str) -> None:
        """A protocol error (1002, 1007, 1009): close with the code; the protocol lingers."""
        session = self.session
        log.info("protocol error", extra={"conn": session.conn_id if session else None, "code": code, "why": reason})
        if session is not None and not session.closed:
            session.close(code, reason, flush=False)
        else:
            self.close(code, reason)

    async def on_message(self, message: str | bytes) -> None:
        session = self.session
        if session is None or session.closed:
            return
        request_id: str | None = None
        try:
            if not session.rate.take():
                request_id = _peek_request_id(message)
                raise ClientError("rate_limited", "too many frames; slow down")
            if isinstance(message, bytes):
                raise ClientError("invalid_frame", "binary frames are not supported; send JSON text")
            try:
                frame = orjson.loads(message)
            except orjson.JSONDecodeError:
                raise ClientError("invalid_json", "frame is not valid JSON") from None
            if not isinstance(frame, dict):
                raise ClientError("invalid_frame", "frame must be a JSON object")
            request_id = _request_id(frame)
            try:
                envelope = self._frame_schema.load(frame)
            except ValidationError as exc:
                raise ClientError("validation_failed", "invalid frame", details=exc.messages) from None
            frame_type = envelope["type"]
            if frame_type not in CLIENT_TYPES:
                raise ClientError("unknown_type", f"unknown frame type {frame_type[:64]!r}")
            METRICS.frames_in.labels(frame_type).inc()
            try:
                payload = self._payloads[frame_type].load(envelope["payload"])
            except ValidationError as exc:
                room = envelope["payload"].get("roomId")
                raise ClientError(
                    "validation_failed",
                    f"invalid {frame_type} payload",
                    details=exc.messages,
                    roomId=room if isinstance(room, str) else None,
                    dedupeKey=_str_or_none(envelope["payload"].get("dedupeKey")),
                ) from None
            cost = frame_cost(frame_type, payload)
            if cost > 1 and not session.rate.take(cost - 1):  # the frame's first token is taken above
                raise ClientError("rate_limited", f"{frame_type} costs {cost} frames of the rate limit; slow down")
            await self._dispatch(session, frame_type, payload, request_id)
        except ClientError as exc:
            self._reply_error(session, exc, request_id)
        except Exception:
            log.exception("frame handling failed", extra={"conn": session.conn_id})
            self._reply_error(session, ClientError("internal", "internal error"), request_id)

    async def _dispatch(
        self, session: Session, frame_type: str, payload: dict[str, Any], request_id: str | None
    ) -> None:
        hub = self.gateway.hub
        if frame_type == "message":
            # Runs in the background so a slow Kafka ack does not stop this socket's reads;
            # the session's publish chain keeps the sender's order.
            hub.spawn(
                self._guarded(session, hub.message(session, payload, request_id), request_id, payload.get("dedupeKey"))
            )
        elif frame_type == "join":
            await hub.join(session, payload["roomId"], request_id, payload.get("since"))
        elif frame_type == "leave":
            await hub.leave(session, payload["roomId"], request_id)
        elif frame_type == "presence_query":
            await hub.presence_query(session, payload["roomId"], payload.get("cursor"), request_id)
        elif frame_type == "history":
            await hub.history_of(session, payload["roomId"], payload["limit"], request_id)
        elif frame_type == "presence":
            # In the background too, so a hung Redis holds presence changes, not pings (docs/scaling.md).
            hub.spawn(
                self._guarded(session, hub.set_presence(session, payload["roomId"], payload["status"]), None, None)
            )
        elif frame_type == "refresh":
            await self._refresh(session, payload["token"], request_id)
        else:  # ping
            session.send(frames.encode("pong", {}, request_id))

    async def _guarded(
        self, session: Session, work: Awaitable[None], request_id: str | None, dedupe_key: str | None
    ) -> None:
        try:
            await work
        except ClientError as exc:
            self._reply_error(session, exc, request_id)
        except Exception:
            log.exception("message handling failed", extra={"conn": session.conn_id})
            self._reply_error(session, ClientError("internal", "internal error", dedupeKey=dedupe_key), request_id)

    def _reply_error(self, session: Session, exc: ClientError, request_id: str | None) -> None:
        METRICS.errors.labels(exc.code).inc()
        session.send(frames.error(exc.code, exc.message, request_id, **exc.extra))
        if exc.code in ABUSE_CODES:
            self._count_violation(session)

    def _count_violation(self, session: Session) -> None:
        if session.violations.add():
            log.info("closing abusive connection", extra={"conn": session.conn_id, "user": session.user_id})
            session.close(CLOSE_POLICY, "too many invalid frames")


class _SocketTransport:
    """What a Session needs of the socket: write frames, close with a code."""

    __slots__ = ("_handler",)

    def __init__(self, handler: WebSocketHandler) -> None:
        self._handler = handler

    def write(self, items: Sequence[bytes | Pong]) -> Awaitable[None] | None:
        conn = self._handler.ws_connection
        if not isinstance(conn, GatewayProtocol) or conn.is_closing():
            raise WebSocketClosedError()
        data = b"".join([wire_frame(OP_PONG, i.data) if isinstance(i, Pong) else wire_frame(OP_TEXT, i) for i in items])
        try:
            return conn.send_wire(data)
        except StreamClosedError:
            raise WebSocketClosedError() from None

    def backed_up(self) -> bool:
        conn = self._handler.ws_connection
        stream = getattr(conn, "stream", None)
        return stream is not None and stream.writing()

    def close(self, code: int, reason: str) -> None:
        try:
            self._handler.close(code, reason)
        except WebSocketClosedError:
            pass


def _request_id(frame: dict[str, Any]) -> str | None:
    raw = frame.get("requestId")
    return raw if isinstance(raw, str) and len(raw) <= 64 else None


def _peek_request_id(message: str | bytes) -> str | None:
    """The requestId of a frame refused before parsing (rate limit), so even that error is matched."""
    if isinstance(message, bytes):
        return None
    try:
        frame = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    return _request_id(frame) if isinstance(frame, dict) else None


def _bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _count_close(session: Session, code: int) -> None:
    METRICS.closes.labels(str(code)).inc()
