"""Bits every handler shares: JSON replies, an access log without query strings, and what both
transports read of a handshake request."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from tornado.httputil import HTTPServerRequest
from tornado.web import RequestHandler

from services.connection import Handshake

access_log = logging.getLogger("gateway.access")


class RedactedSummary(RequestHandler):
    """Tornado puts the request URI in its own log lines (uncaught errors, warnings): not the token."""

    def _request_summary(self) -> str:
        return f"{self.request.method} {self.request.path} ({self.request.remote_ip})"


class JsonHandler(RedactedSummary):
    def write_json(self, status: int, body: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        # Field errors of a list's items are keyed by their index (an int): written as strings.
        self.finish(orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Never a traceback page, whatever serve_traceback says.
        self.write_json(status_code, {"error": self._reason})


def log_request(handler: RequestHandler) -> None:
    """Tornado's access log, with the query token removed and one JSON object per line."""
    status = handler.get_status()
    path = handler.request.path
    # Probes every few seconds would drown everything else; a 503 from /readyz is a state the
    # component behind it (bus, Kafka, drain) has already logged once, not an error per probe.
    if (path in ("/healthz", "/metrics") and status < 400) or path == "/readyz":
        return
    # An upgrade is a socket opening, not a request: a reconnect storm would write one line per
    # client (and 2% of its CPU, BENCHMARKS.md "Reconnect storm"); the sockets' metrics count them.
    if status == 101:
        if not access_log.isEnabledFor(logging.DEBUG):
            return
        level = logging.DEBUG
    # 503 and 429 are refusals the gateway chose (draining, a connection limit), not faults.
    elif status < 400 or status in (429, 503):
        level = logging.INFO
    else:
        level = logging.WARNING if status < 500 else logging.ERROR
    access_log.log(
        level,
        "http request",
        extra={
            "method": handler.request.method,
            "path": handler.request.path,  # never the query: it may hold the token, however encoded
            "status": status,
            "ms": round(1000.0 * handler.request.request_time(), 1),
            "remote": handler.request.remote_ip,
        },
    )


class NotFoundHandler(JsonHandler):
    """Every path nobody serves: 404 in JSON like every other answer (the application's default)."""

    def prepare(self) -> None:
        self.write_json(404, {"error": "not found"})


def read_handshake(handler: RequestHandler, transport: str) -> Handshake:
    """What a WebSocket upgrade or a GET /sse says of its client (services/connection decides)."""
    request = handler.request
    headers = request.headers
    return Handshake(
        token=handler.get_query_argument("token", None) or _bearer(headers.get("Authorization")),
        origin=headers.get("Origin"),
        remote=request.remote_ip or "",
        started=time.time() - request.request_time(),
        headers=headers,
        query=request.query_arguments,  # decoded only when the connect hook is asked
        transport=transport,
    )


def shed_request(request: HTTPServerRequest) -> None:
    """Once a connection is a session, it needs of its request only what log lines name: method,
    path, address, times. The headers, the query (the token in it), the parsed arguments and the
    detached HTTP connection (which keeps the headers too) go: about 2 KB per connection held for
    its whole life."""
    request.connection = None
    request.headers.clear()  # emptied, not replaced: Tornado's `get` holds them to the end
    request.uri = request.path
    request.query = ""
    request.arguments, request.query_arguments, request.body_arguments = {}, {}, {}


def _bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None
