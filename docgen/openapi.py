"""docs/openapi.yaml, the control API as OpenAPI 3.1, made from the schemas in schemas/api.py, and
the calls the gateway makes to the application's backend as its `webhooks` (schemas/hooks.py):

    python -m docgen.openapi > docs/openapi.yaml

tests/test_openapi.py fails when the committed file differs from what this prints, when the
document does not validate, or when its paths are not exactly the routes handlers/api.py serves.
Needs apispec (requirements-dev.txt); the gateway itself never imports this module.
"""

from __future__ import annotations

import sys
from typing import Any

from marshmallow import Schema

from docgen.json_schema import ecma_patterns, marshmallow_converter, yaml_dumper
from schemas import api, hooks

VERSION = "1.0.0"

_JSON = "application/json"
_ERRORS = {
    "401": "Missing or wrong API key.",
    "404": "The control API is off (API_KEY unset), or no such endpoint.",
}


def _reply(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _operation(summary: str, description: str, answer: str, body: str | None = None) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": _reply(answer, "Done.")}
    if body is not None or answer == "PresencePage":
        responses["400"] = _reply("ApiError", "The body or the query failed validation: `details` names each field.")
    responses.update({code: _reply("ApiError", text) for code, text in _ERRORS.items()})
    if answer in ("Revoked", "Disconnected"):
        responses["503"] = _reply(
            "ApiError",
            "Redis is unreachable: the sockets this instance could reach were closed, but the action did not "
            "reach every instance, or (revoke) was not stored for later handshakes. Retry.",
        )
    op: dict[str, Any] = {"summary": summary, "description": description, "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {_JSON: {"schema": body}}}
    return op


_HOOK_SCHEMAS: dict[str, type[Schema]] = {
    "ConnectCall": hooks.ConnectCall,
    "ConnectAnswer": hooks.ConnectAnswer,
    "JoinCall": hooks.JoinCall,
    "JoinAnswer": hooks.JoinAnswer,
    "PublishCall": hooks.PublishCall,
    "PublishAnswer": hooks.PublishAnswer,
    "RpcCall": hooks.RpcCall,
    "RpcAnswer": hooks.RpcAnswer,
    "HookRefusal": hooks.RefusalBody,
}
_HOOKS = {
    "connect": "Who a handshake without a token is (CONNECT_HOOK_URL); asked again before expiresAt.",
    "join": "Whether the user may join the room (JOIN_HOOK_URL, with ROOM_ACCESS=hook), for every join.",
    "publish": "Whether a client message goes out, as it is or rewritten (PUBLISH_HOOK_URL).",
    "rpc": "The answer to a client's `rpc` frame (RPC_HOOK_URL).",
}


def _hook_operation(hook: str, summary: str) -> dict[str, Any]:
    """A call the gateway makes to the backend (docs/hooks.md): what it sends, what it understands."""
    name = hook.capitalize()
    headers = [
        ("X-Request-Id", "A fresh id per call, logged by the gateway with the outcome."),
        ("X-Gateway-Timestamp", "Unix seconds; with HOOK_SECRET only."),
        ("X-Gateway-Signature", '`sha256=<hex HMAC-SHA256(HOOK_SECRET, "<timestamp>.<raw body>")>`; with HOOK_SECRET.'),
    ]
    ref = "#/components/schemas/"
    refused = {
        "description": "A refusal: its `error` goes to the client.",
        "content": {_JSON: {"schema": {"$ref": ref + "HookRefusal"}}},
    }
    return {
        "summary": summary,
        "description": "Any other status, an answer that does not match, a timeout (HOOK_TIMEOUT) or a refused "
        "connection is `unavailable` for the client (docs/hooks.md, 'Failure policy').",
        "parameters": [
            {"name": h, "in": "header", "required": h == "X-Request-Id", "description": d, "schema": {"type": "string"}}
            for h, d in headers
        ],
        "requestBody": {"required": True, "content": {_JSON: {"schema": {"$ref": f"{ref}{name}Call"}}}},
        "responses": {
            "200": {"description": "The answer.", "content": {_JSON: {"schema": {"$ref": f"{ref}{name}Answer"}}}},
            **{status: refused for status in ("401", "403", "404", "409", "422")},
        },
    }


def document() -> dict[str, Any]:
    from apispec import APISpec
    from apispec.ext.marshmallow import MarshmallowPlugin

    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="Realtime Gateway control API",
        version=VERSION,
        openapi_version="3.1.0",
        plugins=[plugin],
        info={
            "description": (
                "What a chat backend does to sockets it does not hold (docs/protocol.md, 'Control API'). "
                "Off unless API_KEY is set; served on INTERNAL_PORT only, when that is set."
            )
        },
    )
    marshmallow_converter(plugin)
    spec.components.security_scheme(
        "apiKey",
        {"type": "apiKey", "in": "header", "name": "Authorization", "description": "`apikey <API_KEY>`"},
    )
    schemas = {
        "PublishRequest": api.PublishSchema,
        "Published": api.PublishedOut,
        "DisconnectRequest": api.DisconnectSchema,
        "Disconnected": api.DisconnectedOut,
        "RevokeRequest": api.RevokeSchema,
        "Revoked": api.RevokedOut,
        "PresencePage": api.PresencePageOut,
        "ApiError": api.ApiErrorOut,
    }
    for name, schema in schemas.items():
        spec.components.schema(name, schema=schema)
    spec.path(
        path="/api/publish",
        operations={
            "post": _operation(
                "A message to a room, on every instance",
                "Delivered like a Kafka message.created: stored in the room's history (offset, epoch) "
                "and delivered once per id. senderType defaults to system; id and createdAt are assigned "
                "when missing. The same id again answers duplicate: true and delivers nothing.",
                "Published",
                "PublishRequest",
            )
        },
    )
    spec.path(
        path="/api/disconnect",
        operations={
            "post": _operation(
                "Close every socket of a user, on every instance, with 4003",
                "The user may connect again with any valid token.",
                "Disconnected",
                "DisconnectRequest",
            )
        },
    )
    spec.path(
        path="/api/revoke",
        operations={
            "post": _operation(
                "Revoke a user's tokens issued before a moment",
                "Tokens whose iat is earlier than issuedBefore (default: now) are refused at the handshake "
                "(401) and at refresh (invalid_token) for REVOCATION_TTL; the sockets they opened are closed "
                "with 4003 on every instance. A token without iat counts as older.",
                "Revoked",
                "RevokeRequest",
            )
        },
    )
    spec.path(
        path="/api/presence",
        operations={
            "get": {
                **_operation(
                    "Who is online in a room, a page at a time",
                    "Members sorted by userId, PRESENCE_PAGE at a time; `next` is the cursor of the next page.",
                    "PresencePage",
                ),
                "parameters": [
                    {"name": "roomId", "in": "query", "required": True, "schema": {"type": "string"}},
                    {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
            }
        },
    )
    for name, schema in _HOOK_SCHEMAS.items():
        spec.components.schema(name, schema=schema)
    out = spec.to_dict()
    out["security"] = [{"apiKey": []}]
    out["webhooks"] = {hook: {"post": _hook_operation(hook, text)} for hook, text in _HOOKS.items()}
    ecma_patterns(out)
    return out


def render() -> str:
    import yaml

    header = "# Generated by `python -m docgen.openapi` from schemas/api.py: do not edit by hand.\n"
    body: str = yaml.dump(document(), Dumper=yaml_dumper(), sort_keys=False, width=110)
    return header + body


if __name__ == "__main__":
    sys.stdout.write(render())
