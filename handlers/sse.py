"""The HTTP transport (docs/protocol.md, "HTTP transport"): the protocol's frames over Server-Sent
Events and POST, for networks whose proxies refuse WebSocket upgrades.

    SseStream   GET /sse: admitted as a WebSocket is (services/connection), then every server frame
                is one event: `session` first, a comment every PING_INTERVAL, `closed` last
    SseSend     POST /sse/send: frames for a session, whichever instance holds it (services/sse)

The stream is written raw after its response head, without chunked encoding (the body ends with
the connection, RFC 9112 §6.3): a broadcast is wrapped into an event once per payload and sent
to each recipient with one syscall, as on a WebSocket. A dead peer is found by the kernel
(TCP_USER_TIMEOUT: the heartbeat unacknowledged for PING_INTERVAL + PING_TIMEOUT), a reader too
slow by the session's outbound bound (4008).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Sequence
from typing import Any

from tornado.iostream import IOStream, StreamClosedError

from handlers.common import JsonHandler, read_handshake, shed_request
from handlers.writes import Wrapped, write_now
from schemas.protocol import CLOSE_POLICY, SEND_PATH, SESSION_HEADER
from services import frames
from services.connection import Admitted, Connections
from services.errors import Refused
from services.session import Pong, Session
from services.sse import Streams

log = logging.getLogger("gateway.sse")

# Seconds the `closed` event may take to leave before the connection is cut: with the session's own
# FLUSH_GRACE, within what a drain waits for its connections to go (services/gateway.py).
CLOSE_TIMEOUT = 3.0
INPUT_BYTES = 4096  # what a client may send on a stream after its request (nothing, normally)
HEARTBEAT = b":\n\n"
_event = Wrapped(lambda data: b"data: " + data + b"\n\n")  # orjson's JSON never holds a newline


class _Cors(JsonHandler):
    """Both handlers' parts, and what a page on another origin needs to read their answers
    (ALLOWED_ORIGINS decides who)."""

    def initialize(self, connections: Connections, streams: Streams) -> None:
        self.connections = connections
        self.streams = streams

    def allowed(self) -> bool:
        """No Origin (not a browser) or an allowed one; the CORS headers are set for the latter."""
        origin = self.request.headers.get("Origin")
        if origin is None:
            return True
        if not self.connections.origin_allowed(origin):
            return False
        for name, value in cors_headers(origin):
            self.set_header(name, value)
        return True

    def options(self) -> None:
        """A browser's preflight (a POST with X-Session-Id, a GET with Authorization)."""
        if self.request.headers.get("Origin") is None or not self.allowed():
            self.write_json(403, {"error": "origin not allowed"})
            return
        self.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        self.set_header("Access-Control-Allow-Headers", f"Authorization, Content-Type, {SESSION_HEADER}")
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()


def cors_headers(origin: str) -> list[tuple[str, str]]:
    return [
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Credentials", "true"),  # the connect hook's cookie
        ("Access-Control-Expose-Headers", "Retry-After"),  # how long a 429 or 503 asks to wait
        ("Vary", "Origin"),
    ]


class SseStream(_Cors):
    async def get(self) -> None:
        handshake = read_handshake(self, "sse")
        origin = handshake.origin
        try:
            admitted = await self.connections.admit(handshake)
        except Refused as refused:
            self.allowed()
            self.write_json(refused.status, {"error": refused.message})
            return
        try:
            stream = self.detach()
            shed_request(self.request)
            if not stream.closed():  # (the client may have gone while the connect hook was asked)
                await self._serve(stream, admitted, origin)
        finally:
            self.connections.release()

    async def _serve(self, stream: IOStream, admitted: Admitted, origin: str | None) -> None:
        settings = self.streams.settings
        _tune(stream, settings.ping_interval + settings.ping_timeout if settings.ping_interval > 0 else 0.0)
        session_id = self.streams.new_id()
        head = [
            b"HTTP/1.1 200 OK",
            b"Content-Type: text/event-stream",
            b"Cache-Control: no-cache",
            b"X-Accel-Buffering: no",  # nginx: pass each event on at once (proxy_buffering is on by default)
            b"Connection: close",
            *(f"{name}: {value}".encode("latin-1") for name, value in (cors_headers(origin) if origin else ())),
        ]
        opening = frames.encode("session", {"sessionId": session_id, "sendUrl": SEND_PATH})
        try:
            write_now(stream, b"\r\n".join(head) + b"\r\n\r\n" + _event(opening))
        except StreamClosedError:
            return
        self.application.log_request(self)  # 200: the stream began (detached, Tornado logs nothing)
        session: Session | None = None
        try:
            session = self.connections.open(admitted, _StreamTransport(stream))
            self.streams.hold(session_id, session)
            received = 0
            while received <= INPUT_BYTES:  # reading is how a client that went away is noticed
                received += len(await stream.read_bytes(INPUT_BYTES, partial=True))
            log.info("stream input refused", extra={"conn": session.conn_id})
            session.close(CLOSE_POLICY, "a stream takes no input")  # the `closed` event, then the end
        except StreamClosedError:
            pass
        finally:
            if session is None or not session.closed:
                stream.close()
            self.streams.release(session_id)
            if session is not None:
                self.connections.closed(session)


class SseSend(_Cors):
    async def post(self) -> None:
        if not self.allowed():
            self.write_json(403, {"error": "origin not allowed"})
            return
        session_id = self.request.headers.get(SESSION_HEADER, "").strip()
        if not session_id:
            self.write_json(400, {"error": f"the {SESSION_HEADER} header names the session (its `session` event)"})
            return
        answer = await self.streams.post(session_id, self.request.body)
        if answer.retry_after is not None:
            self.set_header("Retry-After", str(answer.retry_after))
        body: dict[str, Any] = {"accepted": answer.accepted} if answer.status == 202 else {"error": answer.error}
        self.write_json(answer.status, body)


class _StreamTransport:
    """What a Session needs of an event stream (services/session.py, Transport)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: IOStream) -> None:
        self._stream = stream

    def write(self, items: Sequence[bytes | Pong]) -> Awaitable[None] | None:
        # (Pongs answer WebSocket pings: a stream never has one.)
        return write_now(self._stream, b"".join([_event(i) for i in items if not isinstance(i, Pong)]))

    def backed_up(self) -> bool:
        return self._stream.writing()

    def close(self, code: int, reason: str) -> None:
        """The `closed` event, then the connection: once the event is out, or after CLOSE_TIMEOUT
        when the client reads nothing (its queue was already dropped: a slow reader)."""
        stream = self._stream
        if stream.closed():
            return
        try:
            sent = stream.write(_event(frames.encode("closed", {"code": code, "reason": reason})))
        except StreamClosedError:
            return
        cut = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, stream.close)

        def done(future: Any) -> None:
            cut.cancel()
            if not future.cancelled():
                future.exception()  # retrieved: a client gone meanwhile is no error
            stream.close()

        sent.add_done_callback(done)

    def probe(self) -> bool:
        """A heartbeat comment, unless events are already waiting to leave (not idle, then)."""
        stream = self._stream
        if stream.closed():
            return False
        if not stream.writing():
            try:
                write_now(stream, HEARTBEAT)
            except StreamClosedError:
                return False
        return True

    def probe_answered(self) -> bool:
        return True  # a stream cannot answer: the kernel's TCP_USER_TIMEOUT finds a dead peer


def _tune(stream: IOStream, dead_after: float) -> None:
    sock = stream.socket
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if dead_after > 0 and hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(dead_after * 1000))
    except OSError:
        pass  # closed meanwhile: the first write says so
