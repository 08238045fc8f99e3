"""Calls to the control API over real HTTP, as a chat backend makes them (docs/protocol.md, "Control API")."""

from __future__ import annotations

import json
import time
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

API_KEY = "test-api-key-0123456789"


async def api(
    base: str,
    path: str,
    body: Any = None,
    key: str | None = API_KEY,
    method: str | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of one call; POST when there is a body."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"apikey {key}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = HTTPRequest(
        base + path,
        method=method or ("POST" if data is not None else "GET"),
        headers=headers,
        body=data,
        request_timeout=10,
    )
    response = await AsyncHTTPClient().fetch(request, raise_error=False)
    try:
        parsed = json.loads(response.body or b"{}")
    except ValueError:
        parsed = {"raw": response.body.decode("utf-8", "replace")}
    return response.code, parsed


def later(seconds: float = 2.0) -> int:
    """An `iat` safely after a revocation made now: `iat` has whole seconds."""
    return int(time.time() + seconds)
