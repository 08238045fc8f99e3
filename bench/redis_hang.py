"""What a hung Redis costs the clients of one gateway: how long a message waits for its answer, and
whether pings and typing wait at all.

    python -m bench.redis_hang --fault pause --seconds 10
    python -m bench.redis_hang --fault partition --seconds 10

One gateway process (server.py) on a redis-server of its own, reached through a proxy (bench/chaos.py).
Two clients in one room; once they are in, Redis hangs for `--seconds` (`pause`: SIGSTOP of
redis-server; `partition`: the proxy carries nothing, sockets open). Meanwhile one client sends a
message with a dedupeKey every 100 ms, a ping every 100 ms and `typing` every 500 ms; the other
watches. Reported: the time to each message's answer (`ack` or `error unavailable`) by when it was
sent (before and after the first refusal opened the breaker), the slowest pong (the same split), the
slowest typing seen by the other client, and when messages are acked again after the hang (this
client does not send the refused ones again: its new ones wait out OWED_FOR, services/hub/ordering.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import time
from typing import Any

import jwt
from tornado.websocket import WebSocketClientConnection, websocket_connect

from bench.chaos import SECRET, Gateway, Proxy, RedisServer


async def _connect(port: int, user: str) -> WebSocketClientConnection:
    token = jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
    return await websocket_connect(f"ws://127.0.0.1:{port}/ws?token={token}")


def _send(conn: WebSocketClientConnection, kind: str, payload: dict[str, Any], request_id: str | None = None) -> None:
    frame: dict[str, Any] = {"type": kind, "payload": payload}
    if request_id is not None:
        frame["requestId"] = request_id
    conn.write_message(json.dumps(frame))


async def _join(conn: WebSocketClientConnection, room: str) -> None:
    _send(conn, "join", {"roomId": room}, "join")
    while True:
        raw = await conn.read_message()
        assert isinstance(raw, str)
        if json.loads(raw).get("type") == "presence_state":
            return


async def measure(fault: str, seconds: float) -> dict[str, Any]:
    redis = RedisServer()
    await redis.start()
    link = Proxy(redis.port)
    await link.start()
    gateway = Gateway(0, link)
    await gateway.front.start()
    await gateway.start()
    try:
        sender, watcher = await _connect(gateway.port, "sender"), await _connect(gateway.port, "watcher")
        await _join(sender, "hang")
        await _join(watcher, "hang")
        sent: dict[str, float] = {}
        answers: list[tuple[float, float, str]] = []  # (sent at, waited, type or error code)
        pongs: list[tuple[float, float]] = []  # (sent at, waited)
        typing_seen: list[float] = []
        typing_sent: list[float] = []

        async def read_sender() -> None:
            while (raw := await sender.read_message()) is not None:
                frame = json.loads(raw)
                rid = frame.get("requestId", "")
                if rid in sent:
                    began = sent.pop(rid)
                    if frame["type"] == "pong":
                        pongs.append((began - start, time.monotonic() - began))
                    elif frame["type"] in ("ack", "error"):
                        kind = frame["type"] if frame["type"] == "ack" else frame["payload"]["code"]
                        answers.append((began - start, time.monotonic() - began, kind))

        async def read_watcher() -> None:
            while (raw := await watcher.read_message()) is not None:
                frame = json.loads(raw)
                if frame["type"] == "presence" and frame["payload"]["status"] == "typing" and typing_sent:
                    typing_seen.append(time.monotonic() - typing_sent[-1])

        readers = [asyncio.ensure_future(read_sender()), asyncio.ensure_future(read_watcher())]
        start = time.monotonic()
        if fault == "pause":
            redis.signal(signal.SIGSTOP)
        else:
            link.hold()
        n = 0
        hung = True
        while time.monotonic() - start < seconds + 6.0:
            if hung and time.monotonic() - start >= seconds:
                hung = False
                if fault == "pause":
                    redis.signal(signal.SIGCONT)
                else:
                    link.release()
            n += 1
            message = {"roomId": "hang", "content": f"m{n}", "dedupeKey": f"k{n}"}
            for kind, payload in (("message", message), ("ping", {})):
                rid = f"{kind}-{n}"
                sent[rid] = time.monotonic()
                _send(sender, kind, payload, rid)
            if n % 5 == 0:
                typing_sent.append(time.monotonic())
                _send(sender, "presence", {"roomId": "hang", "status": "typing"})
            await asyncio.sleep(0.1)
        await asyncio.sleep(3.0)  # the last answers
        for reader in readers:
            reader.cancel()
        answers.sort()
        first = answers[0]
        opened = first[0] + first[1]  # the first answer came: the breaker is open from here on
        during = [a for a in answers if opened <= a[0] < seconds]
        after = [a for a in answers if a[0] >= seconds and a[2] == "ack"]
        return {
            "fault": fault,
            "seconds": seconds,
            "first_answer_s": round(first[1], 3),
            "first_answer": first[2],
            "sent_before_it_slowest_s": round(max(a[1] for a in answers if a[0] < opened), 3),
            "then_answers_median_ms": round(statistics.median(a[1] for a in during) * 1000, 2),
            "then_answers_max_ms": round(max(a[1] for a in during) * 1000, 2),
            "then_answers": {k: sum(1 for a in during if a[2] == k) for k in {a[2] for a in during}},
            "unanswered": len([r for r in sent if r.startswith("message")]),
            "slowest_pong_ms": round(max(p[1] for p in pongs) * 1000, 2),
            "then_slowest_pong_ms": round(max(p[1] for p in pongs if p[0] >= opened) * 1000, 2),
            "slowest_typing_ms": round(max(typing_seen) * 1000, 2) if typing_seen else None,
            "first_ack_after_the_hang_s": round(after[0][0] + after[0][1] - seconds, 3) if after else None,
            "acked_after": len(after),
        }
    finally:
        await gateway.stop(signal.SIGKILL)
        await gateway.front.close()
        await link.close()
        await redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_hang", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fault", choices=("pause", "partition"), default="pause")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.fault, args.seconds))))


if __name__ == "__main__":
    main()
