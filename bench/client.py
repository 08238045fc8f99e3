"""Load client process: many WebSocket connections in one asyncio loop, driven by the orchestrator.

    python -m bench.client --target gateway --url ws://127.0.0.1:PORT --secret S --role sub --conns 500 ...

Runs from the bench venv (picows: a Cython WebSocket client with a per-frame callback and no
per-message future, so one process can read ~10^5 frames/s). Talks to the orchestrator in JSON
lines: prints {"event": "ready"} once every connection is joined, then waits for `go` (or `quit`)
on stdin, prints {"event": "done", ...} and waits for `quit`.

One adapter per protocol: the gateway's (README.md, "Protocol"), the same with subscribers on the
gateway's HTTP transport (an event stream read by a plain asyncio protocol, joins POSTed), Socket.IO
v5 over Engine.IO v4 (WebSocket transport only) and Centrifugo's JSON protocol. Deliveries are counted and timed the
same way for all three: the content carries MARK, the send time in CLOCK_MONOTONIC ns and "|", and
the subscriber finds it with a byte search instead of decoding the whole frame.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import collections
import os
import resource
import sys
import time
from typing import Any

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.common import MARK, raise_nofile
from services.auth import mint

MARK_B = MARK.encode()
ROLE_SUB = "sub"
ROLE_PUB = "pub"


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Stats:
    """Deliveries seen by this process; latencies in microseconds."""

    def __init__(self) -> None:
        self.received = 0
        self.frames = 0  # WebSocket frames that carried deliveries (Centrifugo batches several per frame)
        self.first_ns = 0
        self.last_ns = 0
        self.lat_us: array.array[int] = array.array("q")
        self.timing = False  # only deliveries after `go` count (none are expected before)

    def record(self, data: bytes, now: int) -> int:
        """Count and time every MARK in `data`; returns how many were found."""
        found = 0
        pos = data.find(MARK_B)
        while pos >= 0:
            end = data.find(b"|", pos + 2)
            sent = int(data[pos + 2 : end])
            found += 1
            if self.timing:
                self.lat_us.append((now - sent) // 1000)
            pos = data.find(MARK_B, end)
        if found and self.timing:
            if not self.received:
                self.first_ns = now
            self.received += found
            self.frames += 1
            self.last_ns = now
        return found


class Conn(WSListener):
    def __init__(self, proto: Proto, room: str, user: str, role: str, stats: Stats) -> None:
        super().__init__()
        self.proto = proto
        self.room = room
        self.user = user
        self.role = role
        self.stats = stats
        self.transport: WSTransport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.got = 0  # deliveries on this connection
        self.acks = 0
        self.errors = 0
        self.first_error = ""
        self.sent_at: collections.deque[int] = collections.deque()
        self.ack_lat_us: array.array[int] = array.array("q")
        self.ack_event = asyncio.Event()
        self.closed = False
        self._parts: list[bytes] = []

    # picows callbacks ---------------------------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.proto.on_open(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT or kind == WSMsgType.CONTINUATION:
            if not frame.fin:
                self._parts.append(frame.get_payload_as_bytes())
                return
            data = frame.get_payload_as_bytes()
            if self._parts:
                data = b"".join([*self._parts, data])
                self._parts.clear()
            self.proto.on_data(self, data)
        elif kind == WSMsgType.CLOSE:
            self.closed = True
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(f"closed {frame.get_close_code()} {frame.get_close_reason()}"))
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("disconnected before joining"))

    # used by the adapters -----------------------------------------------------------------
    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, data)

    def joined(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))

    def delivery(self, data: bytes) -> None:
        if self.role == ROLE_SUB:
            self.got += self.stats.record(data, time.monotonic_ns())

    def acked(self) -> None:
        now = time.monotonic_ns()
        if self.sent_at:
            self.ack_lat_us.append((now - self.sent_at.popleft()) // 1000)
        self.acks += 1
        self.ack_event.set()

    def error(self, text: bytes) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = text[:300].decode(errors="replace")
        self.ack_event.set()


class Proto:
    name = ""

    def __init__(self, base_url: str, secret: str, join: bool = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.secret = secret
        self.join = join  # False: a connection is ready once authenticated (capacity runs)

    def url(self, user: str) -> str:
        raise NotImplementedError

    def on_open(self, conn: Conn) -> None:
        raise NotImplementedError

    def on_data(self, conn: Conn, data: bytes) -> None:
        raise NotImplementedError

    def publish(self, conn: Conn, seq: int, content: str) -> None:
        raise NotImplementedError

    def token(self, user: str) -> str:
        return mint(self.secret, user, ttl=3600)


class GatewayProto(Proto):
    """README.md, "Protocol": join -> room_update joined; message -> message to every member + ack."""

    name = "gateway"

    def url(self, user: str) -> str:
        return f"{self.base_url}/?token={self.token(user)}"

    def on_open(self, conn: Conn) -> None:
        if not self.join:  # the token was checked before the upgrade
            conn.joined()
            return
        conn.send(orjson.dumps({"type": "join", "payload": {"roomId": conn.room}, "requestId": "j"}))

    def on_data(self, conn: Conn, data: bytes) -> None:
        if MARK_B in data:
            conn.delivery(data)
        elif b'"type":"ack"' in data:
            conn.acked()
        elif b'"action":"joined"' in data:
            conn.joined()
        elif b'"type":"error"' in data:
            conn.error(data)
            conn.fail(data.decode(errors="replace"))

    def publish(self, conn: Conn, seq: int, content: str) -> None:
        conn.send(orjson.dumps({"type": "message", "payload": {"roomId": conn.room, "content": content}}))


class GatewaySseProto(GatewayProto):
    """Subscribers on GET /sse (docs/protocol.md, "HTTP transport"); the publisher on a WebSocket."""

    name = "gateway-sse"

    def stream_path(self, user: str) -> str:
        return f"/sse?token={self.token(user)}"


class SseStream(asyncio.Protocol):
    """One subscriber's event stream: the response head, then `data: <frame>` events; the first is
    `session`, whose id the join is POSTed with."""

    def __init__(self, conn: Conn, host: str, port: int) -> None:
        self.conn, self.host, self.port = conn, host, port
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.head = False
        self.session = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    STATUS = b"HTTP/1.1 200"

    def body(self, data: bytes) -> bytes | None:
        """What follows the response head (with what was kept from before); None until it is complete."""
        if self.buffer:
            data, self.buffer = self.buffer + data, b""
        if self.head:
            return data
        end = data.find(b"\r\n\r\n")
        if end < 0:
            self.buffer = data
            return None
        if not data.startswith(self.STATUS):
            self.conn.fail(data[:200].decode(errors="replace"))
            return None
        self.head = True
        self.opened()
        return data[end + 4 :]

    def opened(self) -> None:
        """The response head is in (a stream waits for its `session` event)."""

    def data_received(self, data: bytes) -> None:
        body = self.body(data)
        if body is None:
            return
        events = body.split(b"\n\n")
        self.buffer = events.pop()  # what follows the last complete event
        for event in events:
            if event[:6] == b"data: ":
                self.event(event[6:])

    def event(self, frame: bytes) -> None:
        conn = self.conn
        if not self.session:
            self.session = orjson.loads(frame)["payload"]["sessionId"]
            if not conn.proto.join:  # a capacity run: admitted is ready
                conn.joined()
                return
            join = orjson.dumps({"type": "join", "payload": {"roomId": conn.room}, "requestId": "j"})
            POSTS.add(task := asyncio.ensure_future(self.post(join)))
            task.add_done_callback(POSTS.discard)
            return
        conn.proto.on_data(conn, frame)

    async def post(self, body: bytes) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST /sse/send HTTP/1.1\r\nHost: {self.host}\r\nX-Session-Id: {self.session}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        status = await reader.readline()
        writer.close()
        if b" 202 " not in status:
            self.conn.fail(f"join POST answered {status.decode(errors='replace').strip()}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.closed = True
        self.conn.fail("stream ended before joining")


class GatewayRawWsProto(GatewayProto):
    """Subscribers on WebSockets read by a plain asyncio protocol, the same machinery as the SSE
    subscribers': the transports compared with the client's cost taken out (picows reads in C)."""

    name = "gateway-rawws"


class RawWsStream(SseStream):
    """A WebSocket subscriber in pure Python: the 101 head, then unmasked server frames."""

    STATUS = b"HTTP/1.1 101"

    def opened(self) -> None:
        if not self.conn.proto.join:
            self.conn.joined()
        else:
            self.send(orjson.dumps({"type": "join", "payload": {"roomId": self.conn.room}, "requestId": "j"}))

    def data_received(self, data: bytes) -> None:
        body = self.body(data)
        if body is None:
            return
        data = body
        pos, size = 0, len(data)
        while size - pos >= 2:
            length, start = data[pos + 1] & 0x7F, pos + 2
            if length == 126:
                length, start = int.from_bytes(data[pos + 2 : pos + 4], "big"), pos + 4
            elif length == 127:
                length, start = int.from_bytes(data[pos + 2 : pos + 10], "big"), pos + 10
            if start + length > size:
                break
            if data[pos] & 0x0F == 0x1:
                self.conn.proto.on_data(self.conn, data[start : start + length])
            pos = start + length
        self.buffer = data[pos:]

    def send(self, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert self.transport is not None
        self.transport.write(head + mask + masked)


async def open_stream(conn: Conn, proto: GatewaySseProto | GatewayRawWsProto) -> asyncio.Transport:
    host, port = proto.base_url.removeprefix("ws://").split(":")
    loop = asyncio.get_running_loop()
    if isinstance(proto, GatewayRawWsProto):
        transport, _ = await loop.create_connection(lambda: RawWsStream(conn, host, int(port)), host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /?token={proto.token(conn.user)} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        transport.write(request.encode())
        return transport
    transport, _ = await loop.create_connection(lambda: SseStream(conn, host, int(port)), host, int(port))
    request = f"GET {proto.stream_path(conn.user)} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
    transport.write(request.encode())
    return transport


class SocketIOProto(Proto):
    """Socket.IO v5 packets over Engine.IO v4 frames: "0{open}", "40" connect, "42[event,data]",
    "42<id>[...]" asks for an ack that comes back as "43<id>[...]"; "2" ping -> "3" pong."""

    name = "socketio"

    def url(self, user: str) -> str:
        return f"{self.base_url}/socket.io/?EIO=4&transport=websocket"

    def on_open(self, conn: Conn) -> None:
        pass  # the server speaks first (Engine.IO open packet)

    def on_data(self, conn: Conn, data: bytes) -> None:
        if MARK_B in data:
            conn.delivery(data)
            return
        head = data[:2]
        if head == b"43":
            ack_id = int(data[2 : data.index(b"[", 2)])
            if ack_id == 1:  # the join
                conn.joined()
            else:
                conn.acked()
        elif data == b"2":
            conn.send(b"3")
        elif head == b"0{":
            conn.send(b"40" + orjson.dumps({"token": self.token(conn.user)}))
        elif head == b"40":
            if self.join:
                conn.send(b"421" + orjson.dumps(["join", {"roomId": conn.room}]))
            else:
                conn.joined()
        elif head == b"44":
            conn.error(data)
            conn.fail(data.decode(errors="replace"))

    def publish(self, conn: Conn, seq: int, content: str) -> None:
        # Ack ids from 2 on (1 was the join), so an ack is told from the join's reply.
        conn.send(f"42{seq + 2}".encode() + orjson.dumps(["message", {"roomId": conn.room, "content": content}]))


class CentrifugoProto(Proto):
    """Centrifugo JSON protocol: one frame may hold several newline-separated replies/pushes;
    "{}" is the server's ping, answered with "{}"."""

    name = "centrifugo"

    def url(self, user: str) -> str:
        return f"{self.base_url}/connection/websocket"

    def channel(self, conn: Conn) -> str:
        return f"bench:{conn.room}"

    def on_open(self, conn: Conn) -> None:
        conn.send(orjson.dumps({"id": 1, "connect": {"token": self.token(conn.user), "name": "bench"}}))

    def on_data(self, conn: Conn, data: bytes) -> None:
        for line in data.split(b"\n") if b"\n" in data else (data,):
            if not line:
                continue
            if MARK_B in line:
                conn.delivery(line)
            elif line == b"{}":
                conn.send(b"{}")
            elif b'"publish"' in line:
                conn.acked()
            elif b'"error"' in line:
                conn.error(line)
                conn.fail(line.decode(errors="replace"))
            elif line.startswith(b'{"id":1,'):
                if self.join:
                    conn.send(orjson.dumps({"id": 2, "subscribe": {"channel": self.channel(conn)}}))
                else:
                    conn.joined()
            elif line.startswith(b'{"id":2,'):
                conn.joined()

    def publish(self, conn: Conn, seq: int, content: str) -> None:
        data = {"roomId": conn.room, "content": content}
        conn.send(orjson.dumps({"id": seq + 3, "publish": {"channel": self.channel(conn), "data": data}}))


