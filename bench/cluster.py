"""Cross-instance fan-out on one Redis and on a Redis Cluster of 3 primaries (+3 replicas), same run.

    .cache/bench-venv/bin/python -m bench.cluster [--rooms 30] [--members 10] [--rate 300] [--seconds 10]

For each backend: a throwaway Redis (scripts/redis.sh) or cluster (scripts/redis-cluster.sh), two
gateway processes on it, `--rooms` rooms of `--members` members each, half the members of every room
on each gateway, and one publisher per room on the first gateway sending `--rate` messages per
second in all. Every message therefore crosses Redis to the other instance. Reported per backend:
deliveries/s, latency p50/p99 (publish to receipt), the gateways' CPU per delivery, redis-server's
CPU per delivery (all nodes), and for the cluster where the work landed: the rooms' sharded channels
per primary (PUBSUB SHARDNUMSUB) and the scripts and publishes each primary ran (INFO commandstats).
Nothing is pinned: two gateways, Redis and the load share the machine's cores, as they would.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from bench.common import CACHE, ROOT, log, proc_sample
from bench.targets import Server, start
from services.auth import mint
from services.bus.wire import bus_key

PREFIX = "bench:"


def cli(node: tuple[str, int], *args: str) -> str:
    """redis-cli (Debian's, as the servers): the bench venv has no Redis client of its own."""
    out = subprocess.run(["redis-cli", "-h", node[0], "-p", str(node[1]), *args], capture_output=True, text=True)
    return out.stdout


def _stopper(script: str, env: dict[str, str]) -> Callable[[], None]:
    def stop() -> None:
        subprocess.run([str(ROOT / script), "stop"], env=env, capture_output=True)

    return stop


def _pids(folder: Path) -> list[int]:
    return [int(p.read_text()) for p in folder.rglob("redis.pid")]


def redis_backend(folder: Path) -> tuple[list[str], list[int], list[tuple[str, int]], Callable[[], None]]:
    """One redis-server: gateway args, its pid, its address, and how to stop it."""
    env = {**os.environ, "REDIS_DIR": str(folder)}
    subprocess.run([str(ROOT / "scripts/redis.sh"), "start"], env=env, check=True, capture_output=True)
    port = int((folder / "port").read_text())
    args = ["--redis-host=127.0.0.1", f"--redis-port={port}"]
    return args, _pids(folder), [("127.0.0.1", port)], _stopper("scripts/redis.sh", env)


def cluster_backend(folder: Path) -> tuple[list[str], list[int], list[tuple[str, int]], Callable[[], None]]:
    """3 primaries and 3 replicas: gateway args, every node's pid, the primaries, how to stop it."""
    env = {**os.environ, "CLUSTER_DIR": str(folder)}
    subprocess.run([str(ROOT / "scripts/redis-cluster.sh"), "start"], env=env, check=True, capture_output=True)
    seeds = (folder / "nodes").read_text().strip()
    primaries = []
    for seed in seeds.split(","):
        host, _, port = seed.rpartition(":")
        if "role:master" in cli((host, int(port)), "INFO", "replication"):
            primaries.append((host, int(port)))
    return [f"--redis-cluster-nodes={seeds}"], _pids(folder), primaries, _stopper("scripts/redis-cluster.sh", env)


def commandstats(node: tuple[str, int]) -> dict[str, int]:
    """`cmdstat_evalsha:calls=12,usec=...` lines -> {"evalsha": 12, ...}."""
    out = {}
    for line in cli(node, "INFO", "commandstats").splitlines():
        name, _, fields = line.partition(":")
        if name.startswith("cmdstat_"):
            out[name.removeprefix("cmdstat_")] = int(fields.split(",")[0].removeprefix("calls="))
    return out


async def _reader(ws: ClientConnection, latencies: list[float]) -> None:
    async for raw in ws:
        frame = orjson.loads(raw)
        if frame.get("type") == "message":
            latencies.append(time.time() * 1000 - float(frame["payload"]["content"].split()[0]))


async def drive(a: Server, b: Server, opts: argparse.Namespace) -> dict[str, Any]:
    latencies: list[float] = []
    members: list[ClientConnection] = []
    for r in range(opts.rooms):
        for m in range(opts.members):
            server = a if m % 2 else b
            ws = await connect(
                f"ws://127.0.0.1:{server.port}/?token={mint(server.secret, f'u{r}-{m}', 3600)}", compression=None
            )
            await ws.send(orjson.dumps({"type": "join", "payload": {"roomId": f"room-{r}"}}).decode())
            members.append(ws)
    publishers = []
    for r in range(opts.rooms):
        ws = await connect(f"ws://127.0.0.1:{a.port}/?token={mint(a.secret, f'pub-{r}', 3600)}", compression=None)
        await ws.send(orjson.dumps({"type": "join", "payload": {"roomId": f"room-{r}"}}).decode())
        publishers.append(ws)
    await asyncio.sleep(2.0)  # joins answered, presence settled
    readers = [asyncio.ensure_future(_reader(ws, latencies)) for ws in members]
    drains = [asyncio.ensure_future(_reader(ws, [])) for ws in publishers]
    gateways = [proc_sample(s.pid).cpu for s in (a, b)]
    redis_cpu = sum(proc_sample(p).cpu for p in opts.redis_pids)
    interval, sent, started = 1.0 / opts.rate, 0, time.perf_counter()
    while time.perf_counter() - started < opts.seconds:
        ws = publishers[sent % len(publishers)]
        room = f"room-{sent % len(publishers)}"
        await ws.send(
            orjson.dumps(
                {"type": "message", "payload": {"roomId": room, "content": f"{time.time() * 1000} x"}}
            ).decode()
        )
        sent += 1
        delay = started + sent * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    expected = sent * opts.members
    deadline = time.perf_counter() + 10
    while len(latencies) < expected and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    span = time.perf_counter() - started
    gw_cpu = sum(proc_sample(s.pid).cpu for s in (a, b)) - sum(gateways)
    rd_cpu = sum(proc_sample(p).cpu for p in opts.redis_pids) - redis_cpu
    for task in [*readers, *drains]:
        task.cancel()
    for ws in [*members, *publishers]:
        await ws.close()
    latencies.sort()
    got = len(latencies)
    return {
        "messages": sent,
        "deliveries": got,
        "lost": expected - got,
        "deliveries_per_s": round(got / span),
        "p50_ms": round(latencies[got // 2], 2) if got else None,
        "p99_ms": round(latencies[min(got - 1, int(got * 0.99))], 2) if got else None,
        "gateways_cpu_us_per_delivery": round(gw_cpu / max(got, 1) * 1e6, 2),
        "redis_cpu_us_per_delivery": round(rd_cpu / max(got, 1) * 1e6, 2),
        "redis_cpu_us_per_message": round(rd_cpu / max(sent, 1) * 1e6, 2),
    }


def run_backend(name: str, opts: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir=CACHE))
    make = cluster_backend if name == "cluster" else redis_backend
    args, pids, primaries, stop = make(folder)
    servers: list[Server] = []
    try:
        servers = [start("gateway", None, [*args, f"--redis-prefix={PREFIX}"]) for _ in range(2)]
        before = {node: commandstats(node) for node in primaries}
        opts.redis_pids = pids
        result = asyncio.run(drive(servers[0], servers[1], opts))
        result["backend"] = name
        result["primaries"] = []
        for node in primaries:
            after = commandstats(node)
            keys = [bus_key(PREFIX, f"room:room-{r}", sharded=name == "cluster") for r in range(opts.rooms)]
            numsub = cli(node, "PUBSUB", "SHARDNUMSUB" if name == "cluster" else "NUMSUB", *keys).split()
            counts = dict(zip(numsub[0::2], numsub[1::2], strict=True))
            result["primaries"].append(
                {
                    "node": f"{node[0]}:{node[1]}",
                    "rooms": sum(1 for n in counts.values() if int(n) > 0),
                    **{c: after.get(c, 0) - before[node].get(c, 0) for c in ("evalsha", "spublish", "publish")},
                }
            )
        return result
    finally:
        for server in servers:
            server.stop()
        stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster")
    p.add_argument("--rooms", type=int, default=30)
    p.add_argument("--members", type=int, default=10, help="members per room, half on each gateway")
    p.add_argument("--rate", type=float, default=300.0, help="messages per second in all")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--json", default="")
    opts = p.parse_args(argv)
    CACHE.mkdir(exist_ok=True)
    results = [run_backend(name, opts) for name in ("redis", "cluster")]
    command = "python -m bench.cluster " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"`{command}`\n")
    print("| backend | deliveries/s | lost | p50 ms | p99 ms | gateways µs/delivery | redis-server µs/delivery |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['backend']} | {r['deliveries_per_s']:,} | {r['lost']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['gateways_cpu_us_per_delivery']} | {r['redis_cpu_us_per_delivery']} |"
        )
    print("\n| backend | primary | rooms subscribed there | EVALSHA | SPUBLISH | PUBLISH |\n|---|---|---|---|---|---|")
    for r in results:
        for node in r["primaries"]:
            cells = [r["backend"], node["node"], node["rooms"], node["evalsha"], node["spublish"], node["publish"]]
            print("| " + " | ".join(map(str, cells)) + " |")
    log(orjson.dumps(results).decode())
    if opts.json:
        (ROOT / opts.json).write_text(
            orjson.dumps({"command": command, "results": results}, option=orjson.OPT_INDENT_2).decode() + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
