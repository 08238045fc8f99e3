"""The HTTP control API (docs/protocol.md, "Control API"; docs/openapi.yaml): what a chat backend
does to sockets it does not hold. Served on PORT, or only on INTERNAL_PORT when that is set.

    POST /api/publish      a message to a room, on every instance
    POST /api/disconnect   close every socket of a user with 4003
    POST /api/revoke       refuse a user's tokens issued before a moment; close their sockets 4003
    GET  /api/presence     who is online in a room, a page at a time

Off (404) unless API_KEY is set; every call carries `Authorization: apikey <API_KEY>` (compared
in constant time, else 401). A body may be API_BODY_BYTES long only with the right key (else
REQUEST_BODY_BYTES; over it: 413 before it is read). JSON in and out; a body that fails its
schema is a 400 naming each field (unknown fields are ignored). The hub does the work, on the
same paths as the Kafka events.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from marshmallow import Schema, ValidationError
from tornado.httputil import HTTPHeaders, RequestStartLine

from handlers.common import JsonHandler
from schemas.api import DisconnectSchema, PresenceQueryArgs, PublishSchema, RevokeSchema, publish_schema
from schemas.protocol import SEND_PATH
from services.errors import BusError, ClientError, StoreError
from services.gateway import Gateway
from services.ids import iso, iso_now, uuid7
from services.metrics import METRICS
from services.settings import Settings


def key_matches(key: str, header: str | None) -> bool:
    """`Authorization: apikey <key>`, compared in constant time."""
    scheme, _, given = (header or "").strip().partition(" ")
    return scheme.lower() == "apikey" and hmac.compare_digest(given.strip().encode(), key.encode())


def body_limits(settings: Settings) -> Callable[[RequestStartLine, HTTPHeaders], int]:
    """The most body bytes a request may send, decided from its headers before any is read
    (handlers/http_server.py): none for an upgrade, API_BODY_BYTES for a control API call with the
    right key (a publish of MAX_CONTENT characters and ten attachments fits many times over),
    SSE_SEND_BYTES for the HTTP transport's frames, and REQUEST_BODY_BYTES for anything else, the API
    with a wrong key included."""
    key = settings.api_key

    def limit(start: RequestStartLine, headers: HTTPHeaders) -> int:
        if headers.get("Upgrade", "").lower() == "websocket":
            return 0
        if key is not None and start.path.startswith("/api/") and key_matches(key, headers.get("Authorization")):
            return settings.api_body_bytes
        if start.path.partition("?")[0] == SEND_PATH:
            return settings.sse_send_bytes
        return settings.request_body_bytes

    return limit


class _Refused(Exception):
    def __init__(self, status: int, error: str, details: Any = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.details = details


class ApiHandler(JsonHandler):
    """One endpoint: `schema` loads the call (the JSON body of a POST, the query of a GET) and `act`
    does it; a subclass names the method it serves as `post = ApiHandler.call` (or `get`)."""

    endpoint = "unknown"
    schema: Schema
    gateway: Gateway

    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def prepare(self) -> None:
        key = self.gateway.settings.api_key
        if key is None:
            self.write_json(404, {"error": "not found: the control API is off (API_KEY unset)"})
            return
        if not key_matches(key, self.request.headers.get("Authorization")):
            self.write_json(401, {"error": "missing or wrong API key (Authorization: apikey <key>)"})

    def on_finish(self) -> None:
        METRICS.api_requests.labels(self.endpoint, str(self.get_status())).inc()

    async def act(self, call: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    async def call(self) -> None:
        """Load, act, answer; a refusal is its status with a JSON error, never a traceback."""
        try:
            raw = self._query() if self.request.method == "GET" else self._body()
            try:
                loaded: dict[str, Any] = self.schema.load(raw)
            except ValidationError as exc:
                raise _Refused(400, "validation failed", exc.messages) from None
            self.write_json(200, await self.act(loaded))
        except _Refused as exc:
            body: dict[str, Any] = {"error": exc.error}
            if exc.details is not None:
                body["details"] = exc.details
            self.write_json(exc.status, body)
        except ClientError as exc:  # a cursor this gateway did not make
            self.write_json(400, {"error": exc.message, "details": exc.extra.get("details", {})})
        except StoreError as exc:  # a revocation whose sockets were closed, but not remembered
            self.write_json(503, {"error": f"{exc}: the user's sockets were closed; retry to refuse older tokens"})
        except BusError as exc:  # this instance acted; the others could not be told
            self.write_json(503, {"error": f"not every instance was reached: {exc}; retry"})

    def _body(self) -> dict[str, Any]:
        try:
            raw = orjson.loads(self.request.body or b"null")
        except orjson.JSONDecodeError:
            raise _Refused(400, "body is not valid JSON") from None
        if not isinstance(raw, dict):
            raise _Refused(400, "body must be a JSON object")
        return raw

    def _query(self) -> dict[str, Any]:
        return {name: values[-1].decode("utf-8", "replace") for name, values in self.request.query_arguments.items()}


class PublishHandler(ApiHandler):
    endpoint = "publish"
    post = ApiHandler.call

    def initialize(self, gateway: Gateway, schema: PublishSchema) -> None:  # type: ignore[override]
        super().initialize(gateway)
        self.schema = schema  # made once per server (MAX_CONTENT): a handler is made per request

    async def act(self, call: dict[str, Any]) -> dict[str, Any]:
        message = {"id": uuid7(), **call["message"], "roomId": call["roomId"]}
        created: datetime | None = message.get("createdAt")
        message["createdAt"] = iso(created.timestamp()) if created is not None else iso_now()
        try:
            delivered, position = await self.gateway.hub.messages.external(message)
        except (StoreError, BusError):
            error = f"unavailable: Redis could not store the message; retry with id {message['id']}"
            raise _Refused(503, error) from None
        out: dict[str, Any] = {"id": message["id"]}
        if not delivered:
            out["duplicate"] = True
        if position is not None:
            out.update(offset=position.offset, epoch=position.epoch)
        return out


class DisconnectHandler(ApiHandler):
    endpoint = "disconnect"
    schema = DisconnectSchema()
    post = ApiHandler.call

    async def act(self, call: dict[str, Any]) -> dict[str, Any]:
        await self.gateway.hub.control.disconnect(call["userId"], call.get("reason"))
        return {"userId": call["userId"]}


class RevokeHandler(ApiHandler):
    endpoint = "revoke"
    schema = RevokeSchema()
    post = ApiHandler.call

    async def act(self, call: dict[str, Any]) -> dict[str, Any]:
        when: datetime | None = call.get("issuedBefore")
        before = when.astimezone(UTC).timestamp() if when is not None else time.time()
        await self.gateway.hub.control.revoke(call["userId"], before)
        return {"userId": call["userId"], "issuedBefore": iso(before)}


class PresenceHandler(ApiHandler):
    endpoint = "presence"
    schema = PresenceQueryArgs()
    get = ApiHandler.call

    async def act(self, call: dict[str, Any]) -> dict[str, Any]:
        roster, room = self.gateway.hub.roster, call["roomId"]
        return roster.listing(room, await roster.page(room, call.get("cursor")))


class UnknownApiHandler(ApiHandler):
    """Any other /api/ path: 404 in JSON (after the key check, so the API's shape is not probed)."""

    def prepare(self) -> None:
        super().prepare()
        if not self._finished:
            self.write_json(404, {"error": "no such endpoint"})


def api_routes(gateway: Gateway) -> list[Any]:
    ctx = {"gateway": gateway}
    max_content = gateway.settings.max_content if gateway is not None else 4000
    return [
        (r"/api/publish", PublishHandler, {**ctx, "schema": publish_schema(max_content)}),
        (r"/api/disconnect", DisconnectHandler, ctx),
        (r"/api/revoke", RevokeHandler, ctx),
        (r"/api/presence", PresenceHandler, ctx),
        (r"/api/.*", UnknownApiHandler, ctx),
    ]