PROTOS: dict[str, type[Proto]] = {
    p.name: p for p in (GatewayProto, GatewaySseProto, GatewayRawWsProto, SocketIOProto, CentrifugoProto)
}


def content_for(seq: int, size: int) -> str:
    head = f"{MARK}{time.monotonic_ns()}|{seq}|"
    return head + "x" * max(0, size - len(head))


async def open_conns(
    proto: Proto, role: str, count: int, offset: int, rooms: int, stats: Stats, concurrency: int
) -> tuple[list[Conn], float]:
    sem = asyncio.Semaphore(concurrency)
    conns: list[Conn] = []
    streams = STREAMS
    start = time.monotonic()

    async def one(i: int) -> None:
        idx = offset + i
        room = f"r{idx % rooms}"
        user = f"{role}{idx}"
        async with sem:
            for attempt in range(3):
                conn = Conn(proto, room, user, role, stats)
                try:
                    if isinstance(proto, (GatewaySseProto, GatewayRawWsProto)) and role == ROLE_SUB:
                        streams.append(await open_stream(conn, proto))
                    else:
                        await ws_connect(lambda c=conn: c, proto.url(user), websocket_handshake_timeout=30)
                    await asyncio.wait_for(conn.ready, 30)
                    conns.append(conn)
                    return
                except (OSError, ConnectionError, TimeoutError) as exc:
                    if attempt == 2:
                        raise ConnectionError(f"{user}: {exc!r}") from exc
                    await asyncio.sleep(0.2 * (attempt + 1))

    await asyncio.gather(*(one(i) for i in range(count)))
    return conns, time.monotonic() - start


