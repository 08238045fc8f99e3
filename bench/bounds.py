"""What one ordinary client can make a gateway hold or send: each attack of the byte-bounds issue,
run from outside against a gateway process on default settings, bounded in count and time.

    python -m bench.bounds [--only history,replay,...] [--seconds 10] [--json FILE]

For each attack a fresh gateway (this tree's server.py) starts on 127.0.0.1; its RSS is read
before (baseline), at the peak (VmHWM) and after the attack's sockets are closed and the gateway
is quiet again; where the attack targets other users, a victim's ping round trips (p50/p99) are
measured meanwhile, and where it draws output, the bytes the attacker received.

    history    one user, 20 connections in 100 rooms each, ~48 KB messages at 19/s on each connection
    replay     `join {since: 0}` + `leave` in a loop on a room filled with ~48 KB entries
    refresh    ROOM_ACCESS=token, a 740-pattern claim, 100 rooms, the same token re-sent at 19/s
    bodies     400 connections declaring a 1 MiB body on any path, then stalling
    keepalive  480 kept-alive connections asking /healthz every 5 s; can a newcomer still connect?
    rooms      join, message and leave new rooms as fast as the rate limit allows

Output: one Markdown row per attack on stdout (and JSON with --json). Run it from another tree
(a worktree of an older commit) to compare; it speaks only the public protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from bench.common import GATEWAY_PY, ROOT, free_port, proc_sample, wait_port, wait_quiet

SECRET = "bench-bounds-secret-0123456789abcdef0123"
MIB = 1024 * 1024
# ~48 KB once encoded: 4,000 control characters (6 bytes each as JSON) and ten 2 KB attachments.
CONTENT = "\u0001" * 4000
ATTACHMENTS = [{"url": "https://x/" + "a" * 2030, "name": "n" * 250} for _ in range(10)]
ROOMS_EACH = 100  # the history flood's rooms per connection: 2,000 rooms of up to HISTORY_ROOM_BYTES each


def mint(sub: str, **claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 3600, **claims}, SECRET, algorithm="HS256")


class Gateway:
    def __init__(self, *args: str) -> None:
        self.port = free_port()
        cmd = [str(GATEWAY_PY), "server.py", "--port", str(self.port), "--jwt-secret", SECRET, *args]
        env = {**os.environ, "LOG_LEVEL": "warning"}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)
        wait_quiet(self.proc.pid)
        self.baseline = proc_sample(self.proc.pid).rss

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def figures(self) -> dict[str, float]:
        wait_quiet(self.proc.pid, timeout=15)
        sample = proc_sample(self.proc.pid)
        return {
            "baseline_mib": self.baseline / MIB,
            "peak_mib": sample.hwm / MIB,
            "after_mib": sample.rss / MIB,
        }


async def connect(
    gw: Gateway, sub: str, tok: str | None = None, source: str = "127.0.0.1"
) -> WebSocketClientConnection:
    """A socket of `sub`'s, from the loopback address `source` (another client address than the attacker's)."""
    request = HTTPRequest(f"{gw.url}?token={tok or mint(sub)}", network_interface=source)
    return await websocket_connect(request, max_message_size=16 * MIB)


def frame(frame_type: str, payload: dict[str, Any], request_id: str | None = None) -> str:
    out: dict[str, Any] = {"type": frame_type, "payload": payload}
    if request_id is not None:
        out["requestId"] = request_id
    return json.dumps(out)


async def reply(
    conn: WebSocketClientConnection, request_id: str, timeout: float = 30.0, counter: list[int] | None = None
) -> dict[str, Any]:
    """The reply to `request_id`; the frames before it are read and dropped (their bytes counted)."""
    deadline = time.monotonic() + timeout
    while True:
        raw = await asyncio.wait_for(conn.read_message(), max(0.01, deadline - time.monotonic()))
        if raw is None:
            raise RuntimeError("closed")
        if counter is not None:
            counter[0] += len(raw)
        got = json.loads(raw)
        if got.get("requestId") == request_id:
            return got  # type: ignore[no-any-return]


class Victim:
    """Pings once every 50 ms and records the round trips."""

    def __init__(self) -> None:
        self.rtts: list[float] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self, gw: Gateway) -> None:
        conn = await connect(gw, "victim", source="127.0.0.2")

        async def run() -> None:
            n = 0
            while True:
                n += 1
                start = time.monotonic()
                conn.write_message(frame("ping", {}, f"v{n}"))
                await reply(conn, f"v{n}")
                self.rtts.append((time.monotonic() - start) * 1000)
                await asyncio.sleep(0.05)

        self.task = asyncio.ensure_future(run())

    def stop(self) -> dict[str, float]:
        if self.task is not None:
            self.task.cancel()
        rtts = sorted(self.rtts) or [float("nan")]
        return {"victim_p50_ms": statistics.median(rtts), "victim_p99_ms": rtts[int(0.99 * (len(rtts) - 1))]}


async def drain(conn: WebSocketClientConnection, counter: list[int]) -> None:
    while (raw := await conn.read_message()) is not None:
        counter[0] += len(raw)


async def paced(seconds: float, per_second: float, step: Callable[[int], Awaitable[None]]) -> None:
    """`step(n)` at `per_second` for `seconds` (bounded in count and time)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
        await step(n)
        await asyncio.sleep(1 / per_second)


