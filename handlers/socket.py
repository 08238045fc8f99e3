"""GatewaySocket: one per WebSocket connection. It reads the handshake, writes frames and reports
what arrives; every decision is the services' (services/connection: admission, token deadlines,
keepalive, frames to the hub)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Sequence
from typing import Any

import orjson
from tornado.iostream import IOStream, StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketHandler, WebSocketProtocol

from handlers.common import RedactedSummary, read_handshake, shed_request
from handlers.protocol import OP_PING, OP_PONG, GatewayProtocol, text_frame, wire_frame
from services.connection import Admitted, Connections
from services.errors import Refused
from services.session import Pong, Session

log = logging.getLogger("gateway.socket")


class GatewaySocket(WebSocketHandler, RedactedSummary):
    session: Session | None = None
    _admitted: Admitted | None = None  # from the handshake until `open`

    def initialize(self, connections: Connections) -> None:
        self.connections = connections

    # -- handshake ---------------------------------------------------------------------------

    async def get(self, *args: Any, **kwargs: Any) -> None:
        handshake = read_handshake(self, "websocket")
        try:
            self._admitted = await self.connections.admit(handshake)
        except Refused as refused:
            self.set_status(refused.status)
            self.set_header("Content-Type", "application/json")
            self.finish(orjson.dumps({"error": refused.message}))
            return
        try:
            await super().get(*args, **kwargs)  # returns when the WebSocket is over
        finally:
            self.connections.release()

    def check_origin(self, origin: str) -> bool:
        return self.connections.origin_allowed(origin)

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

    async def open(self, *args: Any, **kwargs: Any) -> None:
        admitted, self._admitted = self._admitted, None
        assert admitted is not None
        shed_request(self.request)
        self.set_nodelay(True)
        self.session = self.connections.open(admitted, _SocketTransport(self))

    def on_close(self) -> None:
        if self.session is not None:
            self.connections.closed(self.session)

    # -- frames ------------------------------------------------------------------------------

    def on_control(self, opcode: int, data: bytes) -> None:
        if self.session is not None:
            self.connections.control(self.session, opcode == OP_PING, data)

    def fail(self, code: int, reason: str) -> None:
        """A protocol error (1002, 1007, 1009): close with the code; the protocol lingers."""
        session = self.session
        log.info("protocol error", extra={"conn": session.conn_id if session else None, "code": code, "why": reason})
        if session is not None and not session.closed:
            session.close(code, reason, flush=False)
        else:
            self.close(code, reason)

    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        if self.session is None:
            return None
        return self.connections.receive(self.session, message)


class _SocketTransport:
    """What a Session needs of the socket: write frames, close with a code, probe the peer."""

    __slots__ = ("_handler",)

    def __init__(self, handler: WebSocketHandler) -> None:
        self._handler = handler

    def write(self, items: Sequence[bytes | Pong]) -> Awaitable[None] | None:
        conn = self._handler.ws_connection
        if not isinstance(conn, GatewayProtocol) or conn.is_closing():
            raise WebSocketClosedError()
        data = b"".join([wire_frame(OP_PONG, i.data) if isinstance(i, Pong) else text_frame(i) for i in items])
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

    def probe(self) -> bool:
        conn = self._handler.ws_connection
        if not isinstance(conn, GatewayProtocol) or conn.is_closing():
            return False
        conn.expect_pong()
        return True

    def probe_answered(self) -> bool:
        conn = self._handler.ws_connection
        return isinstance(conn, GatewayProtocol) and not conn.is_closing() and conn.pong_received()
