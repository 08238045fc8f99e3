"""Bits every handler shares: JSON replies and an access log without query strings."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from tornado.web import RequestHandler

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
    # 503 and 429 are refusals the gateway chose (draining, a connection limit), not faults.
    if status < 400 or status in (429, 503):
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
