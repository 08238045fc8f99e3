"""GatewayClient: an asyncio client for the Realtime Gateway protocol (README.md, "Protocol").

    async with GatewayClient("ws://127.0.0.1:3000/", token) as client:
        await client.join("general")
        ack = await client.send("general", "hello")
        async for event in client:
            if isinstance(event, Message):
                print(event.sender_id, event.content)

Why it exists: every caller of the gateway needs the same four fiddly things, and getting them
wrong loses or duplicates messages:
- replies are matched to requests by `requestId` (acks can interleave with other frames);
- every send carries a dedupeKey, and a send that was in flight when the socket dropped, or that the
  gateway refused as `unavailable` (Redis could not store it), is sent again with the *same* key, so
  the gateway acks it once and broadcasts it once (within DEDUPE_TTL; a single gateway without Redis
  forgets keys when it restarts);
- a dropped socket is reopened with exponential backoff and jitter, and every room is joined again
  before queued sends go out;
- close codes are honoured: 4001 asks for a new token, 1002/1007/1008/1009/4003/4029 are not retried.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import random
import secrets
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol, cast

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError, websocket_connect

from realtime_gateway_client.events import (
    Ack,
    Attachment,
    Connected,
    Disconnected,
    ErrorEvent,
    Event,
    History,
    Member,
    MembersChanged,
    Message,
    MessageDeleted,
    MessageUpdated,
    Pong,
    Presence,
    PresenceCount,
    PresenceState,
    Recovery,
    Refreshed,
    RefreshFailed,
    RoomUpdate,
    RpcResult,
    TokenExpiring,
    parse_event,
)
from realtime_gateway_client.members import Roster

log = logging.getLogger("realtime_gateway.client")

TokenSource = str | Callable[[], Awaitable[str]]


class Socket(Protocol):
    """What the client needs of a WebSocket connection: Tornado's client connection is one; a test
    gives its own through `connector` (tests/conformance: the same cases as the JavaScript client)."""

    close_code: int | None
    close_reason: str | None

    def read_message(self) -> Awaitable[str | bytes | None]: ...

    def write_message(self, message: str) -> asyncio.Future[None]: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


Connector = Callable[[str, dict[str, str]], Awaitable[Socket]]
PresenceStatus = Literal["online", "typing", "idle"]

CLOSE_TOKEN_EXPIRED = 4001
# Close codes after which reconnecting cannot help (the same request would be refused again).
FATAL_CLOSE_CODES: dict[int, str] = {
    1002: "protocol error",
    1007: "text that is not UTF-8",
    1008: "closed for repeated invalid frames",
    1009: "frame too big",
    4003: "connection revoked",
    4029: "too many connections for this user",
}


class ClientError(Exception):
    """Base of everything this SDK raises."""


class ConnectError(ClientError):
    """The WebSocket could not be opened (refused, timed out, or an HTTP error at the upgrade)."""


class AuthError(ConnectError):
    """The gateway refused the token (HTTP 401 at the upgrade, or close 4001 with a fixed token)."""


class ConnectionClosed(ClientError):
    """The client was closed, or gave up reconnecting; pending requests fail with this."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class AckTimeout(ClientError, TimeoutError):
    """No reply within the timeout. For a send, retrying with `dedupe_key` is safe."""

    def __init__(self, message: str, dedupe_key: str | None = None) -> None:
        super().__init__(message)
        self.dedupe_key = dedupe_key


class GatewayError(ClientError):
    """The gateway answered a request with an `error` frame. `retryable`: the same request may
    succeed later (`unavailable`: Redis or the application's backend could not answer;
    `rate_limited`; `ingest_failed`); otherwise (`rejected`, `forbidden_room`, `rpc_failed`, ...)
    sending it again as it is gets the same answer."""

    def __init__(self, event: ErrorEvent) -> None:
        super().__init__(f"{event.code}: {event.message}")
        self.event = event
        self.code = event.code
        self.details = event.details

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE


class ConnectionLost(ClientError):
    """The socket dropped while a request that is not retried (ping) waited for its reply."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits about initial * factor**n, capped at maximum,
    minus up to `jitter` of it (so a restarted gateway is not hit by every client at once)."""

    initial: float = 0.5
    maximum: float = 15.0
    factor: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 32))
        return base * (1.0 - self.jitter * random.random())


