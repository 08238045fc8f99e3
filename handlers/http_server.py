"""GatewayHTTPServer: Tornado's HTTPServer with an accept loop that survives descriptor exhaustion.

Tornado's accept handler lets EMFILE escape, and the listening socket stays readable, so a
process out of descriptors spins at 100% CPU logging a traceback per attempt (issue: 65,000
tracebacks in 13 s from 600 idle sockets, no token needed). Here:

- every accepted connection is counted until its descriptor is closed; at the descriptor budget
  (services/admission.py) a public listener first sheds the oldest public connection that has
  waited SHED_AFTER without sending its request headers (idle sockets cost us, a probe sends its
  request at once), and when there is none it stops accepting until a connection closes or one
  could be shed;
- EMFILE/ENFILE (something else took the reserve) pauses accepting with a backoff;
- each episode is one log line when it starts and one when it ends;
- the client address is resolved through TRUSTED_PROXIES before any handler sees the request.

An internal listener (INTERNAL_PORT) is not capped: it lives on the reserve, so /healthz,
/readyz and /metrics answer while the public port is full.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

from services.admission import TrustedProxies
from services.metrics import METRICS

log = logging.getLogger("gateway.listener")

_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_RETRY_ACCEPT = frozenset(
    {errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET}
    | {errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH, errno.ETIMEDOUT}
)
SHED_AFTER = 1.0  # seconds a connection may wait without sending its headers before it can be shed
_ACCEPTS_PER_TURN = 128  # like Tornado: bounded work per readable event
_BACKOFF_FIRST, _BACKOFF_MAX = 0.05, 1.0


class ConnectionBook:
    """Open TCP connections of the process, shared by its listeners, and the public connections
    still waiting for their request headers, oldest first."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.open = 0
        self.waiting: dict[IOStream, float] = {}  # stream -> accepted at (monotonic), oldest first
        self._on_free: list[Callable[[], None]] = []

    def full(self) -> bool:
        return self.open >= self.budget

    def closed(self, stream: IOStream) -> None:
        self.open -= 1
        self.waiting.pop(stream, None)
        for callback in self._on_free:
            callback()

    def notify_on_free(self, callback: Callable[[], None]) -> None:
        self._on_free.append(callback)

    def shed_oldest_waiting(self) -> bool:
        """Close the oldest connection that has waited SHED_AFTER without sending its headers: it
        is idle (a probe or a real client sends its request at once). False when there is none."""
        for stream, since in self.waiting.items():
            if time.monotonic() - since < SHED_AFTER:
                return False
            del self.waiting[stream]
            stream.close()  # closes its descriptor: `closed` runs and frees the slot
            METRICS.connections_shed.inc()
            return True
        return False


class _CountedStream(IOStream):
    """An IOStream that tells the book when its descriptor is gone, however it was closed
    (HTTP handling, an upgraded WebSocket, shedding)."""

    book: ConnectionBook

    def close_fd(self) -> None:
        try:
            super().close_fd()
        finally:
            self.book.closed(self)


