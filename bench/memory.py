"""Where an idle connection's memory goes: a gateway in this process under tracemalloc, N idle
authenticated connections from a load client process, and the allocations that grew, by source
line, per connection.

    python -m bench.memory --conns 5000 [--join] [--top 25]

Python objects only (tracemalloc): the kernel's socket buffers are not in it, and RSS per connection
(bench.fanout's KiB/conn) also counts the allocator's slack. Numbers are bytes per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import subprocess
import sys
import tracemalloc

from tornado.netutil import bind_sockets

from bench.common import ROOT, ensure_bench_venv
from server import start_listening
from services.gateway import Gateway
from services.settings import Settings

SECRET = "bench-memory-secret-0123456789abcdef"


async def measure(conns: int, join: bool, top: int, frames: int) -> None:
    settings = Settings(
        jwt_secret=SECRET, max_connections=conns + 100, max_connections_per_ip=conns + 100, rate_limit=1000.0
    )
    gateway = Gateway(settings)
    await gateway.start()
    sockets = bind_sockets(0, "127.0.0.1")
    servers = start_listening(gateway, sockets)
    port = sockets[0].getsockname()[1]
    gc.collect()
    before = tracemalloc.take_snapshot()
    cmd = [str(ensure_bench_venv()), "-m", "bench.client", "--target", "gateway", "--url", f"ws://127.0.0.1:{port}/"]
    cmd += ["--secret", SECRET, "--role", "sub", "--conns", str(conns), "--join" if join else "--no-join"]
    client = await asyncio.create_subprocess_exec(
        *cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={"PYTHONPATH": str(ROOT)}
    )
    assert client.stdout is not None and client.stdin is not None
    while True:
        line = await client.stdout.readline()
        if not line:
            raise SystemExit("the load client ended early")
        event = json.loads(line)
        if event.get("event") == "ready":
            break
        if event.get("event") == "error":
            raise SystemExit(f"load client: {event.get('error')}")
    await asyncio.sleep(1.0)  # let the last handshakes settle
    gc.collect()
    after = tracemalloc.take_snapshot()
    stats = after.compare_to(before, "traceback" if frames > 1 else "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"{len(gateway.sessions)} sessions; Python allocations grew {total / conns:,.0f} bytes per connection")
    print("| bytes/conn | objects/conn | where |")
    print("|---|---|---|")
    for stat in stats[:top]:
        where = " < ".join(f"{f.filename.replace(str(ROOT) + '/', '')}:{f.lineno}" for f in stat.traceback)
        print(f"| {stat.size_diff / conns:,.0f} | {stat.count_diff / conns:.2f} | {where} |")
    client.stdin.write(b"quit\n")
    await client.stdin.drain()
    await client.wait()
    for server in servers:
        server.stop()
    await gateway.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory")
    p.add_argument("--conns", type=int, default=5000)
    p.add_argument("--join", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--frames", type=int, default=1, help="stack depth kept per allocation (group by the whole stack)")
    args = p.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tracemalloc.start(args.frames)
    asyncio.run(measure(args.conns, args.join, args.top, args.frames))
    return 0


if __name__ == "__main__":
    sys.exit(main())
