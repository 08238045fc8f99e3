"""Chaos: one conversation for everyone through gateway and Redis faults, checked.

    python -m bench.chaos --seed 1 --messages 10000                      # the long run (BENCHMARKS.md)
    python -m bench.chaos --seed 3 --messages 600 --faults redis-pause,gateway-kill
    python -m bench.chaos --cluster --seed 1 --faults failover,gateway-kill,client-abort

Everything runs on 127.0.0.1: a redis-server of its own, GATEWAYS gateway processes (server.py), and
two proxies per gateway that the harness controls, so it can cut connections and drop links:

    subscribers, publishers --client proxy i--> gateway i --redis proxy i--> redis-server

Faults come from a schedule drawn with random.Random(seed), one at a time with a quiet gap after each:

    gateway-kill    kill -9 a gateway; it starts again on its port a moment later
    gateway-term    SIGTERM (readiness 503, sockets closed 1012), then it starts again
    client-abort    every client connection of one gateway cut (TCP closed, no close frame)
    redis-pause     SIGSTOP of redis-server for 1 to 10 s, then SIGCONT (nothing lost)
    partition       one gateway's link to Redis carries nothing for 1 to 10 s (sockets stay open)
    redis-restart   kill -9 of redis-server, started again empty: history lost, an announced break

With --cluster, Redis is a cluster of 3 primaries and 3 replicas (scripts/redis-cluster.sh, node
timeout 5 s), reached directly (a cluster client follows the nodes' own addresses, so no proxy), and
one more fault is possible, once per run:

    failover        kill -9 of the primary that owns a room's slot: its replica takes over

Clients are the project's Python SDK (client/): SUBSCRIBERS members per room that recover with
`since`, and one publisher per room that sends numbered messages (each with a dedupeKey, sent again
by the SDK after a drop or an `unavailable`) and records what was acked. Once the faults are over and
every message is acked or failed, the checker reads what each member got:

    missing         acked messages a member never got (`silent` when the member was never told of a
                    loss in that room: no Recovery that is not recovered)
    duplicates      one message id delivered twice to one member
    order           a publisher's messages delivered out of their order
    renewals        epoch changes seen by the members (rooms x epochs - rooms)
    not_recovered   joins answered `recovered: false`

The target (issue: one conversation through Redis trouble): all of them 0, except after a
redis-restart, where renewals and announced losses are honest and only `silent` must be 0.
Exit code 0 when the run meets its target, 1 otherwise; `--json FILE` keeps the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import jwt
import redis
from realtime_gateway_client import Backoff, GatewayClient, Message, Recovery, RoomUpdate
from redis.crc import key_slot

from bench.common import free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "chaos-secret-that-is-long-enough-for-hs256"
FAULTS = ("gateway-kill", "gateway-term", "client-abort", "redis-pause", "partition", "redis-restart", "failover")
SAFE_FAULTS = FAULTS[:5]  # the history survives these
CLUSTER_FAULTS = ("gateway-kill", "gateway-term", "client-abort", "failover")


# -- the processes -------------------------------------------------------------------------------


class Proxy:
    """A TCP relay the harness controls: `hold()` stops carrying bytes both ways (the sockets stay
    open: a partition that drops packets), `release()` resumes, `cut()` closes every connection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._relays: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def hold(self) -> None:
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.release()
        self.cut()
        if self._server is not None:
            self._server.close()
        for relay in list(self._relays):
            relay.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)

    async def _serve(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        relay = asyncio.current_task()
        assert relay is not None
        self._relays.add(relay)
        relay.add_done_callback(self._relays.discard)
        writers = [down_w]
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            writers.append(up_w)
            self._writers.update(writers)
            await asyncio.gather(self._pump(down_r, up_w), self._pump(up_r, down_w), return_exceptions=True)
        except (OSError, asyncio.CancelledError):
            pass  # upstream down, or the harness is closing: the connection ends
        finally:
            for writer in writers:
                self._writers.discard(writer)
                writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await self._flowing.wait()
            data = await reader.read(65536)
            if not data:
                writer.transport.abort()
                return
            await self._flowing.wait()
            writer.write(data)
            await writer.drain()


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = await _spawn("redis-server", *args)
        await _until_listening(self.port, self.proc)

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def kill_and_start_empty(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            await self.proc.wait()
        await self.start()

    async def stop(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        if self.proc is not None:
            await asyncio.wait_for(self.proc.wait(), 10)


class Cluster:
    """scripts/redis-cluster.sh in a folder of its own."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="rtg-chaos-")
        self.seeds = ""
        self.failed_over = False

    async def _script(self, command: str) -> None:
        env = {**os.environ, "CLUSTER_DIR": self.folder}
        proc = await _spawn(str(ROOT / "scripts" / "redis-cluster.sh"), command, env=env)
        if await asyncio.wait_for(proc.wait(), 90) != 0 and command == "start":
            raise RuntimeError("scripts/redis-cluster.sh start failed")

    async def start(self) -> None:
        await self._script("start")
        self.seeds = (Path(self.folder) / "nodes").read_text().strip()

    async def kill_owner_of(self, key: str) -> None:
        """kill -9 of the primary that owns `key`'s slot (its replica takes over)."""
        host, _, port = self.seeds.split(",")[0].rpartition(":")
        seed = redis.Redis(host=host, port=int(port), socket_timeout=5)
        slot = key_slot(key.encode())
        for start, end, primary, *_ in await asyncio.to_thread(seed.execute_command, "CLUSTER SLOTS"):
            if start <= slot <= end:
                node = redis.Redis(host=primary[0].decode(), port=int(primary[1]), socket_timeout=5)
                info = cast("dict[str, Any]", await asyncio.to_thread(node.info, "server"))
                os.kill(int(info["process_id"]), signal.SIGKILL)
                self.failed_over = True
                return
        raise RuntimeError(f"no primary owns slot {slot}")

    async def stop(self) -> None:
        await self._script("stop")
        shutil.rmtree(self.folder, ignore_errors=True)


class Gateway:
    """server.py on a fixed port, reached through `front`, and reaching Redis through `redis_link`
    (or a cluster at `seeds`)."""

    def __init__(self, index: int, redis_link: Proxy | None, seeds: str = "") -> None:
        self.index = index
        self.port = free_port()
        self.redis_link = redis_link
        self.seeds = seeds
        self.front = Proxy(self.port)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {
            **os.environ,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "JWT_SECRET": SECRET,
            "INSTANCE_ID": f"chaos-{self.index}",
            "RATE_LIMIT": "1000",
            "RATE_BURST": "1000",
            "DRAIN_DELAY": "0",
            "DRAIN_WINDOW": "0.5",
            "LOG_LEVEL": "warning",
        }
        if self.redis_link is not None:
            env.update(REDIS_HOST="127.0.0.1", REDIS_PORT=str(self.redis_link.port))
        else:
            env.update(REDIS_CLUSTER_NODES=self.seeds)
        self.proc = await _spawn(sys.executable, str(ROOT / "server.py"), env=env)
        await _until_listening(self.port, self.proc)

    async def stop(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
            await asyncio.wait_for(self.proc.wait(), 30)


async def _spawn(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )


async def _until_listening(port: int, proc: asyncio.subprocess.Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port} after {timeout}s") from None
            await asyncio.sleep(0.05)


# -- the clients -----------------------------------------------------------------------------------


@dataclass
class Seen:
    """What one member got in one room, in arrival order."""

    messages: list[tuple[str, int | None, str | None, str]] = field(default_factory=list)  # id, offset, epoch, text
    losses: int = 0  # Recovery events, not recovered: losses the client was told of
    not_recovered: int = 0


class Member:
    def __init__(self, name: str, url: str) -> None:
        self.name = name
        token = jwt.encode({"sub": name, "exp": int(time.time()) + 86400}, SECRET, algorithm="HS256")
        backoff = Backoff(initial=0.1, maximum=1.0)
        self.client = GatewayClient(url, token, backoff=backoff, ack_timeout=120.0, max_events=1_000_000)
        self.rooms: dict[str, Seen] = defaultdict(Seen)
        self._reader: asyncio.Task[None] | None = None

    async def start(self, room: str) -> None:
        await self.client.connect()
        self._reader = asyncio.ensure_future(self._read())
        await self.client.join(room)

    async def _read(self) -> None:
        async for event in self.client.events():
            if isinstance(event, Message):
                seen = self.rooms[event.room_id]
                seen.messages.append((event.id, event.offset, event.epoch, event.content))
            elif isinstance(event, Recovery) and not event.recovered:
                self.rooms[event.room_id].losses += 1
            elif isinstance(event, RoomUpdate) and event.recovered is False:
                self.rooms[event.room_id].not_recovered += 1

    async def close(self) -> None:
        await self.client.close()
        if self._reader is not None:
            self._reader.cancel()


@dataclass
class Sent:
    publisher: str
    room: str
    seq: int
    id: str | None = None  # once acked


# -- the run ----------------------------------------------------------------------------------------


@dataclass
class Plan:
    seed: int
    gateways: int = 3
    rooms: int = 2
    subscribers: int = 5  # per room, spread over the gateways
    messages: int = 2000  # in all
    rate: float = 100.0  # messages per second, in all
    faults: tuple[str, ...] = SAFE_FAULTS
    gap: tuple[float, float] = (2.0, 4.0)  # seconds of quiet after each fault
    longest: float = 10.0  # the longest pause or partition
    cluster: bool = False


@dataclass
class Report:
    seed: int
    faults: list[str]
    acked: int
    failed: int
    deliveries: int
    missing: int
    silent: int
    duplicates: int
    order: int
    renewals: int
    not_recovered: int
    seconds: float

    def meets_target(self, lossy: bool) -> bool:
        if self.silent or self.duplicates or self.order:
            return False
        return lossy or not (self.missing or self.renewals or self.not_recovered)


async def run(plan: Plan) -> Report:
    rng = random.Random(plan.seed)
    started = time.monotonic()
    store: RedisServer | Cluster = Cluster() if plan.cluster else RedisServer()
    await store.start()
    links = [] if isinstance(store, Cluster) else [Proxy(store.port) for _ in range(plan.gateways)]
    if isinstance(store, Cluster):
        gateways = [Gateway(i, None, store.seeds) for i in range(plan.gateways)]
    else:
        gateways = [Gateway(i, link) for i, link in enumerate(links)]
    members: list[Member] = []
    applied: list[str] = []
    try:
        for link in links:
            await link.start()
        for gw in gateways:
            await gw.front.start()
            await gw.start()
        rooms = [f"chaos-{r}" for r in range(plan.rooms)]
        for r, room in enumerate(rooms):
            for s in range(plan.subscribers):
                gw = gateways[(r + s) % plan.gateways]
                members.append(Member(f"sub-{r}-{s}", f"ws://127.0.0.1:{gw.front.port}/ws"))
                await members[-1].start(room)
        publishers = []
        for r, room in enumerate(rooms):
            gw = gateways[(r + plan.subscribers) % plan.gateways]
            publisher = Member(f"pub-{r}", f"ws://127.0.0.1:{gw.front.port}/ws")
            await publisher.start(room)
            members.append(publisher)
            publishers.append((publisher, room))
        sent: list[Sent] = []
        done = asyncio.Event()
        publishing = asyncio.ensure_future(_publish(publishers, plan, sent, done))
        faults = asyncio.ensure_future(_faults(plan, rng, store, gateways, rooms, applied, done))
        await publishing
        done.set()
        await faults
        await _settle(members)
        return _check(plan, applied, sent, members, time.monotonic() - started)
    finally:
        for member in members:
            await member.close()
        for gw in gateways:
            await gw.stop(signal.SIGKILL)
            await gw.front.close()
        for link in links:
            await link.close()
        await store.stop()


async def _publish(publishers: list[tuple[Member, str]], plan: Plan, sent: list[Sent], done: asyncio.Event) -> None:
    """`plan.messages` in all, paced to `plan.rate`, each awaited in the background (the SDK keeps
    a sender's order and sends again after drops and `unavailable`)."""
    waits: list[asyncio.Future[None]] = []

    async def one(publisher: Member, item: Sent) -> None:
        try:
            ack = await publisher.client.send(item.room, f"{item.publisher}:{item.seq}")
            item.id = ack.id
        except Exception:  # not acked: outside the check, counted as failed
            pass

    start = time.monotonic()
    for n in range(plan.messages):
        publisher, room = publishers[n % len(publishers)]
        item = Sent(publisher.name, room, n // len(publishers))
        sent.append(item)
        waits.append(asyncio.ensure_future(one(publisher, item)))
        delay = start + (n + 1) / plan.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    await asyncio.gather(*waits)


async def _faults(
    plan: Plan,
    rng: random.Random,
    store: RedisServer | Cluster,
    gateways: list[Gateway],
    rooms: list[str],
    applied: list[str],
    done: asyncio.Event,
) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), rng.uniform(*plan.gap))
    while not done.is_set() and plan.faults:
        fault = rng.choice(plan.faults)
        if fault == "failover" and (not isinstance(store, Cluster) or store.failed_over):
            continue  # once per run, and only on a cluster
        gw = rng.choice(gateways)
        length = rng.uniform(1.0, plan.longest)
        where = f"@{gw.index}" if "gateway" in fault or fault in ("client-abort", "partition") else ""
        applied.append(f"{fault}{where}" + (f" {length:.1f}s" if fault in ("redis-pause", "partition") else ""))
        if fault == "gateway-kill":
            await gw.stop(signal.SIGKILL)
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            await gw.start()
        elif fault == "gateway-term":
            await gw.stop(signal.SIGTERM)
            await gw.start()
        elif fault == "client-abort":
            gw.front.cut()
        elif fault == "failover" and isinstance(store, Cluster):
            await store.kill_owner_of(f"rt:room:{{{rng.choice(rooms)}}}")
        elif fault == "redis-pause" and isinstance(store, RedisServer):
            store.signal(signal.SIGSTOP)
            await asyncio.sleep(length)
            store.signal(signal.SIGCONT)
        elif fault == "partition" and gw.redis_link is not None:
            gw.redis_link.hold()
            await asyncio.sleep(length)
            gw.redis_link.release()
        elif fault == "redis-restart" and isinstance(store, RedisServer):
            await store.kill_and_start_empty()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), rng.uniform(*plan.gap))


async def _settle(members: list[Member], quiet: float = 3.0, timeout: float = 60.0) -> None:
    """Until no member has received anything for `quiet` seconds (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    last = -1
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        total = sum(len(s.messages) for m in members for s in m.rooms.values())
        if total != last:
            last, still_since = total, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            return
        await asyncio.sleep(0.2)


def _check(plan: Plan, applied: list[str], sent: list[Sent], members: list[Member], seconds: float) -> Report:
    acked = [s for s in sent if s.id is not None]
    by_room: dict[str, list[Sent]] = defaultdict(list)
    for item in acked:
        by_room[item.room].append(item)
    missing = silent = duplicates = order = not_recovered = deliveries = 0
    epochs: dict[str, set[str]] = defaultdict(set)
    for member in members:
        for room, seen in member.rooms.items():
            not_recovered += seen.not_recovered
            ids = [m[0] for m in seen.messages]
            deliveries += len(ids)
            duplicates += len(ids) - len(set(ids))
            epochs[room].update(m[2] for m in seen.messages if m[2] is not None)
            last: dict[str, int] = {}
            for _, _, _, text in seen.messages:
                publisher, _, seq = text.rpartition(":")
                if int(seq) < last.get(publisher, -1):
                    order += 1
                last[publisher] = max(last.get(publisher, -1), int(seq))
            lost = [item for item in by_room[room] if item.id not in set(ids)]
            missing += len(lost)
            if lost and not (seen.losses or seen.not_recovered):
                silent += len(lost)
    return Report(
        seed=plan.seed,
        faults=applied,
        acked=len(acked),
        failed=len(sent) - len(acked),
        deliveries=deliveries,
        missing=missing,
        silent=silent,
        duplicates=duplicates,
        order=order,
        renewals=sum(len(e) for e in epochs.values()) - len(epochs),
        not_recovered=not_recovered,
        seconds=round(seconds, 1),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, action="append", help="one run per seed (default: 1)")
    parser.add_argument("--gateways", type=int, default=3)
    parser.add_argument("--rooms", type=int, default=2)
    parser.add_argument("--subscribers", type=int, default=5, help="members per room besides its publisher")
    parser.add_argument("--messages", type=int, default=2000, help="messages in all")
    parser.add_argument("--rate", type=float, default=100.0, help="messages per second, in all")
    parser.add_argument("--faults", help=f"comma-separated, of {', '.join(FAULTS)} (default: all but redis-restart)")
    parser.add_argument("--longest", type=float, default=10.0, help="seconds of the longest pause or partition")
    parser.add_argument(
        "--cluster", action="store_true", help=f"a Redis Cluster; faults of {', '.join(CLUSTER_FAULTS)}"
    )
    parser.add_argument("--json", type=Path, help="write the reports here")
    args = parser.parse_args(argv)
    default = CLUSTER_FAULTS if args.cluster else SAFE_FAULTS
    faults = tuple(f for f in args.faults.split(",") if f) if args.faults else default
    unknown = sorted(set(faults) - set(CLUSTER_FAULTS if args.cluster else FAULTS[:6]))
    if unknown:
        parser.error(f"faults not possible here: {', '.join(unknown)}")
    reports = []
    for seed in args.seed or [1]:
        plan = Plan(
            seed,
            args.gateways,
            args.rooms,
            args.subscribers,
            args.messages,
            args.rate,
            faults,
            longest=args.longest,
            cluster=args.cluster,
        )
        report = asyncio.run(run(plan))
        reports.append(report)
        print(json.dumps(asdict(report)), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in reports], indent=2) + "\n")
    lossy = "redis-restart" in faults
    return 0 if all(r.meets_target(lossy) for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