async def read_command() -> str:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    return line.strip() or "quit"


async def run_sub(args: argparse.Namespace, proto: Proto) -> None:
    stats = Stats()
    conns, connect_s = await open_conns(proto, ROLE_SUB, args.conns, args.offset, args.rooms, stats, args.concurrency)
    emit({"event": "ready", "conns": len(conns), "connect_s": connect_s})
    cmd = await read_command()
    if cmd == "go":
        stats.timing = True
        expected = args.expect * len(conns)
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        last_seen, last_count = time.monotonic(), 0
        while stats.received < expected:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            if stats.received != last_count:
                last_seen, last_count = now, stats.received
            elif now - last_seen > args.idle_timeout or now - wall0 > args.max_seconds:
                break
        cpu, wall = cpu_seconds() - cpu0, time.monotonic() - wall0
        lat_file = f"{args.lat_file}" if args.lat_file else ""
        if lat_file:
            with open(lat_file, "wb") as fh:  # noqa: ASYNC230 - after timing, nothing else runs
                stats.lat_us.tofile(fh)
        short = [c for c in conns if c.got < args.expect]
        emit(
            {
                "event": "done",
                "received": stats.received,
                "frames": stats.frames,
                "expected": expected,
                "first_ns": stats.first_ns,
                "last_ns": stats.last_ns,
                "cpu_s": cpu,
                "wall_s": wall,
                "lat_file": lat_file,
                "short_conns": len(short),
                "closed_conns": sum(1 for c in conns if c.closed),
            }
        )
        cmd = await read_command()
    await close_all(conns)


