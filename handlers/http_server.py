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
- so does an event loop running more than MAX_LOOP_LAG late (a reconnect storm: services/loop_lag.py);
- each episode is one log line when it starts and one when it ends;
- the client address is resolved through TRUSTED_PROXIES before any handler sees the request;
- every public connection, plain HTTP or WebSocket, counts toward MAX_CONNECTIONS_PER_IP from its
  first request's headers to its close (over it: 429, issue: 480 keep-alive connections from one
  address filled the descriptor budget); a keep-alive connection waiting for its next request can
  be shed like one waiting for its first, and Tornado closes it after HTTP_IDLE_TIMEOUT;
- a request body is limited by what the request is, before anything reads it: none for an
  upgrade, REQUEST_BODY_BYTES on the public paths, API_BODY_BYTES for a control API call whose key
  is right (issue: any path buffered 1 MiB per connection before routing or authentication).
  A declared length over the limit is answered 413 before the body is read.

An internal listener (INTERNAL_PORT) is not capped: it lives on the reserve, so /healthz,
/readyz and /metrics answer while the public port is full.
"""

from __future__ import annotations

import copy
import errno
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

from handlers.connection_book import SHED_AFTER, ConnectionBook, CountedStream, refuse_and_close
from services.admission import TrustedProxies, address_bucket
from services.loop_lag import LoopLag
from services.metrics import METRICS

log = logging.getLogger("gateway.listener")

_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_RETRY_ACCEPT = frozenset(
    {errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET}
    | {errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH, errno.ETIMEDOUT}
)
_ACCEPTS_PER_TURN = 128  # like Tornado: bounded work per readable event
_BACKOFF_FIRST, _BACKOFF_MAX = 0.05, 1.0
_LAG_RETRY = 0.05  # seconds before a listener paused for loop lag looks again


class GatewayHTTPServer(HTTPServer):
    def initialize(  # type: ignore[override]
        self,
        request_callback: httputil.HTTPServerConnectionDelegate,
        *,
        book: ConnectionBook,
        trusted: TrustedProxies,
        body_limit: Callable[[httputil.RequestStartLine, httputil.HTTPHeaders], int],
        kept_alive_timeout: float,
        capped: bool = True,
        lag: LoopLag | None = None,
        **kwargs: Any,
    ) -> None:
        super().initialize(request_callback, xheaders=False, **kwargs)
        assert self.ssl_options is None, "TLS terminates in front of the gateway"
        self._kept_alive_params = copy.copy(self.conn_params)
        self._kept_alive_params.header_timeout = kept_alive_timeout
        self._book = book
        self._trusted = trusted
        self._capped = capped
        self._lag = lag
        self._body_limit = body_limit
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
            if self._lag is not None and self._lag.behind():
                # A storm: what was accepted finishes first, the rest waits in the listen backlog.
                self._pause(sock, "event loop behind: new connections wait in the backlog", retry_in=_LAG_RETRY)
                return
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
            stream = CountedStream(conn, max_buffer_size=self.max_buffer_size, read_chunk_size=self.read_chunk_size)
        except Exception:
            conn.close()
            raise
        stream.book = self._book
        self._book.open += 1
        if self._capped:  # only what the budget caps may be shed for it
            self._book.waits(stream)
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
        assert isinstance(request_conn, HTTP1Connection)
        stream = request_conn.stream
        if isinstance(stream, CountedStream) and stream.served:
            # Its last request was answered: kept alive, and Tornado waits HTTP_IDLE_TIMEOUT for the
            # next one instead of HANDSHAKE_TIMEOUT. Not for a trusted proxy's upstream connection:
            # closing it between requests races the proxy's next one (a 502 for its client).
            self._book.waits(stream)
            peer = getattr(request_conn.context, "gateway_peer", None)
            if peer is None or not self._trusted.trusts(peer):
                request_conn.params = self._kept_alive_params
        return _Admitted(super().start_request(server_conn, request_conn), request_conn, self)

    def headers_arrived(
        self, request_conn: HTTP1Connection, start: httputil.RequestStartLine, headers: httputil.HTTPHeaders
    ) -> tuple[int, str] | None:
        """Resolve the client address, count the connection under it and set the request's body
        limit; the refusal (status, message) of a request that must not go further."""
        stream = request_conn.stream
        context: Any = request_conn.context  # a tornado.httpserver._HTTPRequestContext (handlers/tornado_private.py)
        if self._trusted:
            # The context outlives the request (keep-alive): resolve from the TCP peer every time.
            peer = getattr(context, "gateway_peer", None)
            if peer is None:
                peer = context.gateway_peer = context.remote_ip
            context.remote_ip = self._trusted.client_ip(peer, headers.get("X-Forwarded-For"), headers.get("X-Real-Ip"))
        if self._capped and isinstance(stream, CountedStream):
            self._book.waiting.pop(stream, None)
            stream.served = True
            if not self._book.count_address(stream, address_bucket(context.remote_ip)):
                METRICS.upgrades_refused.labels("429").inc()
                return 429, "too many connections from this address"
        limit = self._body_limit(start, headers)
        declared = headers.get("Content-Length", "").strip()
        if (declared.isdigit() and int(declared) > limit) or (limit == 0 and "Transfer-Encoding" in headers):
            return 413, f"request body over {limit} bytes"
        request_conn.set_max_body_size(limit)
        return None


class _Admitted(httputil.HTTPMessageDelegate):
    """Lets a request through to the application once its headers passed `headers_arrived`;
    otherwise answers it and closes the connection, the body unread."""

    def __init__(
        self, delegate: httputil.HTTPMessageDelegate, request_conn: HTTP1Connection, server: GatewayHTTPServer
    ) -> None:
        self._delegate = delegate
        self._conn = request_conn
        self._server = server
        self._refused = False

    def headers_received(
        self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine, headers: httputil.HTTPHeaders
    ) -> Awaitable[None] | None:
        assert isinstance(start_line, httputil.RequestStartLine)
        refusal = self._server.headers_arrived(self._conn, start_line, headers)
        if refusal is None:
            return self._delegate.headers_received(start_line, headers)
        self._refused = True
        refuse_and_close(self._conn.detach(), *refusal)
        return None

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return None if self._refused else self._delegate.data_received(chunk)

    def finish(self) -> None:
        if not self._refused:
            self._delegate.finish()

    def on_connection_close(self) -> None:
        if not self._refused:
            self._delegate.on_connection_close()