# -- the attacks -------------------------------------------------------------------------------


async def history_flood(gw: Gateway, seconds: float) -> dict[str, Any]:
    conns = [await connect(gw, "flooder") for _ in range(20)]
    received = [0]
    for r in range(ROOMS_EACH):  # within the rate limit: 15 joins/s on each connection
        for i, conn in enumerate(conns):
            conn.write_message(frame("join", {"roomId": f"flood-{i}-{r}"}))
        await asyncio.sleep(1 / 15)
    readers = [asyncio.ensure_future(drain(conn, received)) for conn in conns]

    async def one(conn: WebSocketClientConnection, i: int) -> None:
        async def step(n: int) -> None:
            payload = {"roomId": f"flood-{i}-{n % ROOMS_EACH}", "content": CONTENT, "attachments": ATTACHMENTS}
            conn.write_message(frame("message", payload))

        await paced(seconds, 19.0, step)

    await asyncio.gather(*(one(conn, i) for i, conn in enumerate(conns)))
    for conn in conns:
        conn.close()
    await asyncio.gather(*readers, return_exceptions=True)
    return {"sent_mib": 20 * 19 * seconds * 48_000 / MIB}


async def replay_loop(gw: Gateway, seconds: float) -> dict[str, Any]:
    filler = await connect(gw, "filler")
    filler.write_message(frame("join", {"roomId": "big"}, "j"))
    await reply(filler, "j")
    for n in range(100):  # ~4.8 MB offered; what the room keeps is the gateway's bound
        filler.write_message(
            frame("message", {"roomId": "big", "content": CONTENT, "attachments": ATTACHMENTS}, f"m{n}")
        )
        await reply(filler, f"m{n}")
        await asyncio.sleep(0.06)
    victim = Victim()
    await victim.start(gw)
    attacker = await connect(gw, "attacker")
    received = [0]
    attacker.write_message(frame("join", {"roomId": "big"}, "first"))
    position = (await reply(attacker, "first"))["payload"]
    attacker.write_message(frame("leave", {"roomId": "big"}, "first-out"))
    await reply(attacker, "first-out")
    # Everything, if the gateway replays it; else the 20 latest entries (~1 MB, within REPLAY_BYTES).
    since = {"offset": 0, "epoch": position["epoch"]}
    attacker.write_message(frame("join", {"roomId": "big", "since": since}, "probe"))
    if not (await reply(attacker, "probe", counter=received))["payload"].get("recovered"):
        since["offset"] = position["offset"] - 20
    attacker.write_message(frame("leave", {"roomId": "big"}, "probe-out"))
    await reply(attacker, "probe-out", counter=received)
    replays = [0]

    async def step(n: int) -> None:
        attacker.write_message(frame("join", {"roomId": "big", "since": since}, f"a{n}"))
        joined = await reply(attacker, f"a{n}", counter=received)
        if joined["type"] == "error":  # rate_limited: a careful attacker backs off, not to be closed 1008
            await asyncio.sleep(1.0)
            return
        replays[0] += joined["payload"].get("recovered") is True
        attacker.write_message(frame("leave", {"roomId": "big"}, f"l{n}"))
        if (await reply(attacker, f"l{n}", counter=received))["type"] == "error":  # the replay came before it
            await asyncio.sleep(1.0)

    await paced(seconds, 10.0, step)  # two frames a step: RATE_LIMIT's 20/s
    out = victim.stop()
    attacker.close()
    filler.close()
    return {**out, "replays": replays[0], "attacker_in_mib": received[0] / MIB}