async def run_pub(args: argparse.Namespace, proto: Proto) -> None:
    stats = Stats()
    conns, connect_s = await open_conns(proto, ROLE_PUB, args.rooms, 0, args.rooms, stats, args.concurrency)
    emit({"event": "ready", "conns": len(conns), "connect_s": connect_s})
    cmd = await read_command()
    if cmd == "go":
        per_conn_rate = args.rate / len(conns) if args.rate > 0 else 0.0
        cpu0 = cpu_seconds()
        t0 = time.monotonic_ns()
        rate, window = per_conn_rate, args.window
        await asyncio.gather(*(send_loop(proto, c, args.messages, args.size, rate, window) for c in conns))
        t1 = time.monotonic_ns()
        # Wait (bounded) for the last acks.
        deadline = time.monotonic() + args.idle_timeout
        while sum(c.acks + c.errors for c in conns) < args.messages * len(conns) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        ack = sorted(v for c in conns for v in c.ack_lat_us)
        emit(
            {
                "event": "done",
                "sent": args.messages * len(conns),
                "acks": sum(c.acks for c in conns),
                "errors": sum(c.errors for c in conns),
                "first_error": next((c.first_error for c in conns if c.first_error), ""),
                "first_send_ns": t0,
                "last_send_ns": t1,
                "cpu_s": cpu_seconds() - cpu0,
                "ack_p50_us": ack[len(ack) // 2] if ack else None,
                "ack_p99_us": ack[min(len(ack) - 1, int(len(ack) * 0.99))] if ack else None,
            }
        )
        cmd = await read_command()
    await close_all(conns)


async def send_loop(proto: Proto, conn: Conn, count: int, size: int, rate: float, window: int) -> None:
    """Fixed rate (`rate` > 0, messages/s on this connection) or as fast as acks allow with at most
    `window` messages unacknowledged."""
    if rate > 0:
        start = time.monotonic()
        sent = 0
        while sent < count and not conn.closed:
            due = min(count, int((time.monotonic() - start) * rate) + 1)
            while sent < due:
                conn.sent_at.append(time.monotonic_ns())
                proto.publish(conn, sent, content_for(sent, size))
                sent += 1
            await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
        return
    for seq in range(count):
        while seq - (conn.acks + conn.errors) >= window and not conn.closed:
            conn.ack_event.clear()
            try:
                await asyncio.wait_for(conn.ack_event.wait(), 10)
            except TimeoutError:
                return
        if conn.closed:
            return
        conn.sent_at.append(time.monotonic_ns())
        proto.publish(conn, seq, content_for(seq, size))


STREAMS: list[asyncio.Transport] = []  # the HTTP transport's subscribers (closed by close_all)
POSTS: set[asyncio.Task[None]] = set()  # their joins under way


async def close_all(conns: list[Conn]) -> None:
    for stream in STREAMS:
        stream.close()
    for c in conns:
        if c.transport is not None and not c.closed:
            c.transport.send_close()
            c.transport.disconnect()
    await asyncio.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.client")
    p.add_argument("--target", choices=sorted(PROTOS), required=True)
    p.add_argument("--url", required=True, help="ws://127.0.0.1:PORT")
    p.add_argument("--secret", required=True)
    p.add_argument("--role", choices=[ROLE_SUB, ROLE_PUB], required=True)
    p.add_argument("--conns", type=int, default=0, help="subscriber connections in this process")
    p.add_argument("--offset", type=int, default=0, help="index of this process's first connection")
    p.add_argument("--rooms", type=int, default=1)
    p.add_argument("--messages", type=int, default=0, help="messages per publisher (one publisher per room)")
    p.add_argument("--expect", type=int, default=0, help="deliveries expected per subscriber connection")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--rate", type=float, default=0.0, help="total messages/s over all publishers; 0: ack-paced")
    p.add_argument("--window", type=int, default=8, help="unacknowledged messages per publisher when ack-paced")
    p.add_argument("--concurrency", type=int, default=64, help="handshakes in flight")
    p.add_argument("--idle-timeout", type=float, default=5.0)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--lat-file", default="")
    p.add_argument("--join", action=argparse.BooleanOptionalAction, default=True, help="join a room after auth")
    args = p.parse_args(argv)
    raise_nofile()
    proto = PROTOS[args.target](args.url, args.secret, args.join)
    runner = run_sub if args.role == ROLE_SUB else run_pub
    try:
        asyncio.run(runner(args, proto))
    except ConnectionError as exc:
        emit({"event": "error", "error": str(exc)[:500]})
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