class GatewayHTTPServer(HTTPServer):
    def initialize(  # type: ignore[override]
        self,
        request_callback: httputil.HTTPServerConnectionDelegate,
        *,
        book: ConnectionBook,
        trusted: TrustedProxies,
        capped: bool = True,
        **kwargs: Any,
    ) -> None:
        super().initialize(request_callback, xheaders=False, **kwargs)
        assert self.ssl_options is None, "TLS terminates in front of the gateway"
        self._book = book
        self._trusted = trusted
        self._capped = capped
        self._paused: dict[int, socket.socket] = {}
        self._timed: set[int] = set()  # paused until a timer (EMFILE); the others also resume on a close
        self._backoff = 0.0
        self._episode: str | None = None
        book.notify_on_free(self._resume_after_close)

    # -- accepting ---------------------------------------------------------------------------

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._watch(sock)

    def _watch(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        loop = IOLoop.current()

        def stop_watching() -> None:
            self._paused.pop(fd, None)
            try:
                loop.remove_handler(sock)
            except (KeyError, ValueError):
                pass

        self._listen(sock)
        self._handlers[fd] = stop_watching

    def _listen(self, sock: socket.socket) -> None:
        IOLoop.current().add_handler(sock, lambda _fd, _events: self._accept_some(sock), IOLoop.READ)

    def _accept_some(self, sock: socket.socket) -> None:
        for _ in range(_ACCEPTS_PER_TURN):
            if self._capped and self._book.full():
                if not self._book.shed_oldest_waiting():
                    # Nothing idle long enough to shed: look again when one could be, or sooner if
                    # a connection closes.
                    retry = SHED_AFTER if self._book.waiting else None
                    self._pause(sock, "descriptor budget reached: not accepting until a connection closes", retry)
                    return
                self._start_episode("descriptor budget reached: closing connections that sent no request")
            try:
                conn, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _RETRY_ACCEPT:  # accept(2): a network error of that one connection
                    continue
                why = (
                    "out of file descriptors: pausing accept"
                    if exc.errno in _OUT_OF_DESCRIPTORS
                    else f"accept failing ({exc.strerror}): pausing accept"
                )
                self._backoff = min(max(self._backoff * 2, _BACKOFF_FIRST), _BACKOFF_MAX)
                self._pause(sock, why, retry_in=self._backoff, timer_only=True)
                return
            self._backoff = 0.0
            self._serve(conn, address)
            if self._episode is not None and self._book.open < 0.9 * self._book.budget:
                self._end_episode()

    def _serve(self, conn: socket.socket, address: Any) -> None:
        try:
            stream = _CountedStream(conn, max_buffer_size=self.max_buffer_size, read_chunk_size=self.read_chunk_size)
        except Exception:
            conn.close()
            raise
        stream.book = self._book
        self._book.open += 1
        if self._capped:  # only what the budget caps may be shed for it
            self._book.waiting[stream] = time.monotonic()
        self.handle_stream(stream, address)

    def _start_episode(self, why: str) -> None:
        if self._episode is None:
            self._episode = why
            log.warning(why, extra={"open": self._book.open, "budget": self._book.budget})

    def _pause(self, sock: socket.socket, why: str, retry_in: float | None = None, timer_only: bool = False) -> None:
        """Stop watching `sock`; resume after `retry_in`, and (unless `timer_only`) when a
        connection closes below the budget."""
        self._start_episode(why)
        fd = sock.fileno()
        if fd in self._paused or fd not in self._sockets:
            return
        IOLoop.current().remove_handler(sock)
        self._paused[fd] = sock
        METRICS.accept_pauses.inc()
        if timer_only:
            self._timed.add(fd)
        if retry_in is not None:
            IOLoop.current().call_later(retry_in, self._resume, fd)

    def _resume(self, fd: int) -> None:
        self._timed.discard(fd)
        sock = self._paused.pop(fd, None)
        if sock is not None and fd in self._sockets:
            self._listen(sock)

    def _resume_after_close(self) -> None:
        """A descriptor was freed: a listener paused at the budget may accept again (one paused
        for EMFILE waits for its timer: the descriptor may have gone to something else)."""
        if self._paused and not self._book.full():
            for fd in [fd for fd in self._paused if fd not in self._timed]:
                self._resume(fd)

    def _end_episode(self) -> None:
        if self._episode is not None:
            log.info("accepting connections again", extra={"open": self._book.open, "after": self._episode})
            self._episode = None

    # -- requests ----------------------------------------------------------------------------

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return _ClientAddress(super().start_request(server_conn, request_conn), request_conn, self)

    def headers_arrived(self, request_conn: httputil.HTTPConnection, headers: httputil.HTTPHeaders) -> None:
        stream = getattr(request_conn, "stream", None)
        if stream is not None:
            self._book.waiting.pop(stream, None)
        context = getattr(request_conn, "context", None)
        if context is not None and self._trusted:
            # The context outlives the request (keep-alive): resolve from the TCP peer every time.
            peer = getattr(context, "gateway_peer", None)
            if peer is None:
                peer = context.gateway_peer = context.remote_ip
            context.remote_ip = self._trusted.client_ip(peer, headers.get("X-Forwarded-For"), headers.get("X-Real-Ip"))


class _ClientAddress(httputil.HTTPMessageDelegate):
    """Marks the connection busy and fixes its client address once the headers are in."""

    def __init__(
        self, delegate: httputil.HTTPMessageDelegate, request_conn: httputil.HTTPConnection, server: GatewayHTTPServer
    ) -> None:
        self._delegate = delegate
        self._conn = request_conn
        self._server = server

    def headers_received(
        self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine, headers: httputil.HTTPHeaders
    ) -> Awaitable[None] | None:
        self._server.headers_arrived(self._conn, headers)
        return self._delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self._delegate.data_received(chunk)

    def finish(self) -> None:
        self._delegate.finish()

    def on_connection_close(self) -> None:
        self._delegate.on_connection_close()
