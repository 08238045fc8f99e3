"""Join storm: thousands of joins per second while one member's ping latency is measured.

    .cache/bench-venv/bin/python -m bench.join_storm [--rate 2000] [--conns 200] [--rooms 100] [--seconds 10]

The gateway runs as bench.fanout runs it (server on CPU 0 when there are 2+ CPUs, this process on
CPU 1). `--conns` connections join and leave rooms at random among `--rooms`, paced to `--rate`
joins per second in all (each connection is in at most one room at a time, and reads everything it
is sent); meanwhile a member of a room of its own sends an application `ping` every 20 ms and times
the `pong`. Reported: joins/s achieved, the server's CPU per join, the member's ping p50/p99/max.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from bench.common import ROOT, log, proc_sample
from bench.targets import start
from services.auth import mint

PING_EVERY = 0.02


async def _reader(ws: ClientConnection, on_frame: Any = None) -> None:
    async for raw in ws:
        if on_frame is not None:
            on_frame(orjson.loads(raw))


async def storm(url: str, secret: str, opts: argparse.Namespace) -> dict[str, Any]:
    conns = [
        await connect(f"{url}?token={mint(secret, f'storm-{i}', 3600)}", max_size=None, compression=None)
        for i in range(opts.conns)
    ]
    readers = [asyncio.ensure_future(_reader(ws)) for ws in conns]
    member = await connect(f"{url}?token={mint(secret, 'member', 3600)}", compression=None)
    pongs: dict[str, float] = {}
    rtts: list[float] = []

    def on_member_frame(frame: dict[str, Any]) -> None:
        sent = pongs.pop(frame.get("requestId") or "", None)
        if frame.get("type") == "pong" and sent is not None:
            rtts.append((time.perf_counter() - sent) * 1000)

    member_reader = asyncio.ensure_future(_reader(member, on_member_frame))
    await member.send(orjson.dumps({"type": "join", "payload": {"roomId": "quiet"}}).decode())
    stop = asyncio.Event()

    async def pinger() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            pongs[str(n)] = time.perf_counter()
            await member.send(orjson.dumps({"type": "ping", "payload": {}, "requestId": str(n)}).decode())
            await asyncio.sleep(PING_EVERY)

    joins = 0
    rooms: list[str | None] = [None] * len(conns)

    async def churn() -> None:
        nonlocal joins
        interval = 1.0 / opts.rate
        next_at = time.perf_counter()
        rng = random.Random(1)
        while not stop.is_set():
            i = rng.randrange(len(conns))
            ws = conns[i]
            if rooms[i] is not None:
                await ws.send(orjson.dumps({"type": "leave", "payload": {"roomId": rooms[i]}}).decode())
            room = f"storm-{rng.randrange(opts.rooms)}"
            rooms[i] = room
            await ws.send(orjson.dumps({"type": "join", "payload": {"roomId": room}}).decode())
            joins += 1
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)

    tasks = [asyncio.ensure_future(pinger()), asyncio.ensure_future(churn())]
    started = time.perf_counter()
    await asyncio.sleep(opts.seconds)
    stop.set()
    await asyncio.gather(*tasks)
    span = time.perf_counter() - started
    for ws in [*conns, member]:
        await ws.close()
    for task in [*readers, member_reader]:
        task.cancel()
    rtts.sort()
    return {
        "joins": joins,
        "joins_per_s": joins / span,
        "pings": len(rtts),
        "ping_p50_ms": rtts[len(rtts) // 2] if rtts else None,
        "ping_p99_ms": rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] if rtts else None,
        "ping_max_ms": rtts[-1] if rtts else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.join_storm")
    p.add_argument("--rate", type=float, default=2000.0, help="joins per second offered")
    p.add_argument("--conns", type=int, default=200)
    p.add_argument("--rooms", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--json", default="")
    opts = p.parse_args(argv)
    two = (os.cpu_count() or 1) >= 2
    server = start("gateway", {0} if two else None)  # rate limits are lifted for load clients
    if two:
        os.sched_setaffinity(0, {1})
    try:
        before = proc_sample(server.pid)
        result = asyncio.run(storm(f"ws://127.0.0.1:{server.port}/", server.secret, opts))
        after = proc_sample(server.pid)
    finally:
        server.stop()
    result["server_cpu_s"] = round(after.cpu - before.cpu, 2)
    result["server_cpu_us_per_join"] = round((after.cpu - before.cpu) / max(result["joins"], 1) * 1e6, 1)
    result["offered_rate"] = opts.rate
    result["command"] = "python -m bench.join_storm " + " ".join(sys.argv[1:] if argv is None else argv)
    log(orjson.dumps(result).decode())
    print("| offered joins/s | joins/s | server CPU µs/join | ping p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {result['offered_rate']:,.0f} | {result['joins_per_s']:,.0f} | {result['server_cpu_us_per_join']:,.0f} | "
        f"{result['ping_p50_ms']:.2f} | {result['ping_p99_ms']:.2f} | {result['ping_max_ms']:.2f} |"
    )
    if opts.json:
        (ROOT / opts.json).write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
