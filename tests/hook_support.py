"""A real HTTP backend for the hook tests (docs/hooks.md): programmable answers, delays and failures,
a check of every call's signature, and a count of the TCP connections it accepted.

    backend = await HookBackend.start(secret)
    backend.url("join")                        the URL to give JOIN_HOOK_URL
    backend.answers["join"] = fn               fn(body) -> (status, JSON-able or bytes), sync or async
    backend.calls / calls_of("join")           every call: hook, body, headers
    backend.connections                        TCP connections accepted so far
    backend.hold()/release()                   calls wait (a hanging backend) until released

It runs on the test's loop, on a real port; the gateway reaches it through its own HTTP client.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from schemas.hooks import ConnectCall, JoinCall, PublishCall, RpcCall

CALLS = {"connect": ConnectCall(), "join": JoinCall(), "publish": PublishCall(), "rpc": RpcCall()}

Answer = tuple[int, Any]


@dataclass
class Call:
    hook: str
    body: dict[str, Any]
    headers: dict[str, str]


def default_answers() -> dict[str, Callable[[dict[str, Any]], Any]]:
    return {
        "connect": lambda body: (401, {"error": "no session"}),
        "join": lambda body: (200, {"allow": True}),
        "publish": lambda body: (200, {}),
        "rpc": lambda body: (200, {"data": {"echo": body["data"]}}),
    }


class _CountingServer(HTTPServer):
    def handle_stream(self, stream: IOStream, address: tuple[str, int]) -> None:
        self.backend.connections += 1  # type: ignore[attr-defined]
        super().handle_stream(stream, address)


class HookBackend:
    def __init__(self, secret: str | None) -> None:
        self.secret = secret
        self.answers = default_answers()
        self.calls: list[Call] = []
        self.bad_signatures: list[str] = []
        self.bad_bodies: list[dict[str, Any]] = []  # calls whose body is not what docs/hooks.md says
        self.connections = 0
        self.port = 0
        self._open = asyncio.Event()
        self._open.set()
        self.waiting = 0  # calls held by hold()
        self._server: _CountingServer | None = None

    @classmethod
    async def start(cls, secret: str | None = None) -> HookBackend:
        backend = cls(secret)
        app = Application([(r"/(\w+)", _Hook, {"backend": backend})])
        server = _CountingServer(app)
        server.backend = backend  # type: ignore[attr-defined]
        sockets = bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        backend.port = sockets[0].getsockname()[1]
        backend._server = server
        return backend

    def url(self, hook: str) -> str:
        return f"http://127.0.0.1:{self.port}/{hook}"

    def calls_of(self, hook: str) -> list[Call]:
        return [c for c in self.calls if c.hook == hook]

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()

    def check_signature(self, raw: bytes, headers: dict[str, str]) -> None:
        """Recorded, not raised: the test asserts none was bad."""
        if self.secret is None:
            return
        stamp, signature = headers.get("X-Gateway-Timestamp", ""), headers.get("X-Gateway-Signature", "")
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:
            self.bad_signatures.append(f"timestamp {stamp!r}")
            return
        expected = "sha256=" + hmac.new(self.secret.encode(), stamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            self.bad_signatures.append("signature")


class _Hook(RequestHandler):
    def initialize(self, backend: HookBackend) -> None:
        self.backend = backend

    async def post(self, hook: str) -> None:
        backend = self.backend
        headers = dict(self.request.headers.get_all())
        backend.check_signature(self.request.body, headers)
        body = orjson.loads(self.request.body)
        if errors := CALLS[hook].validate(body):
            backend.bad_bodies.append(errors)
        backend.calls.append(Call(hook, body, headers))
        if not backend._open.is_set():
            backend.waiting += 1
            try:
                await backend._open.wait()
            finally:
                backend.waiting -= 1
        answer = backend.answers[hook](body)
        if inspect.isawaitable(answer):
            answer = await answer
        status, payload = answer
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(payload if isinstance(payload, bytes) else orjson.dumps(payload))


async def delayed(seconds: float, answer: Answer) -> Answer:
    """An answer after `seconds` (a slow backend); the sleep is the backend's behaviour under test."""
    await asyncio.sleep(seconds)
    return answer


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    sock = bind_sockets(0, "127.0.0.1")[0]
    port: int = sock.getsockname()[1]
    sock.close()
    return port
