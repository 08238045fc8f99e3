"""Client process of the reconnect storm (bench/storm.py): members that drop at once and come back.

    python -m bench.storm_client --target gateway --url ws://127.0.0.1:PORT --secret S --role sub \
        --conns 2500 --offset 0 --rooms 100 --jitter 2

Commands arrive on stdin, one per line; events leave on stdout as JSON lines:

- (start)  role `sub`: open `--conns` members, each in room `r{index % rooms}`; role `pub`: one
           publisher per room. Then {"event": "ready"}.
- `go`     publishers start sending `--rate` messages/s in all, each carrying its send time and a
           per-room sequence number, until `stop`.
- `drop`   every member's TCP connection is closed at once (no close frame: a network blip or a
           killed instance, as clients see it); each comes back after a uniform random delay in
           [0, jitter] with the same token and recovers what it missed: the gateway by joining again
           with `since`, Centrifugo by subscribing with `recover` (positioned namespace), Socket.IO by
           connection state recovery (`pid` and `offset` in its CONNECT). {"event": "back"} once every
           member is back (the reply that says recovered, or not).
- `stop`   publishers stop and say {"event": "stopped", "last": {room: seq}}.
- `report FILE`  members write what they saw to FILE (JSON) and say {"event": "reported"}.
- `quit`

A member is "back" when its recovering reply arrives (gateway `room_update joined`, Centrifugo's
subscribe reply, Socket.IO's CONNECT). Deliveries are checked per room for gaps and duplicates
(sequence numbers), and timed: a delivery is live if it was sent after its member was back (or by a
publisher, which never drops), replayed otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from array import array
from typing import Any

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.client import cpu_seconds, emit
from bench.common import MARK, raise_nofile
from services.auth import mint

CENTRIFUGO_NS = "storm"  # bench/targets.py: a namespace with history, recovery and positioning


class Member(WSListener):
    """One user in one room; survives its connections (the state a client SDK keeps)."""

    def __init__(self, out: Out, proto: str, room: str, user: str, token: str, publisher: bool) -> None:
        super().__init__()
        self.out = out
        self.proto = proto
        self.room = room
        self.user = user
        self.token = token
        self.publisher = publisher
        self.transport: WSTransport | None = None
        self.ready: asyncio.Future[None] | None = None
        # Recovery state, as a client SDK keeps it.
        self.offset: int | str | None = None
        self.epoch = ""
        self.pid = ""
        self.recovering = False
        # What this member saw.
        self.last_seq = -1
        self.missing = 0
        self.dups = 0
        self.not_recovered = 0
        self.back_ns = 0
        self.failures = 0
        self.refused = 0  # a publisher's messages answered with an error (not stored: a gap for all)

    # picows ---------------------------------------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.proto == "gateway":
            payload: dict[str, Any] = {"roomId": self.room}
            if self.recovering and self.epoch:
                payload["since"] = {"offset": self.offset, "epoch": self.epoch}
            self.send(orjson.dumps({"type": "join", "payload": payload, "requestId": "j"}))
        elif self.proto == "centrifugo":
            self.send(orjson.dumps({"id": 1, "connect": {"token": self.token, "name": "storm"}}))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            data = frame.get_payload_as_bytes()
            if self.proto == "gateway":
                self._gateway(data)
            elif self.proto == "centrifugo":
                for line in data.split(b"\n"):
                    if line:
                        self._centrifugo(line)
            else:
                self._socketio(data)
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.transport is transport:
            self.transport = None
        self._fail("disconnected")

    # protocols ------------------------------------------------------------------------------
    def _gateway(self, data: bytes) -> None:
        frame = orjson.loads(data)
        kind, payload = frame.get("type"), frame.get("payload") or {}
        if kind == "message":
            self.offset = payload.get("offset", self.offset)
            self.entry(payload["content"])
        elif kind == "room_update" and frame.get("requestId") == "j":
            recovered = payload.get("recovered")
            if not recovered:
                self.offset, self.epoch = payload.get("offset", 0), payload.get("epoch", "")
            self._back(recovered is True)
        elif kind == "error":
            if frame.get("requestId") == "j":
                self._fail(f"error {payload.get('code')}")
            elif self.publisher:
                self.refused += 1

    def _centrifugo(self, line: bytes) -> None:
        if line == b"{}":
            self.send(b"{}")
            return
        msg = orjson.loads(line)
        push = msg.get("push")
        if push is not None:
            pub = push.get("pub")
            if pub is not None:
                self.offset = pub.get("offset", self.offset)
                self.entry(pub["data"]["content"])
            return
        if "error" in msg:
            if msg.get("id") in (1, 2):
                self._fail(f"error {msg['error']}")
            return
        if msg.get("id") == 1:
            sub: dict[str, Any] = {"channel": f"{CENTRIFUGO_NS}:{self.room}"}
            if self.recovering and self.epoch:
                sub.update(recover=True, offset=self.offset, epoch=self.epoch)
            self.send(orjson.dumps({"id": 2, "subscribe": sub}))
        elif msg.get("id") == 2:
            reply = msg["subscribe"]
            for pub in reply.get("publications", ()):
                self.offset = pub.get("offset", self.offset)
                self.entry(pub["data"]["content"])
            recovered = reply.get("recovered") is True
            if not recovered or self.offset is None:
                self.offset = reply.get("offset", 0)
            self.epoch = reply.get("epoch", "")
            self._back(recovered)

    def _socketio(self, data: bytes) -> None:
        head = data[:2]
        if head == b"42":
            body = orjson.loads(data[2:])
            if len(body) > 2 and isinstance(body[-1], str):
                self.offset = body[-1]
            self.entry(body[1]["content"])
        elif data == b"2":
            self.send(b"3")
        elif head == b"0{":
            auth: dict[str, Any] = {"token": self.token}
            if self.recovering and self.pid:
                auth.update(pid=self.pid, offset=self.offset)
            self.send(b"40" + orjson.dumps(auth))
        elif head == b"40":
            pid = orjson.loads(data[2:]).get("pid", "")
            recovered = self.recovering and bool(pid) and pid == self.pid
            self.pid = pid
            if recovered:
                self._back(True)
            else:
                self.send(b"421" + orjson.dumps(["join", {"roomId": self.room}]))
        elif head == b"43":
            self._back(False)
        elif head == b"44":
            self._fail("connect refused")

    # shared ---------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.send(WSMsgType.TEXT, data)

    def entry(self, content: str) -> None:
        now = time.monotonic_ns()
        sent, seq_text, _rest = content.split("|", 2)
        seq = int(seq_text)
        if self.last_seq >= 0:
            if seq > self.last_seq + 1:
                self.missing += seq - self.last_seq - 1
            elif seq <= self.last_seq:
                self.dups += 1
                return
        self.last_seq = seq
        sent_ns = int(sent[len(MARK) :])
        if self.out.timing and (self.publisher or (self.back_ns and sent_ns >= self.back_ns)):
            self.out.live_at.append(now)
            self.out.live_us.append((now - sent_ns) // 1000)

    def _back(self, recovered: bool) -> None:
        if self.recovering:
            self.back_ns = time.monotonic_ns()
            self.not_recovered += not recovered
        self.recovering = False
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(None)

    def _fail(self, why: str) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(ConnectionError(why))

    async def connect(self, url: str) -> None:
        """Open, authenticate, (re)join; retried with a short backoff, counted as failures."""
        for attempt in range(20):
            self.ready = asyncio.get_running_loop().create_future()
            try:
                await ws_connect(lambda: self, url, websocket_handshake_timeout=30)
                await asyncio.wait_for(self.ready, 30)
                return
            except (OSError, ConnectionError, TimeoutError) as exc:
                self.failures += 1
                if self.transport is not None:
                    self.transport.disconnect()
                if attempt == 19:
                    raise ConnectionError(f"{self.user}: {exc!r}") from exc
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0))

    def drop(self) -> None:
        self.recovering = True
        if self.transport is not None:
            self.transport.disconnect()
            self.transport = None


class Out:
    """Live deliveries timed in this process (receive time, latency in µs)."""

    def __init__(self) -> None:
        self.timing = False
        self.live_at: array[int] = array("q")
        self.live_us: array[int] = array("q")


def url_for(target: str, base: str, token: str) -> str:
    if target == "gateway":
        return f"{base}/?token={token}"
    if target == "centrifugo":
        return f"{base}/connection/websocket"
    return f"{base}/socket.io/?EIO=4&transport=websocket"


async def read_command() -> str:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    return line.strip() or "quit"


async def open_all(members: list[Member], url: str, concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(m: Member) -> None:
        async with sem:
            await m.connect(url_for(m.proto, url, m.token))

    await asyncio.gather(*(one(m) for m in members))


async def storm(members: list[Member], url: str, jitter: float) -> dict[str, Any]:
    drop_ns = time.monotonic_ns()
    cpu0 = cpu_seconds()
    for m in members:
        m.drop()

    async def back(m: Member) -> None:
        await asyncio.sleep(random.uniform(0, jitter))
        await m.connect(url_for(m.proto, url, m.token))

    await asyncio.gather(*(back(m) for m in members))
    return {"event": "back", "drop_ns": drop_ns, "cpu_s": cpu_seconds() - cpu0}


async def publish(pubs: list[Member], rate: float, size: int, stop: asyncio.Event) -> None:
    """Round-robin over the rooms at `rate` messages/s in all, until `stop`."""
    seqs = [0] * len(pubs)
    start, sent = time.monotonic(), 0
    while not stop.is_set():
        due = int((time.monotonic() - start) * rate) + 1
        while sent < due:
            i = sent % len(pubs)
            pub = pubs[i]
            head = f"{MARK}{time.monotonic_ns()}|{seqs[i]}|"
            content = head + "x" * max(0, size - len(head))
            if pub.proto == "gateway":
                data = orjson.dumps({"type": "message", "payload": {"roomId": pub.room, "content": content}})
            elif pub.proto == "centrifugo":
                frame = {"publish": {"channel": f"{CENTRIFUGO_NS}:{pub.room}", "data": {"content": content}}}
                data = orjson.dumps({"id": 3, **frame})
            else:
                data = b"42" + orjson.dumps(["message", {"roomId": pub.room, "content": content}])
            pub.send(data)
            seqs[i] += 1
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
    emit({"event": "stopped", "last": {p.room: seqs[i] - 1 for i, p in enumerate(pubs)}, "sent": sent})


def report(members: list[Member], out: Out, path: str) -> None:
    data = {
        "members": len(members),
        "missing": sum(m.missing for m in members),
        "dups": sum(m.dups for m in members),
        "not_recovered": sum(m.not_recovered for m in members),
        "failures": sum(m.failures for m in members),
        "refused": sum(m.refused for m in members),
        "back_ns": [m.back_ns for m in members],
        "last_seq": {m.user: [m.room, m.last_seq] for m in members},
        "live_at": out.live_at.tolist(),
        "live_us": out.live_us.tolist(),
    }
    with open(path, "wb") as fh:
        fh.write(orjson.dumps(data))


async def run(args: argparse.Namespace) -> None:
    out = Out()
    publisher = args.role == "pub"
    count = args.rooms if publisher else args.conns
    members = []
    for i in range(count):
        idx = args.offset + i
        user = f"{args.role}{idx}"
        room = f"r{idx % args.rooms}"
        members.append(Member(out, args.target, room, user, mint(args.secret, user, ttl=3600), publisher))
    await open_all(members, args.url, args.concurrency)
    emit({"event": "ready", "conns": len(members)})
    stop = asyncio.Event()
    sender: asyncio.Task[None] | None = None
    while True:
        cmd, _, arg = (await read_command()).partition(" ")
        if cmd == "go":
            out.timing = True
            if publisher:
                sender = asyncio.create_task(publish(members, args.rate, args.size, stop))
        elif cmd == "drop":
            emit(await storm(members, args.url, args.jitter))
        elif cmd == "stop":
            stop.set()
            if sender is not None:
                await sender
        elif cmd == "report":
            report(members, out, arg)
            emit({"event": "reported"})
        else:
            break
    for m in members:
        if m.transport is not None:
            m.transport.disconnect()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.storm_client")
    p.add_argument("--target", choices=["gateway", "centrifugo", "socketio"], required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--role", choices=["sub", "pub"], required=True)
    p.add_argument("--conns", type=int, default=0)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--rooms", type=int, default=100)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--jitter", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args(argv)
    raise_nofile()
    try:
        asyncio.run(run(args))
    except ConnectionError as exc:
        emit({"event": "error", "error": str(exc)[:500]})
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
