"""One JSON object per log line, the redaction that keeps tokens out of every line, and StateLog:
a component's health logged once per change of state, not once per failed call."""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from typing import Any

import orjson

_TOKEN_IN_QUERY = re.compile(r"((?:^|[?&;])(?:token|access_token)=)[^&;#\s]*", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")

# Attributes every LogRecord has; anything else passed with `extra=` goes into the JSON object.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def redact(text: str) -> str:
    """Remove anything that looks like a token: query parameters, bearer headers, bare JWTs."""
    text = _TOKEN_IN_QUERY.sub(r"\1[redacted]", text)
    text = _BEARER.sub(r"\1[redacted]", text)
    return _JWT_SHAPE.sub("[redacted-jwt]", text)


class JsonFormatter(logging.Formatter):
    def __init__(self, instance_id: str) -> None:
        super().__init__()
        self.instance_id = instance_id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": redact(record.getMessage()),
            "instance": self.instance_id,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


def setup_logging(level: str, instance_id: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(instance_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Tornado's per-request access lines are replaced by handlers.common.log_request.
    logging.getLogger("tornado.access").setLevel(level.upper())


class StateLog:
    """A component's health as one word; a line `"{component} {state}"` is logged only when the word
    changes, however many calls fail in between. Thread-safe (Kafka's poll threads use it).
    `failed` and `ok` are the two-state form the Redis stores use."""

    def __init__(self, logger: logging.Logger, component: str, initial: str = "ok") -> None:
        self._log = logger
        self._component = component
        self._lock = threading.Lock()
        self.state = initial
        self.failures = 0
        self._since = 0.0

    @property
    def failing(self) -> bool:
        return self.state == "failing"

    def set(self, state: str, level: int = logging.INFO, **extra: Any) -> bool:
        """Move to `state`; True (and one log line) when it differs from the current one."""
        with self._lock:
            if state == self.state:
                return False
            previous, self.state = self.state, state
        self._log.log(
            level,
            f"{self._component} {state}",
            extra={"component": self._component.replace(" ", "_"), "state": state, "previous": previous, **extra},
        )
        return True

    def failed(self, error: str, **extra: Any) -> None:
        self.failures += 1
        if not self.failing:
            self._since = time.monotonic()
            self.set("failing", logging.WARNING, error=error, **extra)

    def ok(self, **extra: Any) -> None:
        if self.failing:
            seconds = round(time.monotonic() - self._since, 1)
            self.set("recovered", failures=self.failures, seconds=seconds, **extra)
            self.failures = 0
