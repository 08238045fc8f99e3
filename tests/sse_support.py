"""A protocol-speaking test client over the HTTP transport: a real TCP connection reading the event
stream (parsed here, line by line, as a browser's EventSource would) and real POSTs for its frames.
It answers to the same calls as tests/helpers.py's Client, so a test reads the same either way."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from schemas.server import validate_server_frame, validate_stream_event
from tests.helpers import DEFAULT_TIMEOUT, Client, RunningGateway, token

HEARTBEAT: dict[str, Any] = {"type": ":heartbeat"}  # what _next_event returns for a comment, when asked


class Refused(Exception):
    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        super().__init__(f"stream refused: {status} {body}")
        self.status, self.body, self.headers = status, body, headers


class SseClient(Client):
    """GET /sse and POST /sse/send. `send` queues frames; one task posts them in order, several
    queued in one turn as one list (as the JavaScript client does)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        self.reader, self.writer, self.port = reader, writer, port
        self.backlog: list[dict[str, Any]] = []
        self.closed = False
        self.closed_event: dict[str, Any] | None = None
        self.heartbeats = 0
        self.headers: dict[str, str] = {}
        self.session_id = ""
        self.send_url = ""
        self.answers: list[int] = []  # the status of every POST `send` made
        self._outbox: list[dict[str, Any]] = []
        self._dechunker: asyncio.Task[None] | None = None
        self._poster: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        port: int,
        tok: str | None = None,
        headers: dict[str, str] | None = None,
        query: str = "",
        rcvbuf: int | None = None,
    ) -> SseClient:
        """The stream, its `session` event read; Refused(status, body) when the gateway says no."""
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        path = "/sse" + (f"?token={tok}" if tok else "") + (("&" if tok else "?") + query if query else "")
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        client = cls(reader, writer, port)
        status = await client._read_head()
        if status != 200:
            length = int(client.headers.get("content-length", "0"))
            body = await asyncio.wait_for(reader.readexactly(length), DEFAULT_TIMEOUT) if length else b"{}"
            writer.close()
            raise Refused(status, json.loads(body), client.headers)
        if client.headers.get("transfer-encoding") == "chunked":  # re-encoded by a proxy (nginx)
            client.reader = asyncio.StreamReader(limit=1 << 20)
            client._dechunker = asyncio.ensure_future(_dechunk(reader, client.reader))
        first = await client._next_event(DEFAULT_TIMEOUT)
        assert first is not None and first["type"] == "session", first
        validate_stream_event(first)
        client.session_id = first["payload"]["sessionId"]
        client.send_url = first["payload"]["sendUrl"]
        return client

    # -- the stream --------------------------------------------------------------------------

    async def _read_head(self) -> int:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), DEFAULT_TIMEOUT)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1])

    async def _next_event(self, timeout: float, heartbeats: bool = False) -> dict[str, Any] | None:
        """The next event's frame (comments counted as heartbeats, and with `heartbeats` returned as
        HEARTBEAT); None when the stream ended."""
        data: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), timeout)
            if not raw:
                return None
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                self.heartbeats += 1
                if heartbeats and not data:
                    return HEARTBEAT
            elif line.startswith("data: "):
                data.append(line[6:])
            elif not line and data:
                return json.loads("\n".join(data))  # type: ignore[no-any-return]
            elif line:
                raise AssertionError(f"not an SSE line: {line!r}")

    async def recv(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any] | None:
        if self.backlog:
            return self.backlog.pop(0)
        if self.closed:
            return None
        frame = await self._next_event(timeout)
        if frame is not None and frame["type"] == "closed":
            validate_stream_event(frame)
            self.closed_event = frame
            frame = await self._next_event(timeout)
            assert frame is None, f"an event after `closed`: {frame!r}"
        if frame is None:
            self.closed = True
            return None
        validate_server_frame(frame)
        return frame

    async def heartbeat(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Read on until the next heartbeat comment (frames meanwhile are kept for later reads)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self._next_event(max(0.01, deadline - time.monotonic()), heartbeats=True)
            if frame is HEARTBEAT:
                return
            assert frame is not None and frame["type"] != "closed", f"the stream ended: {frame!r}"
            validate_server_frame(frame)
            self.backlog.append(frame)

    @property
    def close_code(self) -> int | None:
        return self.closed_event["payload"]["code"] if self.closed_event is not None else None

    def close(self) -> None:
        self.writer.close()
        for task in (self._poster, self._dechunker):
            if task is not None:
                task.cancel()

    # -- frames to the gateway ---------------------------------------------------------------

    def send_raw(self, data: str | bytes, binary: bool = False) -> None:
        self._outbox.append(json.loads(data))
        if self._poster is None or self._poster.done():
            self._poster = asyncio.ensure_future(self._post_queued())

    async def _post_queued(self) -> None:
        await asyncio.sleep(0)  # the frames sent in this turn go together
        while self._outbox:
            batch, self._outbox = self._outbox, []
            status, body, _ = await self.post(batch if len(batch) > 1 else batch[0])
            self.answers.append(status)
            assert status == 202, (status, body)

    async def post(
        self,
        body: Any,
        session_id: str | None = None,
        headers: dict[str, str] | None = None,
        port: int | None = None,
        raw: bool = False,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """One POST /sse/send (to this gateway or the one on `port`): status, JSON body, headers."""
        return await post_frames(
            port or self.port, self.session_id if session_id is None else session_id, body, headers, raw
        )


async def _dechunk(raw: asyncio.StreamReader, out: asyncio.StreamReader) -> None:
    """HTTP/1.1 chunked transfer encoding undone: what the events' parser reads."""
    try:
        while size := int((await raw.readline()).split(b";")[0] or b"0", 16):
            out.feed_data(await raw.readexactly(size))
            await raw.readexactly(2)
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    out.feed_eof()


async def post_frames(
    port: int, session_id: str, body: Any, headers: dict[str, str] | None = None, raw: bool = False
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = body if raw else json.dumps(body).encode()
    all_headers = {"X-Session-Id": session_id, "Content-Type": "application/json", **(headers or {})}
    request = HTTPRequest(
        f"http://127.0.0.1:{port}/sse/send", method="POST", body=data, headers=all_headers, request_timeout=10
    )
    try:
        response = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as exc:
        assert exc.response is not None, exc
        response = exc.response
    answer = json.loads(response.body or b"{}")
    return response.code, answer, {k.lower(): v for k, v in response.headers.get_all()}


async def sse_client(gw: RunningGateway, sub: str = "alice", **kw: Any) -> SseClient:
    return await SseClient.open(gw.port, token(sub, **kw))