async def refresh_loop(gw: Gateway, seconds: float) -> dict[str, Any]:
    claim = [f"t{n}*" for n in range(640)] + [f"r{n}" for n in range(100)]
    tok = mint("refresher", rooms=claim)
    conns = [await connect(gw, "refresher", tok) for _ in range(5)]
    for r in range(100):  # within the rate limit: 5 connections at 15 joins/s each
        for conn in conns:
            conn.write_message(frame("join", {"roomId": f"r{r}"}, f"j{r}"))
        await asyncio.sleep(1 / 15)
    for conn in conns:
        await reply(conn, "j99")  # every connection is in its 100 rooms
    victim = Victim()
    await victim.start(gw)

    async def one(i: int, conn: WebSocketClientConnection) -> None:
        async def step(n: int) -> None:
            conn.write_message(frame("refresh", {"token": tok}, f"r{i}-{n}"))
            if (await reply(conn, f"r{i}-{n}"))["type"] == "error":  # rate_limited: back off, stay open
                await asyncio.sleep(1.0)

        await paced(seconds, 19.0, step)

    await asyncio.gather(*(one(i, conn) for i, conn in enumerate(conns)))
    out = victim.stop()
    for conn in conns:
        conn.close()
    return out


async def stalled_bodies(gw: Gateway, seconds: float) -> dict[str, Any]:
    socks = []
    answered = 0
    for _ in range(400):
        try:
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=2)
        except OSError:
            continue
        socks.append(s)
        try:  # all of the body but its last bytes, then nothing
            s.sendall(b"POST /anything HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n" + b"x" * 1048000)
        except OSError:
            pass  # refused before the body: the answer is waiting
    await asyncio.sleep(seconds)
    peak = proc_sample(gw.proc.pid).rss / MIB
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(16)[:12] in (b"HTTP/1.1 413", b"HTTP/1.1 429"):
                answered += 1
        except OSError:
            pass
        s.close()
    return {"rss_while_mib": peak, "refused_413_429": answered, "opened": len(socks)}


async def keepalive_hold(gw: Gateway, seconds: float) -> dict[str, Any]:
    held: list[socket.socket] = []
    refused = 0
    for _ in range(480):
        try:
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=2)
            held.append(s)
        except OSError:
            refused += 1

    def ask_all() -> int:
        alive = 0
        for s in held:
            try:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                if s.recv(4096).startswith(b"HTTP/1.1 200"):
                    alive += 1
            except OSError:
                pass
        return alive

    alive = 0
    end = time.monotonic() + seconds
    newcomer_ms: list[float] = []
    while time.monotonic() < end:
        alive = await asyncio.to_thread(ask_all)
        start = time.monotonic()
        try:
            conn = await asyncio.wait_for(connect(gw, "newcomer", source="127.0.0.2"), 5)
            conn.close()
            newcomer_ms.append((time.monotonic() - start) * 1000)
        except Exception:
            newcomer_ms.append(float("inf"))
        await asyncio.sleep(5)
    for s in held:
        s.close()
    return {"kept_alive": alive, "newcomer_ms_worst": max(newcomer_ms)}


async def room_churn(gw: Gateway, seconds: float) -> dict[str, Any]:
    conns = [await connect(gw, "churner") for _ in range(20)]
    rooms = [0]

    async def one(i: int, conn: WebSocketClientConnection) -> None:
        async def step(n: int) -> None:
            room = f"churn-{i}-{n}"
            conn.write_message(frame("join", {"roomId": room}, f"j{n}"))
            conn.write_message(frame("message", {"roomId": room, "content": "hi"}, f"m{n}"))
            conn.write_message(frame("leave", {"roomId": room}, f"l{n}"))
            await reply(conn, f"l{n}")
            rooms[0] += 1

        await paced(seconds, 6.0, step)

    await asyncio.gather(*(one(i, conn) for i, conn in enumerate(conns)))
    for conn in conns:
        conn.close()
    return {"rooms": rooms[0]}


ATTACKS: dict[str, tuple[Callable[[Gateway, float], Awaitable[dict[str, Any]]], tuple[str, ...]]] = {
    "history": (history_flood, ()),
    "replay": (replay_loop, ()),
    "refresh": (refresh_loop, ("--room-access", "token")),
    "bodies": (stalled_bodies, ()),
    "keepalive": (keepalive_hold, ()),
    "rooms": (room_churn, ()),
}


async def run(only: list[str], seconds: float) -> list[dict[str, Any]]:
    rows = []
    for name in only:
        attack, args = ATTACKS[name]
        gw = Gateway(*args)
        try:
            result = await attack(gw, seconds)
            rows.append({"attack": name, **result, **gw.figures()})
        finally:
            gw.stop()
        print(
            f"| {name} | "
            + " | ".join(
                f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items() if k != "attack"
            )
            + " |",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bounds", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(ATTACKS), help=f"comma-separated, from {', '.join(ATTACKS)}")
    p.add_argument("--seconds", type=float, default=10.0, help="how long each attack lasts")
    p.add_argument("--json", default=None, help="write the rows to this file")
    opts = p.parse_args(argv)
    rows = asyncio.run(run([n for n in opts.only.split(",") if n], opts.seconds))
    if opts.json:
        with open(opts.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
