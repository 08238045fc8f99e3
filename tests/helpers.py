"""Test helpers: a real WebSocket client, a gateway on a real port (in-process or as a process),
and polling with a deadline instead of sleeps."""

from __future__ import annotations

import asyncio
import base64
import inspect
import itertools
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.websocket import WebSocketClientConnection, websocket_connect

from schemas.server import validate_server_frame
from server import start_listening
from services.auth import mint
from services.bus.memory import MemoryNetwork
from services.dedupe import DedupeStore
from services.gateway import Gateway
from services.session import Session
from services.settings import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
DEFAULT_TIMEOUT = 5.0
_MARKERS = itertools.count(1)


def token(sub: str, ttl: float = 3600, secret: str = SECRET, **kw: Any) -> str:
    return mint(secret, sub, ttl=ttl, **kw)


def test_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"port": 0, "host": "127.0.0.1", "jwt_secret": SECRET, "instance_id": "test"}
    base.update(overrides)
    return Settings(**base)


def sample(name: str, **labels: str) -> float:
    """A metric of this process's gateways, as /metrics would say it (0 before its first count)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def readyz(http: str) -> tuple[int, dict[str, Any]]:
    """/readyz of the gateway at `http` (its base URL): status and JSON body."""
    response = await AsyncHTTPClient().fetch(f"{http}/readyz", raise_error=False, request_timeout=5)
    return response.code, json.loads(response.body)


async def wait_for(
    cond: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT, interval: float = 0.02, what: str = "condition"
) -> Any:
    """Poll `cond` (sync or async) until truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class Client:
    """A protocol-speaking test client over a real WebSocket. Every frame received is checked
    against the server frame schemas."""

    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn
        self.backlog: list[dict[str, Any]] = []
        self.closed = False

    @classmethod
    async def connect(
        cls, url: str, tok: str | None = None, headers: dict[str, str] | None = None, **kw: Any
    ) -> Client:
        full = url if tok is None else f"{url}?token={tok}"
        req = HTTPRequest(full, headers=headers or {}, connect_timeout=5, request_timeout=5)
        conn = await websocket_connect(req, **kw)
        return cls(conn)

    def send(self, frame_type: str, payload: dict[str, Any] | None = None, request_id: str | None = None) -> None:
        frame: dict[str, Any] = {"type": frame_type, "payload": payload if payload is not None else {}}
        if request_id is not None:
            frame["requestId"] = request_id
        self.send_raw(json.dumps(frame))

    def send_raw(self, data: str | bytes, binary: bool = False) -> None:
        self.conn.write_message(data, binary=binary)

    async def recv(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any] | None:
        """Next frame, or None once the server closed the socket."""
        if self.backlog:
            return self.backlog.pop(0)
        raw = await asyncio.wait_for(self.conn.read_message(), timeout)
        if raw is None:
            self.closed = True
            return None
        assert isinstance(raw, str), "server frames are text"
        frame = json.loads(raw)
        validate_server_frame(frame)
        return frame  # type: ignore[no-any-return]

    async def expect(
        self,
        frame_type: str,
        timeout: float = DEFAULT_TIMEOUT,
        match: Callable[[dict[str, Any]], bool] | None = None,
        only: bool = False,
    ) -> dict[str, Any]:
        """Read until a frame of `frame_type` (matching `match`) arrives; others are kept for later.
        With `only`, a frame of `frame_type` that does not match, arriving first, fails the test:
        "the next presence is typing", not "some presence, some time, is typing"."""
        deadline = time.monotonic() + timeout
        skipped: list[dict[str, Any]] = []
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {frame_type} frame within {timeout}s; got {skipped!r}")
                try:
                    frame = await self.recv(left)
                except TimeoutError:
                    raise AssertionError(f"no {frame_type} frame within {timeout}s; got {skipped!r}") from None
                if frame is None:
                    raise AssertionError(f"closed ({self.close_code}) before a {frame_type} frame; got {skipped!r}")
                if frame["type"] == frame_type and (match is None or match(frame)):
                    return frame
                if only and frame["type"] == frame_type:
                    raise AssertionError(f"a {frame_type} frame before the expected one: {frame!r}")
                skipped.append(frame)
        finally:
            self.backlog[:0] = skipped

    async def reply_to(self, request_id: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The frame that answers `request_id`, whatever its type (a reply or an error)."""
        deadline = time.monotonic() + timeout
        skipped: list[dict[str, Any]] = []
        try:
            while True:
                frame = await self.recv(max(0.0, deadline - time.monotonic()))
                assert frame is not None, f"closed before the reply to {request_id}"
                if frame.get("requestId") == request_id:
                    return frame
                skipped.append(frame)
        except TimeoutError:
            raise AssertionError(f"no reply to {request_id} within {timeout}s; got {skipped!r}") from None
        finally:
            self.backlog[:0] = skipped

    async def expect_error(self, code: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        frame = await self.expect("error", timeout)
        assert frame["payload"]["code"] == code, frame
        return frame

    async def expect_absent(
        self,
        frame_type: str,
        until: Callable[[dict[str, Any]], bool],
        match: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Read up to a marker frame (`until`) and fail if a `frame_type` frame (matching `match`)
        came before it. Proves absence without a timed window, when the marker is sent so that it
        would follow the unwanted frame. Other frames read meanwhile stay for later reads."""
        deadline = time.monotonic() + timeout
        skipped: list[dict[str, Any]] = []
        try:
            while True:
                frame = await self.recv(max(deadline - time.monotonic(), 0.01))
                assert frame is not None, f"closed before the marker; got {skipped!r}"
                if until(frame):
                    return
                if frame["type"] == frame_type and (match is None or match(frame)):
                    raise AssertionError(f"unexpected {frame_type} before the marker: {frame!r}")
                skipped.append(frame)
        finally:
            self.backlog[:0] = skipped

    async def none_before_pong(self, frame_type: str, match: Callable[[dict[str, Any]], bool] | None = None) -> None:
        """No `frame_type` frame before the pong to a ping sent now: the server handles this
        connection's frames in order, so whatever it queued for us before the ping comes first."""
        marker = f"marker-{next(_MARKERS)}"
        self.send("ping", request_id=marker)
        await self.expect_absent(
            frame_type, until=lambda f: f["type"] == "pong" and f.get("requestId") == marker, match=match
        )

    async def join(self, room: str) -> dict[str, Any]:
        self.send("join", {"roomId": room})
        await self.expect("room_update", match=lambda f: f["payload"]["roomId"] == room)
        return await self.expect("presence_state", match=lambda f: f["payload"]["roomId"] == room)

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> int | None:
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"socket still open after {timeout}s")
            try:
                await self.recv(left)
            except TimeoutError:
                continue
        return self.close_code

    def drain_in_background(self) -> asyncio.Task[int]:
        """Keep reading (and counting) frames so this client never backs up; for senders in load tests."""

        async def run() -> int:
            count = 0
            while await self.conn.read_message() is not None:
                count += 1
            return count

        return asyncio.ensure_future(run())

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code

    def close(self) -> None:
        self.conn.close()


