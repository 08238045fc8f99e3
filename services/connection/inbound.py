"""A client's frames, from the bytes a transport received to the hub, and refusals as `error` frames.

    Inbound.receive   a WebSocket text (or binary) frame: its token of the rate limit, its JSON
    Inbound.frame     a parsed frame, from either transport: schema, cost, dispatch
    Inbound.control   a WebSocket ping or pong: charged like any frame, a ping answered

Every transport hands its frames here (the HTTP transport's posted frames through services/sse), so
validation, limits and errors are one path whatever carries them. Frames that wait (messages,
presence, rpc, a join the backend is asked about, and the frames of a room behind it) run in the
background (background.py), so the connection's reads go on.
Refusals are `error` frames and never close by themselves; ABUSE_CODES count toward
INVALID_FRAME_LIMIT, over which the connection is closed 1008 (docs/protocol.md, "Errors").
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, Protocol

import orjson
from marshmallow import ValidationError

from schemas.client import FrameSchema, payload_schemas
from schemas.protocol import ABUSE_CODES, CLIENT_TYPES, CLOSE_POLICY
from services import frames
from services.connection.background import Background
from services.errors import ClientError, HookUnavailable
from services.hooks import Hooks, Refusal
from services.hub import RoomHub
from services.metrics import METRICS
from services.ratelimit import EXPENSIVE_COST, frame_cost, reply_cost
from services.session import Session
from services.settings import Settings

log = logging.getLogger("gateway.connection")

RPC_IN_FLIGHT = 16  # rpc calls of one connection waiting for the backend (over it: rate_limited)
# Always in the background; a room's messages and presence changes run concurrently with each other
# (the hub keeps a sender's order) and after the room's other frames sent before them.
CONCURRENT = frozenset({"message", "presence"})


class Refresher(Protocol):
    async def refresh(self, session: Session, token: str, request_id: str | None) -> None: ...


class Inbound:
    def __init__(self, settings: Settings, hub: RoomHub, refresher: Refresher, hooks: Hooks) -> None:
        self._hub = hub
        self._refresher = refresher
        self._hooks = hooks
        self.background = Background(settings.waiting_bytes, hub.tasks)
        self._rpcs: dict[Session, int] = {}  # rpc calls in flight, per connection that has any
        self._frame_schema = FrameSchema()  # one for all connections: a schema is reusable
        self._payloads = payload_schemas(settings.max_content)

    async def receive(self, session: Session, message: str | bytes) -> None:
        """A WebSocket frame: its token of RATE_LIMIT, its JSON, then `frame`."""
        if session.closed:
            return
        if not session.rate.take():
            self._reply_error(session, ClientError("rate_limited", "too many frames; slow down"), _peek(message))
            return
        if isinstance(message, bytes):
            self._reply_error(session, ClientError("invalid_frame", "binary frames are not supported; send JSON text"))
            return
        try:
            frame = orjson.loads(message)
        except orjson.JSONDecodeError:
            self._reply_error(session, ClientError("invalid_json", "frame is not valid JSON"))
            return
        await self.frame(session, frame, len(message))

    async def frame(self, session: Session, frame: Any, size: int) -> None:
        """One parsed client frame whose first token of RATE_LIMIT is paid (a WebSocket frame's by
        `receive`, posted frames' by their request): schema, cost, dispatch. The one path from a
        parsed frame to the hub, whichever transport carried it; `size` is its length in bytes."""
        if session.closed:
            return
        request_id: str | None = None
        try:
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
            if cost > 1 and not session.rate.take(cost - 1):  # the frame's first token is paid already
                raise ClientError("rate_limited", f"{frame_type} costs {cost} frames of the rate limit; slow down")
            await self._dispatch(session, frame_type, payload, request_id, size)
        except ClientError as exc:
            self._reply_error(session, exc, request_id)
        except Exception:
            log.exception("frame handling failed", extra={"conn": session.conn_id})
            self._reply_error(session, ClientError("internal", "internal error"), request_id)

    def refused(self, session: Session) -> None:
        """A request of posted frames refused whole (over the rate limit): one violation, as a
        WebSocket's rate-limited frame is (services/sse)."""
        METRICS.errors.labels("rate_limited").inc()
        self._count_violation(session)

    def control(self, session: Session, ping: bool, data: bytes) -> None:
        """Ping and pong frames cost what any frame costs: a token from the rate limit, and a
        violation when there is none (issue: a ping flood starved every other client). A ping
        that is over the limit gets no pong."""
        if session.closed:
            return
        METRICS.frames_in.labels("ws_ping" if ping else "ws_pong").inc()
        if not session.rate.take():
            METRICS.errors.labels("rate_limited").inc()
            self._count_violation(session)
            return
        if ping:
            session.send_pong(data)

    async def _dispatch(
        self, session: Session, frame_type: str, payload: dict[str, Any], request_id: str | None, size: int
    ) -> None:
        room: str | None = payload.get("roomId")
        background = self.background
        concurrent = frame_type in CONCURRENT
        exclusive = room is not None and (
            background.busy(session, room) or (frame_type == "join" and self._hooks.join_is_asked(session, room))
        )
        if frame_type == "rpc":
            self._check_rpc(session)
        elif not concurrent and not exclusive:
            await self._handle(session, frame_type, payload, request_id)
            return
        key = _str_or_none(payload.get("dedupeKey"))

        async def work() -> None:
            try:
                if not session.closed:
                    handled = self._handle(session, frame_type, payload, request_id)
                    await self._guarded(session, handled, request_id, key)
            finally:
                if frame_type == "rpc":
                    self._rpc_done(session)

        if background.start(session, work, size, room, exclusive=not concurrent):
            return
        if frame_type == "message" and room is not None:
            # Its successors must not overtake it, and it must not overtake the room's earlier frames.
            self._hub.owe(session, room, key, background.started(session, room))
        elif frame_type == "rpc":
            self._rpc_done(session)
        raise ClientError(
            "unavailable", "too many frames waiting for an answer; send again later", roomId=room, dedupeKey=key
        )

    async def _handle(self, session: Session, frame_type: str, payload: dict[str, Any], request_id: str | None) -> None:
        hub = self._hub
        if frame_type == "message":
            # The sender's order is kept by the hub (hub/ordering.py).
            await hub.message(session, payload, request_id)
        elif frame_type == "join":
            await hub.join(session, payload["roomId"], request_id, payload.get("since"))
        elif frame_type == "leave":
            await hub.leave(session, payload["roomId"], request_id)
        elif frame_type == "presence_query":
            await hub.presence_query(session, payload["roomId"], payload.get("cursor"), request_id)
        elif frame_type == "history":
            await hub.history_of(session, payload["roomId"], payload["limit"], request_id)
        elif frame_type == "presence":
            # In the background, so a hung Redis holds presence changes, not pings (docs/scaling.md).
            await hub.set_presence(session, payload["roomId"], payload["status"])
        elif frame_type == "refresh":
            await self._refresher.refresh(session, payload["token"], request_id)
        elif frame_type == "rpc":
            await self._rpc(session, payload["method"], payload.get("data"), request_id)
        else:  # ping
            session.send(frames.encode("pong", {}, request_id))

    def _check_rpc(self, session: Session) -> None:
        if self._hooks.rpc_url is None:
            raise ClientError("not_enabled", "rpc is not enabled on this gateway (RPC_HOOK_URL)")
        count = self._rpcs.get(session, 0)
        if count >= RPC_IN_FLIGHT:
            raise ClientError("rate_limited", f"at most {RPC_IN_FLIGHT} rpc calls in flight per connection")
        self._rpcs[session] = count + 1

    def _rpc_done(self, session: Session) -> None:
        left = self._rpcs.pop(session, 1) - 1
        if left > 0:
            self._rpcs[session] = left

    async def _rpc(self, session: Session, method: str, data: Any, request_id: str | None) -> None:
        """The backend's answer as `rpc_result`, charged like a history reply: one token of
        RATE_LIMIT per 64 KiB it sends (the frame paid EXPENSIVE_COST already)."""
        try:
            answer = await self._hooks.rpc(session, method, data)
        except HookUnavailable:
            raise ClientError("unavailable", "the backend did not answer; try again later") from None
        if isinstance(answer, Refusal):
            details = {"status": answer.status} | ({"code": answer.code} if answer.code is not None else {})
            raise ClientError("rpc_failed", answer.error, details=details)
        reply = frames.encode("rpc_result", {"method": method, "data": answer}, request_id)
        session.rate.charge(reply_cost(len(reply)) - EXPENSIVE_COST)
        session.send(reply)

    async def _guarded(
        self, session: Session, work: Awaitable[None], request_id: str | None, dedupe_key: str | None
    ) -> None:
        try:
            await work
        except ClientError as exc:
            self._reply_error(session, exc, request_id)
        except Exception:
            log.exception("frame handling failed", extra={"conn": session.conn_id})
            self._reply_error(session, ClientError("internal", "internal error", dedupeKey=dedupe_key), request_id)

    def _reply_error(self, session: Session, exc: ClientError, request_id: str | None = None) -> None:
        METRICS.errors.labels(exc.code).inc()
        session.send(frames.error(exc.code, exc.message, request_id, **exc.extra))
        if exc.code in ABUSE_CODES:
            self._count_violation(session)

    def _count_violation(self, session: Session) -> None:
        if session.violations.add():
            log.info("closing abusive connection", extra={"conn": session.conn_id, "user": session.user_id})
            session.close(CLOSE_POLICY, "too many invalid frames")


def _request_id(frame: dict[str, Any]) -> str | None:
    raw = frame.get("requestId")
    return raw if isinstance(raw, str) and len(raw) <= 64 else None


def _peek(message: str | bytes) -> str | None:
    """The requestId of a frame refused before parsing (rate limit), so even that error is matched."""
    if isinstance(message, bytes):
        return None
    try:
        frame = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    return _request_id(frame) if isinstance(frame, dict) else None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
