"""HookClient: one pooled HTTP client for every call to the application's backend.

    HookClient.ask(hook, url, body, schema)  -> the loaded answer, or a Refusal; HookUnavailable else
    sign(secret, timestamp, body)            the X-Gateway-Signature value

One outcome mapping for all four hooks (docs/hooks.md, "Failure policy"): 200 with an answer that
loads is the answer; 401, 403, 404, 409 and 422 with `{"error"}` are refusals; anything else (another
status, an answer that does not load, HOOK_TIMEOUT, a refused connection, HOOK_CONCURRENCY reached)
is unavailable.

Limits: at most HOOK_CONCURRENCY calls in flight; one over it fails at once (no queue, so a dead backend
holds no more than that many calls and their bodies). Connect calls, which anyone can cause with a
handshake, take at most half of them, and one connection at most PER_CONNECTION, so neither can starve
the joins and messages of the others while the backend hangs for them.
An answer is read up to HOOK_ANSWER_BYTES. The pool (aiohttp, chosen in BENCHMARKS.md "Hook client")
keeps connections alive and reuses them: it opens at most HOOK_CONCURRENCY, and a handful at an
ordinary pace (BENCHMARKS.md, "What the hooks cost").
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import orjson
from marshmallow import Schema, ValidationError

from schemas.hooks import REASON_CHARS, RefusalBody
from services.errors import HookUnavailable
from services.ids import uuid7
from services.metrics import METRICS
from services.settings import Settings

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("gateway.hooks")

REFUSAL_STATUSES = frozenset({401, 403, 404, 409, 422})


@dataclass(frozen=True, slots=True)
class Refusal:
    """The backend said no with an HTTP status: its `error` (for the client) and optional `code`."""

    status: int
    error: str
    code: str | None = None


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`: the timestamp is signed too, so a
    captured call cannot be replayed later with a new one."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class HookClient:
    def __init__(self, settings: Settings) -> None:
        self._timeout_s = settings.hook_timeout
        self._limit = settings.hook_concurrency
        self._answer_bytes = settings.hook_answer_bytes
        self._secret = settings.hook_secret
        self._session: aiohttp.ClientSession | None = None
        self._in_flight = 0
        self._shares: dict[Hashable, int] = {}  # calls in flight per share (`ask`), for shares with any
        self._failing: dict[str, int] = {}  # hook -> calls unavailable in the current episode

    def load(self) -> None:
        """Import aiohttp now (at start, when a hook is set), not on the loop at the first call."""
        import aiohttp  # noqa: F401

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _pool(self) -> aiohttp.ClientSession:
        """Made at the first call, on the running loop (aiohttp binds its pool to it). aiohttp is
        imported only then: a gateway without hooks does not carry it (about 20,000 objects and
        several MiB per process, BENCHMARKS.md "What the hooks cost")."""
        import aiohttp

        if self._session is None:
            # ceil_threshold: aiohttp rounds a timeout of 5 s or more up to whole seconds unless told not to.
            timeout = aiohttp.ClientTimeout(total=self._timeout_s, ceil_threshold=1e9)
            connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=0, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                json_serialize=lambda value: orjson.dumps(value).decode(),
                skip_auto_headers=("User-Agent",),
                headers={"User-Agent": "realtime-gateway"},
            )
        return self._session

    async def ask(
        self, hook: str, url: str, body: dict[str, Any], schema: Schema, share: Hashable, most: int
    ) -> dict[str, Any] | Refusal:
        """One call. `share` (a connection, or all connect calls) may have at most `most` of the
        HOOK_CONCURRENCY calls in flight, so no one connection, and no flood of handshakes, holds
        every slot while the backend hangs for it."""
        import aiohttp  # (imported at start when a hook is set: a dictionary lookup here)

        request_id = uuid7()
        if self._in_flight >= self._limit:
            self._unavailable(hook, request_id, "HOOK_CONCURRENCY reached")
        mine = self._shares.get(share, 0)
        if mine >= most:
            self._unavailable(hook, request_id, f"{most} calls in flight for one connection (or for connect)")
        raw = orjson.dumps(body)
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        if self._secret:
            stamp = str(int(time.time()))
            headers["X-Gateway-Timestamp"] = stamp
            headers["X-Gateway-Signature"] = sign(self._secret, stamp, raw)
        self._in_flight += 1
        self._shares[share] = mine + 1
        METRICS.hook_in_flight.inc()
        started = time.perf_counter()
        try:
            status, answer = await self._post(url, raw, headers)
        except TimeoutError:
            self._unavailable(hook, request_id, "timed out (HOOK_TIMEOUT)")
        except aiohttp.ClientError as exc:
            self._unavailable(hook, request_id, _describe(exc))
        finally:
            self._in_flight -= 1
            if (left := self._shares.pop(share) - 1) > 0:
                self._shares[share] = left
            METRICS.hook_in_flight.dec()
            METRICS.hook_seconds.labels(hook).observe(time.perf_counter() - started)
        if status in REFUSAL_STATUSES:
            refusal = _refusal(status, answer)
            if refusal is None:  # a proxy's 404 page, a framework's 401: not the backend's word
                self._unavailable(hook, request_id, f"HTTP {status} without an {{error}} body")
            self._answered(hook, request_id, "refused")
            return refusal
        if status != 200:
            self._unavailable(hook, request_id, f"HTTP {status}")
        if answer is None:
            self._unavailable(hook, request_id, "answer is not JSON")
        try:
            loaded: dict[str, Any] = schema.load(answer)
        except ValidationError:
            self._unavailable(hook, request_id, "answer does not match the hook's schema")
        self._answered(hook, request_id, "ok")
        return loaded

    async def _post(self, url: str, raw: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        """(status, the answer's JSON or None), read up to HOOK_ANSWER_BYTES."""
        import aiohttp

        async with self._pool().post(url, data=raw, headers=headers, allow_redirects=False) as response:
            if response.content_length is not None and response.content_length > self._answer_bytes:
                raise aiohttp.ClientPayloadError(f"answer over HOOK_ANSWER_BYTES ({response.content_length} bytes)")
            data = bytearray()
            while chunk := await response.content.read(self._answer_bytes + 1 - len(data)):
                data += chunk
                if len(data) > self._answer_bytes:
                    raise aiohttp.ClientPayloadError("answer over HOOK_ANSWER_BYTES")
            try:
                return response.status, orjson.loads(data)
            except orjson.JSONDecodeError:
                return response.status, None

    def _answered(self, hook: str, request_id: str, outcome: str) -> None:
        METRICS.hook_calls.labels(hook, outcome).inc()
        failed = self._failing.pop(hook, 0)
        if failed:
            log.warning("backend answering again", extra={"hook": hook, "unavailable_calls": failed})
        # A refusal is a decision someone may ask about ("why was I refused?"): traceable by its id.
        level = logging.INFO if outcome == "refused" else logging.DEBUG
        log.log(level, "hook answered", extra={"hook": hook, "request_id": request_id, "outcome": outcome})

    def _unavailable(self, hook: str, request_id: str, reason: str) -> NoReturn:
        """Count, log once per episode (the first failure after an answer), and raise."""
        METRICS.hook_calls.labels(hook, "unavailable").inc()
        failed = self._failing.get(hook, 0)
        self._failing[hook] = failed + 1
        if not failed:
            log.warning("backend unavailable", extra={"hook": hook, "request_id": request_id, "why": reason})
        else:
            log.debug("hook unavailable", extra={"hook": hook, "request_id": request_id, "why": reason})
        raise HookUnavailable(reason)


def _refusal(status: int, answer: Any) -> Refusal | None:
    """The refusal a 401, 403, 404, 409 or 422 carries as `{"error", "code"?}`; None without one."""
    try:
        body = RefusalBody().load(answer if isinstance(answer, dict) else {})
    except ValidationError:
        return None
    return Refusal(status, body["error"][:REASON_CHARS] or f"refused by the backend (HTTP {status})", body.get("code"))


def _describe(exc: aiohttp.ClientError) -> str:
    """What went wrong, without the URL's credentials or the answer's content."""
    import aiohttp

    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.__class__.__name__})"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return str(exc)[:120]
    return exc.__class__.__name__