async def refused_status(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """Try an upgrade that must be refused; returns (HTTP status, JSON body)."""
    try:
        conn = await websocket_connect(HTTPRequest(url, headers=headers or {}, request_timeout=5))
    except HTTPClientError as exc:
        body = exc.response.body if exc.response is not None else b"{}"
        return exc.code, json.loads(body or b"{}")
    conn.close()
    raise AssertionError("upgrade was accepted")


class _Addresses:
    """WebSocket and HTTP base URLs of a gateway listening on 127.0.0.1:port."""

    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class RunningGateway(_Addresses):
    """A gateway served in-process on a real port."""

    gateway: Gateway
    servers: list[HTTPServer]
    port: int
    internal_port: int | None = None

    @property
    def settings(self) -> Settings:
        return self.gateway.settings

    async def client(self, sub: str = "alice", **kw: Any) -> Client:
        return await Client.connect(self.url, token(sub, **kw))

    async def stop(self) -> None:
        for server in self.servers:
            server.stop()
        for session in list(self.gateway.sessions):
            session.close(1001, "test over")
        await self.gateway.hub.settle(2.0)
        await self.gateway.stop()


async def start_gateway(
    settings: Settings, network: MemoryNetwork | None = None, dedupe: DedupeStore | None = None
) -> RunningGateway:
    """Serve a gateway on a free port. Gateways given the same `network` and `dedupe` act as
    instances of one deployment (as if they shared Redis)."""
    gateway = Gateway(settings, network=network, dedupe=dedupe)
    await gateway.start()
    sockets = bind_sockets(0, "127.0.0.1")
    internal = bind_sockets(0, "127.0.0.1") if settings.internal_port is not None else None
    servers = start_listening(gateway, sockets, internal)
    return RunningGateway(
        gateway, servers, sockets[0].getsockname()[1], internal[0].getsockname()[1] if internal else None
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GatewayProcess(_Addresses):
    """`python server.py` as a real process; its JSON log lines are collected from stderr."""

    proc: subprocess.Popen[str]
    port: int = 0
    lines: list[str] = field(default_factory=list)
    listening: threading.Event = field(default_factory=threading.Event)

    def logged(self, event: str) -> list[dict[str, Any]]:
        """The JSON log records whose `event` is `event` (non-JSON lines are skipped)."""
        out = []
        for line in list(self.lines):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                out.append(record)
        return out

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)


def spawn_server(
    *args: str,
    env: dict[str, str] | None = None,
    wait_listening: bool = True,
    timeout: float = 20,
    collect: bool = False,
    nofile: int | None = None,
) -> GatewayProcess:
    """Start server.py with `args`; returns once it logged `listening` (the port is read from it).
    With wait_listening=False it returns at once: stderr is then left to the caller, unless
    `collect` asks for it to be gathered into `lines` (and `listening`/`port` set) in the background.
    `nofile` sets the server's RLIMIT_NOFILE (soft and hard)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "REDIS_", "KAFKA_"))}
    full_env.update({"PYTHONUNBUFFERED": "1"})
    full_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "server.py", *args],
        cwd=ROOT,
        env=full_env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None,
    )
    gp = GatewayProcess(proc)
    if not wait_listening and not collect:
        return gp
    ready = gp.listening

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            gp.lines.append(line)
            if '"listening"' in line and not ready.is_set():
                gp.port = int(json.loads(line)["port"])
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not wait_listening:
        return gp
    if not ready.wait(timeout) or gp.port == 0:
        gp.kill()
        raise AssertionError("server did not start: " + "".join(gp.lines[-20:]))
    return gp


class RawWebSocket:
    """A blocking WebSocket client on a plain socket with a tiny receive buffer. It reads only when
    asked, so the server's writes back up as with a stalled mobile client; it also sends what a
    well-behaved library would refuse to (fuzzing). Use it off the event loop."""

    def __init__(self, port: int, tok: str, path: str = "/", rcvbuf: int = 4096) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path}?token={tok} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("closed during handshake")
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        self._buf = b""

    def _send(self, opcode: int, data: bytes) -> None:
        self.sock.sendall(encode_frame(0x80 | opcode, data))

    def send_text(self, text: str) -> None:
        self._send(0x1, text.encode())

    def send_binary(self, data: bytes) -> None:
        self._send(0x2, data)

    def recv_frame(self, timeout: float = 10.0) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next frame, or None when the peer closed the TCP connection."""
        self.sock.settimeout(timeout)
        while True:
            size = _frame_size(self._buf)
            if size is not None and len(self._buf) >= size:
                frame, self._buf = self._buf[:size], self._buf[size:]
                return frame[0] & 0x0F, frame[_header_size(frame) :]
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._buf += chunk

    def recv_json(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """Next text frame as JSON (schema-checked); None once closed."""
        while True:
            frame = self.recv_frame(timeout)
            if frame is None or frame[0] == 0x8:
                return None
            if frame[0] == 0x1:
                data = json.loads(frame[1])
                validate_server_frame(data)
                return data  # type: ignore[no-any-return]

    def read_until_close(self, timeout: float) -> int | None:
        """Discard frames until the close frame; returns its code."""
        while True:
            frame = self.recv_frame(timeout)
            if frame is None:
                return None
            if frame[0] == 0x8:
                return int(struct.unpack("!H", frame[1][:2])[0]) if len(frame[1]) >= 2 else None

    def close(self) -> None:
        self.sock.close()


def encode_frame(first: int, data: bytes, masked: bool = True, length: int | None = None) -> bytes:
    """One client frame: `first` is the FIN/RSV/opcode byte; `masked=False` and `length` (a
    claimed payload length other than the real one) make frames a client library would refuse."""
    n = len(data) if length is None else length
    mask_bit = 0x80 if masked else 0
    if n < 126:
        header = bytes([first, mask_bit | n])
    elif n < 65536:
        header = bytes([first, mask_bit | 126]) + struct.pack("!H", n)
    else:
        header = bytes([first, mask_bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return header + data
    mask = os.urandom(4)
    key = (mask * (len(data) // 4 + 1))[: len(data)]
    body = (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(len(data), "big") if data else b""
    return header + mask + body


def _header_size(buf: bytes) -> int:
    n = buf[1] & 0x7F
    return 2 if n < 126 else 4 if n == 126 else 10


def _frame_size(buf: bytes) -> int | None:
    if len(buf) < 2:
        return None
    n = buf[1] & 0x7F
    if n == 126:
        if len(buf) < 4:
            return None
        n = struct.unpack("!H", buf[2:4])[0]
    elif n == 127:
        if len(buf) < 10:
            return None
        n = struct.unpack("!Q", buf[2:10])[0]
    return _header_size(buf) + n


class NoExits:
    """Control's way out of a room (services/hub/control.py Exits), doing nothing: for unit tests of
    Control's own bookkeeping."""

    def remove(self, room: str, sessions: Sequence[Session], frame: bytes | None, announce: bool) -> None:
        return None