# Re-joins after a reconnect: a join with `since` costs two frames of the gateway's rate limit (20/s,
# burst 40 by default) and a burst of refusals closes the socket (1008): the first REJOIN_BURST go at
# once, then REJOIN_PER_SECOND a second; one refused as rate_limited anyway is asked again.
REJOIN_BURST = 16
REJOIN_PER_SECOND = 8
REJOIN_ROUNDS = 10
# Refusals that say "later", not "no": a re-join refused so is asked again in the next round.
RETRIED = frozenset({"rate_limited", "unavailable"})
RETRYABLE = RETRIED | {"ingest_failed"}  # GatewayError.retryable
# Seconds (with jitter below) before a message refused as `unavailable` is sent again with its
# dedupeKey, until acked or its timeout passes (docs/protocol.md, "What an ack means").
UNAVAILABLE_RETRY = 1.0


@dataclass
class _Request:
    kind: str  # join | leave | message | ping | history | presence_query | refresh | rpc
    frame: dict[str, Any]
    future: asyncio.Future[Any]
    room: str | None = None
    retry: bool = False  # sent again on the next connection when still unanswered
    internal: bool = False  # made by the client itself (re-join), not by a caller
    sent_at: float = field(default_factory=time.monotonic)


class GatewayClient:
    """One logical connection to the gateway that survives drops.

    `token` is a string, or an async callable called before every connection attempt (so it can
    cache, or mint a fresh token after close 4001) and when the gateway says `token_expiring`: the
    new token is sent in band (`refresh`), so the socket outlives the old one. `token_provider=`
    names the callable form (pass one or the other). Events are queued
    for `events()` / `async for` (one consumer); the newest `max_events` are kept if nobody reads
    them.
    """

    def __init__(
        self,
        url: str,
        token: TokenSource | None = None,
        *,
        token_provider: Callable[[], Awaitable[str]] | None = None,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
        ack_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        ping_interval: float = 20.0,
        ping_timeout: float = 20.0,
        stable_after: float = 5.0,
        max_events: int = 10_000,
        connector: Connector | None = None,
    ) -> None:
        self.url = url
        if (token is None) == (token_provider is None):
            raise ValueError("pass a token or a token_provider (one of them)")
        self._token: TokenSource = token if token is not None else cast("Callable[[], Awaitable[str]]", token_provider)
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.max_attempts = max_attempts
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.stable_after = stable_after
        self.max_events = max_events
        self._connector = connector  # None: Tornado's websocket_connect
        self._conn: Socket | None = None
        self._ready = asyncio.Event()
        self._closing = False
        self._closed_event = asyncio.Event()
        self._final_error: ConnectionClosed | None = None
        self._rooms: dict[str, None] = {}  # ordered set of rooms to be in (re-joined on reconnect)
        self._roster = Roster()  # who is online in each room (members.py)
        # room -> (offset, epoch) of the last history entry seen: the re-join after a reconnect asks
        # for what came after it (docs/protocol.md, "History and recovery").
        self._positions: dict[str, tuple[int, str]] = {}
        self._pending: dict[str, _Request] = {}
        self._refused: list[_Request] = []  # messages refused as unavailable, to send again
        self._refused_timer: asyncio.TimerHandle | None = None
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._dropped_events = 0
        self._runner: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._attempt = 0  # reconnect attempts since the last stable connection (drives backoff)
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(3)
        self.connections = 0  # successful opens, for callers and tests
        self.user_id: str | None = None  # the token's `sub`, read (not verified) at each connect

    # -- lifecycle -----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the first connection; raises AuthError / ConnectError instead of retrying, so a
        wrong URL or token is reported at once."""
        if self._runner is not None:
            raise ClientError("already connected")
        conn = await self._open()
        self._conn = conn
        self._ready.set()
        self._emit(Connected(reconnected=False))
        self._runner = asyncio.ensure_future(self._run(conn))

    async def close(self) -> None:
        """Close the socket (1000) and stop reconnecting; pending requests fail with ConnectionClosed."""
        if self._closing:
            if self._runner is not None:
                await asyncio.shield(self._runner)
            return
        self._closing = True
        self._closed_event.set()
        if self._refused_timer is not None:
            self._refused_timer.cancel()
            self._refused_timer = None
        if self._conn is not None:
            self._conn.close(1000, "client closed")
        if self._runner is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._runner), 5.0)
            except TimeoutError:
                self._runner.cancel()
        if self._refreshing is not None:
            self._refreshing.cancel()
        self._finish(ConnectionClosed("client closed"))

    async def __aenter__(self) -> GatewayClient:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True while a socket is open and every room has been joined again."""
        return self._ready.is_set()

    @property
    def closed(self) -> bool:
        return self._final_error is not None

    @property
    def rooms(self) -> tuple[str, ...]:
        return tuple(self._rooms)

    def members(self, room: str) -> tuple[Member, ...]:
        """Who is online in `room`, as last told by presence_state and presence events (in a room
        of more than a page, the first page and who announced themselves since: page through the
        rest with presence_query). A MembersChanged event follows every change (members.py)."""
        return self._roster.members(room)

    def member_count(self, room: str) -> int:
        """How many users are online in `room` on every instance, as last told."""
        return self._roster.count(room)

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)

    # -- requests ------------------------------------------------------------------------------

    async def join(self, room: str, timeout: float | None = None) -> RoomUpdate:
        """Join `room`; it is joined again after every reconnect until leave()."""
        self._rooms[room] = None
        try:
            result: RoomUpdate = await self._request("join", {"roomId": room}, room=room, timeout=timeout)
        except GatewayError:
            self._rooms.pop(room, None)
            raise
        return result

    async def leave(self, room: str, timeout: float | None = None) -> RoomUpdate:
        self._rooms.pop(room, None)
        self._roster.forget(room)
        self._positions.pop(room, None)
        result: RoomUpdate = await self._request("leave", {"roomId": room}, room=room, timeout=timeout)
        return result

    def position(self, room: str) -> tuple[int, str] | None:
        """(offset, epoch) of the last entry of `room` this client has seen, or of the room when
        joined; None before that or with the gateway's history off."""
        return self._positions.get(room)

    async def presence_query(self, room: str, cursor: str | None = None, timeout: float | None = None) -> PresenceState:
        """A page of the room's members (the first without `cursor`; then pass the page's `next`)."""
        payload = {"roomId": room} if cursor is None else {"roomId": room, "cursor": cursor}
        result: PresenceState = await self._request("presence_query", payload, timeout=timeout)
        return result

    async def history(self, room: str, limit: int = 50, timeout: float | None = None) -> History:
        """The room's latest `limit` (1..100) entries, oldest first, and its position."""
        result: History = await self._request("history", {"roomId": room, "limit": limit}, timeout=timeout)
        return result

    async def send(
        self,
        room: str,
        content: str,
        *,
        attachments: Sequence[Attachment | dict[str, Any]] | None = None,
        dedupe_key: str | None = None,
        timeout: float | None = None,
    ) -> Ack:
        """Send a message and wait for its ack. Survives reconnects: the frame is sent again, with
        the same dedupeKey, until acked or `timeout` (default ack_timeout) passes."""
        key = dedupe_key or uuid.uuid4().hex
        payload: dict[str, Any] = {"roomId": room, "content": content, "dedupeKey": key}
        if attachments:
            payload["attachments"] = [a.as_json() if isinstance(a, Attachment) else a for a in attachments]
        result: Ack = await self._request("message", payload, room=room, retry=True, timeout=timeout)
        return result

    async def rpc(self, method: str, data: Any = None, timeout: float | None = None) -> Any:
        """Ask the application's backend (the gateway's RPC_HOOK_URL, docs/hooks.md) over this socket;
        its answer's `data`. GatewayError `rpc_failed` (its error and `details {status, code?}`),
        `unavailable` (retryable) or `not_enabled`. Not sent again after a drop: an rpc may not be
        safe to repeat (ConnectionLost then)."""
        result: RpcResult = await self._request("rpc", {"method": method, "data": data}, timeout=timeout)
        return result.data

    async def ping(self, timeout: float | None = None) -> float:
        """Round trip of an application-level ping, in seconds."""
        start = time.monotonic()
        await self._request("ping", {}, timeout=timeout)
        return time.monotonic() - start

    def set_presence(self, room: str, status: PresenceStatus) -> bool:
        """Send a presence status. Fire and forget (the gateway only answers errors): False when
        there is no open connection, because a stale `typing` is worse than none."""
        if status not in ("online", "typing", "idle"):
            raise ValueError(f"status must be online, typing or idle, not {status!r}")
        if not self._ready.is_set() or self._conn is None:
            return False
        return self._write(self._conn, {"type": "presence", "payload": {"roomId": room, "status": status}})

    def typing(self, room: str) -> bool:
        """Say `typing`; the gateway turns it back to online after TYPING_TTL unless repeated."""
        return self.set_presence(room, "typing")

    def idle(self, room: str) -> bool:
        return self.set_presence(room, "idle")

    def online(self, room: str) -> bool:
        return self.set_presence(room, "online")

    async def refresh(self, token: str | None = None) -> Refreshed:
        """Hand the gateway a new token for this socket (default: the token source's next one).
        GatewayError `invalid_token` when it is refused; the old token's deadline then stands."""
        if token is None:
            if isinstance(self._token, str):
                raise ClientError("no token source to refresh from: pass a token")
            token = await self._token()
        result: Refreshed = await self._request("refresh", {"token": token})
        return result

    async def _refresh_from_source(self) -> None:
        try:
            await self.refresh()
        except (GatewayError, ClientError, ConnectionClosed) as exc:  # the error event is emitted too
            log.info("token refresh failed: %s", exc)
            self._emit(RefreshFailed(str(exc)))
        except Exception as exc:  # a failing token source must not kill the client silently
            log.warning("token source failed during refresh: %s", exc)
            self._emit(RefreshFailed(str(exc) or type(exc).__name__))

    async def _request(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        room: str | None = None,
        retry: bool = False,
        timeout: float | None = None,
    ) -> Any:
        if self._final_error is not None:
            raise ConnectionClosed(str(self._final_error), self._final_error.code)
        if self._runner is None:
            raise ClientError("not connected: call connect() first")
        request_id = f"{self._id_prefix}-{next(self._ids)}"
        frame = {"type": kind, "payload": payload, "requestId": request_id}
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        req = _Request(kind, frame, fut, room=room, retry=retry or kind in ("join", "leave"))
        self._pending[request_id] = req
        if kind == "message" and self._refused:
            self._refused.append(req)  # behind the refused ones waiting to go out again: never ahead
        elif self._ready.is_set() and self._conn is not None:
            self._write(self._conn, frame)
        # else: queued; _resume() sends it once the socket is back and rooms are joined again.
        limit = self.ack_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(fut, limit)
        except TimeoutError:
            raise AckTimeout(f"no reply to {kind} within {limit:g}s", dedupe_key=payload.get("dedupeKey")) from None
        finally:
            self._pending.pop(request_id, None)

    def _write(self, conn: Socket, frame: dict[str, Any]) -> bool:
        try:
            fut = conn.write_message(json.dumps(frame, separators=(",", ":")))
        except WebSocketClosedError:
            return False
        fut.add_done_callback(_swallow)
        return True

    # -- events --------------------------------------------------------------------------------

    async def events(self) -> AsyncGenerator[Event, None]:
        """Every server frame as a typed event, plus Connected / Disconnected. Ends after close()
        or when the client gives up."""
        while True:
            event = await self._events.get()
            if event is None:
                self._events.put_nowait(None)  # later iterators end too
                return
            yield event

    def __aiter__(self) -> AsyncGenerator[Event, None]:
        return self.events()

    def _emit(self, event: Event) -> None:
        if self._events.qsize() >= self.max_events:
            self._events.get_nowait()
            self._dropped_events += 1
            if self._dropped_events == 1:
                log.warning("event queue full: dropping the oldest events (nobody reads events())")
        self._events.put_nowait(event)

    # -- connection ----------------------------------------------------------------------------

    async def _open(self) -> Socket:
        token = self._token if isinstance(self._token, str) else await self._token()
        self.user_id = token_subject(token) or self.user_id
        if self._connector is not None:
            conn = await self._connector(self.url, {"Authorization": f"Bearer {token}"})
            self.connections += 1
            return conn
        request = HTTPRequest(
            self.url,
            headers={"Authorization": f"Bearer {token}"},
            connect_timeout=self.connect_timeout,
            request_timeout=self.connect_timeout,
        )
        try:
            conn = await websocket_connect(
                request,
                ping_interval=self.ping_interval or None,
                ping_timeout=self.ping_timeout,
            )
        except HTTPClientError as exc:
            if exc.code == 401:
                raise AuthError(f"token refused: {_error_body(exc)}") from None
            if exc.code == 599:
                raise ConnectError(f"cannot connect to {self.url}: {exc.message}") from None
            raise ConnectError(f"upgrade refused with HTTP {exc.code}: {_error_body(exc)}") from None
        except (OSError, StreamClosedError, TimeoutError) as exc:
            raise ConnectError(f"cannot connect to {self.url}: {exc or type(exc).__name__}") from None
        self.connections += 1
        return conn

    async def _run(self, conn: Socket) -> None:
        reconnected = False
        while True:
            opened = time.monotonic()
            reader = asyncio.ensure_future(self._read_loop(conn))
            if reconnected:
                try:
                    await self._resume(conn, reader)
                except Exception:
                    log.exception("resuming after a reconnect failed")
            code, reason = await reader
            if self._closing:
                self._emit(Disconnected(code, reason or "closed by client", None))
                self._finish(ConnectionClosed("client closed", code))
                return
            fatal = self._fatal_reason(code)
            if fatal is not None or not self.reconnect:
                message = fatal or (reason or "connection closed")
                self._emit(Disconnected(code, message, None))
                self._finish(ConnectionClosed(message, code))
                return
            if time.monotonic() - opened >= self.stable_after:
                self._attempt = 0  # a connection that lasted resets the backoff; a flapping one does not
            next_conn = await self._reconnect(code, reason)
            if next_conn is None:
                return
            conn = next_conn
            reconnected = True

    def _fatal_reason(self, code: int | None) -> str | None:
        if code in FATAL_CLOSE_CODES:
            return f"{FATAL_CLOSE_CODES[code]} ({code})"
        if code == CLOSE_TOKEN_EXPIRED and isinstance(self._token, str):
            return "token expired (4001): connect again with a new token"
        return None

    async def _reconnect(self, code: int | None, reason: str) -> Socket | None:
        why = reason or ("connection lost" if code is None else f"closed ({code})")
        tries = 0
        while True:
            if self.max_attempts is not None and tries >= self.max_attempts:
                message = f"gave up after {tries} reconnect attempts: {why}"
                self._emit(Disconnected(code, message, None))
                self._finish(ConnectionClosed(message, code))
                return None
            delay = self.backoff.delay(self._attempt)
            self._attempt += 1
            tries += 1
            self._emit(Disconnected(code, why, delay))
            try:
                await asyncio.wait_for(self._closed_event.wait(), delay)
            except TimeoutError:
                pass
            if self._closing:
                self._finish(ConnectionClosed("client closed", code))
                return None
            try:
                conn = await self._open()
            except AuthError as exc:
                if isinstance(self._token, str):
                    self._emit(Disconnected(None, str(exc), None))
                    self._finish(ConnectionClosed(str(exc)))
                    return None
                why = str(exc)  # a token source may hand out a valid one next time
            except ConnectError as exc:
                why = str(exc)
            except Exception as exc:  # a failing token source must not kill the client silently
                log.warning("reconnect attempt failed", exc_info=True)
                why = f"reconnect failed: {exc}"
            else:
                if not self._closing:
                    return conn
                conn.close(1000, "client closed")  # close() was called while this one was opening
                self._finish(ConnectionClosed("client closed", code))
                return None
            code = None

    async def _resume(self, conn: Socket, reader: asyncio.Future[Any]) -> None:
        """After a reconnect: join every room again (paced: REJOIN_BURST), then send the queued
        requests in order."""
        self._conn = conn
        pending_joins: dict[str | None, _Request | None] = {
            r.room: r for r in self._pending.values() if r.kind == "join"
        }
        for req in list(self._pending.values()):
            if req.kind == "leave" and not req.future.done():
                # Not re-joined, so the leave has happened; the new socket never was in the room.
                req.future.set_result(RoomUpdate(room_id=req.room or "", action="left"))
        todo = list(self._rooms)
        for round_ in range(REJOIN_ROUNDS):
            if round_ > 0:
                await asyncio.sleep(1.0)
            joins: dict[str, asyncio.Future[Any]] = {}
            for i, room in enumerate(todo):
                if i >= REJOIN_BURST and (i - REJOIN_BURST) % REJOIN_PER_SECOND == 0:
                    await asyncio.sleep(1.0)
                if self._conn is not conn or reader.done():
                    return  # dropped again while re-joining; the next reconnect resumes
                if room not in self._rooms:
                    continue  # left meanwhile
                req = pending_joins.pop(room, None) or self._internal_join(room)  # a caller's join, or ours
                joins[room] = req.future
                req.sent_at = time.monotonic()
                self._write(conn, req.frame)
            await self._settled(list(joins.values()), reader)
            todo = []
            for room, fut in joins.items():
                exc = None if not fut.done() or fut.cancelled() else fut.exception()
                if isinstance(exc, GatewayError) and exc.code in RETRIED:
                    todo.append(room)  # asked again, a second later
                elif isinstance(exc, GatewayError) and exc.event.room_id:
                    self._rooms.pop(exc.event.room_id, None)  # e.g. the token no longer allows it
            if not todo:
                break
        for room in todo:  # still refused after every round: not joined, so not listed as joined
            log.warning("re-join kept being rate limited; the room is left", extra={"room": room})
            self._rooms.pop(room, None)
        if self._conn is not conn:
            return  # dropped again while re-joining; the next reconnect resumes
        # No await from here on: a send() racing with this either is in _pending now or sees ready.
        for req in list(self._pending.values()):
            if req.kind in ("message", "ping") and not req.future.done():
                req.sent_at = time.monotonic()
                self._write(conn, req.frame)
        self._ready.set()
        self._emit(Connected(reconnected=True, rooms=tuple(self._rooms)))

    async def _settled(self, futures: list[asyncio.Future[Any]], reader: asyncio.Future[Any]) -> None:
        """Until every future is done, the reader ends, or ack_timeout passes."""
        waiting = set(futures)
        deadline = time.monotonic() + self.ack_timeout
        while waiting and not reader.done() and time.monotonic() < deadline:
            await asyncio.wait(
                waiting | {reader}, timeout=deadline - time.monotonic(), return_when=asyncio.FIRST_COMPLETED
            )
            waiting = {f for f in waiting if not f.done()}

    def _resend_later(self, req: _Request) -> None:
        """A message refused as unavailable (Redis could not store it; nobody got it) goes out
        again, with its dedupeKey, a moment later; the refused ones of one wait go together and
        in their order, so none overtakes another."""
        self._refused.append(req)
        if self._refused_timer is None:
            delay = UNAVAILABLE_RETRY * random.uniform(0.5, 1.0)
            self._refused_timer = asyncio.get_running_loop().call_later(delay, self._resend_refused)

    def _resend_refused(self) -> None:
        self._refused_timer = None
        waiting = {id(req) for req in self._refused}
        self._refused = []
        again = [req for req in self._pending.values() if id(req) in waiting]  # in the order sent
        conn = self._conn
        if not self._ready.is_set() or conn is None:
            return  # _resume() sends them with the rest of what waited
        for req in again:
            if not req.future.done():
                req.sent_at = time.monotonic()
                self._write(conn, req.frame)

    def _internal_join(self, room: str) -> _Request:
        request_id = f"{self._id_prefix}-{next(self._ids)}"
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_swallow)
        payload: dict[str, Any] = {"roomId": room}
        position = self._positions.get(room)
        if position is not None:
            payload["since"] = {"offset": position[0], "epoch": position[1]}
        req = _Request(
            "join",
            {"type": "join", "payload": payload, "requestId": request_id},
            fut,
            room=room,
            internal=True,
        )
        self._pending[request_id] = req
        fut.add_done_callback(lambda _: self._pending.pop(request_id, None))
        return req

    async def _read_loop(self, conn: Socket) -> tuple[int | None, str]:
        try:
            while True:
                raw = await conn.read_message()
                if raw is None:
                    return conn.close_code, conn.close_reason or ""
                if isinstance(raw, bytes):
                    continue  # the protocol is text only
                try:
                    frame = json.loads(raw)
                except ValueError:
                    log.warning("ignoring a frame that is not JSON")
                    continue
                if isinstance(frame, dict):
                    self._dispatch(frame)
        finally:
            if self._conn is conn:
                self._conn = None
            self._ready.clear()
            for req in list(self._pending.values()):
                if not req.retry and not req.future.done():
                    req.future.set_exception(ConnectionLost("connection lost before the reply"))

    def _dispatch(self, frame: dict[str, Any]) -> None:
        event = parse_event(frame)
        recovery: Recovery | None = None
        if isinstance(event, Message | MessageUpdated | MessageDeleted):
            seen, recovery = self._advance(event)
            if not seen:
                return  # seen already (a replay overlapping what arrived live)
        elif isinstance(event, RoomUpdate) and event.action == "joined":
            recovery = self._joined(event)
        if recovery is not None:
            self._emit(recovery)  # before the reply or the entry it is about, as in the JavaScript client
        change: MembersChanged | None = None
        if isinstance(event, PresenceState) and event.request_id is None:
            change = self._roster.snapshot(event.room_id, event.members, event.count, event.next is not None)
        elif isinstance(event, Presence):
            change = self._roster.presence(event.room_id, event.user_id, event.status, event.at)
        elif isinstance(event, PresenceCount):
            change = self._roster.counted(event.room_id, event.count)
        elif isinstance(event, RoomUpdate) and event.action in ("removed", "deleted", "left"):
            if event.request_id is None or event.action != "left":
                self._rooms.pop(event.room_id, None)  # the gateway took us out: do not re-join
            self._roster.forget(event.room_id)
            self._positions.pop(event.room_id, None)
        refreshing = self._refreshing is not None and not self._refreshing.done()
        if isinstance(event, TokenExpiring) and not isinstance(self._token, str) and not refreshing:
            self._refreshing = asyncio.ensure_future(self._refresh_from_source())
        request_id = frame.get("requestId")
        req = self._pending.get(request_id) if isinstance(request_id, str) else None
        if req is not None and not req.future.done():
            if isinstance(event, ErrorEvent) and event.code == "unavailable" and req.kind == "message":
                self._resend_later(req)
            elif isinstance(event, ErrorEvent):
                req.future.set_exception(GatewayError(event))
            elif isinstance(event, Ack | RoomUpdate | Pong | History | PresenceState | Refreshed | RpcResult):
                req.future.set_result(event)
        self._emit(event)
        if change is not None:
            self._emit(change)

    def _advance(self, event: Message | MessageUpdated | MessageDeleted) -> tuple[bool, Recovery | None]:
        """Move the room's position to this entry. (False, None): at or before the position, seen
        already. A gap when the entry is not the next one: an offset skipped, or a new epoch."""
        if event.offset is None or event.epoch is None or event.room_id not in self._rooms:
            return True, None
        known = self._positions.get(event.room_id)
        self._positions[event.room_id] = (event.offset, event.epoch)
        if known is None:
            return True, None
        if known[1] == event.epoch:
            if event.offset <= known[0]:
                self._positions[event.room_id] = known
                return False, None
            if event.offset == known[0] + 1:
                return True, None
        return True, Recovery(event.room_id, False, event.offset - 1, event.epoch)

    def _joined(self, event: RoomUpdate) -> Recovery | None:
        """A join's reply: recovered, the replayed entries follow and move the position; not
        recovered, the position is the room's and the application hears of the gap. A repeated
        join of a room being received keeps its position (live entries may still be on their way)."""
        if event.recovered is True:
            return Recovery(event.room_id, True, event.offset, event.epoch)
        if event.recovered is None:
            if event.offset is not None and event.epoch is not None:
                self._positions.setdefault(event.room_id, (event.offset, event.epoch))
            return None
        if event.offset is None or event.epoch is None:  # the gateway could not read the history
            self._positions.pop(event.room_id, None)
        else:
            self._positions[event.room_id] = (event.offset, event.epoch)
        return Recovery(event.room_id, False, event.offset, event.epoch)

    def _finish(self, error: ConnectionClosed) -> None:
        if self._final_error is not None:
            return
        self._final_error = error
        self._ready.clear()
        for req in list(self._pending.values()):
            if not req.future.done():
                req.future.set_exception(error)
        self._events.put_nowait(None)


def token_subject(token: str) -> str | None:
    """The user id the gateway will see (`sub`, else `userId`), read without verifying: only the
    gateway can verify, this is for telling one's own events apart."""
    try:
        segment = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (IndexError, ValueError):
        return None
    if not isinstance(claims, dict):
        return None
    for key in ("sub", "userId"):
        if isinstance(claims.get(key), str):
            return str(claims[key])
    return None


def _swallow(fut: asyncio.Future[Any]) -> None:
    """Mark a fire-and-forget future's exception as retrieved (no 'never retrieved' noise)."""
    if not fut.cancelled():
        fut.exception()


def _error_body(exc: HTTPClientError) -> str:
    body = exc.response.body if exc.response is not None else b""
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        return exc.message or ""
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])
    return exc.message or ""
