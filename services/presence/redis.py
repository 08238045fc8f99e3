"""RedisPresence: room membership and statuses shared by every instance through Redis (its keys and
Lua scripts: redis_scripts.py).

Why: the owner refreshes one heartbeat key per PRESENCE_TTL/3 instead of one entry per connection,
so keep-alive costs O(1) per instance. When an instance dies its heartbeat lapses; a sweep (every
few seconds, done by whichever instance takes the lock) pops the dead instance's connections room
by room (it lists the rooms it had), decrements the per-user counts and reports the users that
reached zero through `on_expired`, which the hub announces offline on the room channel. Bound:
PRESENCE_TTL + one sweep interval (plus one more in the worst case of lock timing), 40 s with the
defaults. Each script touches one room's keys only, so the same code serves a Redis Cluster.

Every change is one Lua script. Each instance also keeps its own connections locally; whenever Redis
may have diverged from that (a failed write, a lapsed heartbeat, a Redis restart that lost the
data) the next refresh reconciles: missing connections are re-added (`on_restored` announces them
online) and stale ones removed (`on_expired` announces them offline).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import cast

from services.errors import StoreError
from services.presence import ONLINE, ExpiredHandler, Member, Page, announce
from services.presence.redis_scripts import JOIN, LEAVE, PAGE, SEP, STATUS, Keys, local_member, remote_member
from services.presence.redis_sweep import Sweeper
from services.redis_common import REDIS_ERRORS, RedisClient, StoreHealth, guarded, register, text

log = logging.getLogger("gateway.presence")


class RedisPresence:
    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        instance_id: str,
        ttl: float,
        can_announce: Callable[[], bool] = lambda: True,
    ) -> None:
        """`can_announce` tells whether announcements would reach the other instances now (the bus is
        up); expiry and reconcile wait for it, so what they find is not announced into the void."""
        self._client = client
        self._can_announce = can_announce
        self._prefix = prefix
        self.instance_id = instance_id
        self.ttl = ttl
        self.refresh_interval = ttl / 3
        self._keys = Keys(prefix)
        self._rooms_key = self._keys.rooms(instance_id)
        self._join = register(client, JOIN)
        self._leave = register(client, LEAVE)
        self._status = register(client, STATUS)
        self._page = register(client, PAGE)
        self._local: dict[str, tuple[str, str]] = {}  # member -> (room, user): what we own
        self._registered: set[str] = set()  # rooms written to our rooms key (a superset of where we are)
        self._closed = False  # a socket that closes after us is decided locally (fallback.py)
        # Redis may disagree with _local: reconcile on the next refresh. True at start: a restart
        # under a fixed INSTANCE_ID finds its previous life's connections still registered.
        self._dirty = True
        self._lost_leaves: set[tuple[str, str]] = set()  # (room, user) whose leave failed
        self._on_expired: ExpiredHandler | None = None
        self._on_restored: ExpiredHandler | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Others with per-instance state in Redis (services/online), told when our heartbeat had
        # lapsed: a sweeper may have purged it, and it must be written again.
        self.lapsed_hooks: list[Callable[[], None]] = []
        self._beating = False
        interval = max(0.5, min(5.0, ttl / 6))
        self._state = StoreHealth(log, "presence", "presence store")
        self.sweeper = Sweeper(
            client,
            self._keys,
            instance_id,
            interval,
            can_announce,
            lambda room, user: announce(self._on_expired, room, user),
            self._state.unavailable,
        )

    # -- the PresenceStore interface ---------------------------------------------------------

    async def start(self, on_expired: ExpiredHandler, on_restored: ExpiredHandler | None = None) -> None:
        """Register this instance's heartbeat (StoreError if Redis is unreachable), then keep it
        alive and sweep dead instances in the background."""
        self._on_expired = on_expired
        self._on_restored = on_restored
        if self._tasks:
            return
        await self._keepalive()
        self._tasks = [asyncio.create_task(self._refresh_loop()), asyncio.create_task(self.sweeper.run())]

    async def join(self, room: str, user: str, conn_id: str, now: float) -> tuple[bool, int]:
        if self._closed:
            raise StoreError("presence store closed")
        member = local_member(room, user, conn_id)
        self._local[member] = (room, user)
        try:
            await self._register(room)
            new, count = await self._join_script(room, user, member, now)
        except REDIS_ERRORS as exc:
            # Kept in _local: the connection is in the room (served locally meanwhile), and the
            # reconcile after the outage registers it and announces it to the other instances.
            self._dirty = True
            raise self._state.unavailable(exc) from None
        self._state.ok()
        return bool(new), int(count)

    async def leave(self, room: str, user: str, conn_id: str) -> tuple[bool, int]:
        """If Redis cannot be told now, the next reconcile removes the connection and announces the
        user offline to the other instances then; StoreError tells the caller to decide locally."""
        if self._closed:
            raise StoreError("presence store closed")
        member = local_member(room, user, conn_id)
        self._local.pop(member, None)
        try:
            gone, count = await self._leave_script(room, user, member)
        except REDIS_ERRORS as exc:
            self._dirty = True
            self._lost_leaves.add((room, user))
            raise self._state.unavailable(exc) from None
        self._state.ok()
        return bool(gone), int(count)

    async def _register(self, room: str) -> None:
        """List the room under this instance before the first connection there is written, so a
        sweep after our death finds it (the sweeper cannot list a room's connections by instance
        across slots)."""
        if room not in self._registered:
            self._registered.add(room)
            try:
                await cast("Awaitable[int]", self._client.sadd(self._rooms_key, room))
            except REDIS_ERRORS:
                self._registered.discard(room)
                raise

    async def _join_script(self, room: str, user: str, member: str, now: float) -> list[int]:
        keys = self._keys.scripted(room, self.instance_id)
        return list(await self._join(keys=keys, args=[user, remote_member(member), f"{ONLINE}{SEP}{now!r}"]))

    async def _leave_script(self, room: str, user: str, member: str) -> list[int]:
        keys = self._keys.scripted(room, self.instance_id)
        return list(await self._leave(keys=keys, args=[user, remote_member(member)]))

    async def set_status(self, room: str, user: str, status: str, now: float) -> None:
        users, _, _ = self._keys.room(room)
        try:
            await self._status(keys=[users], args=[user, status, f"{status}{SEP}{now!r}"])
        except REDIS_ERRORS as exc:
            raise self._state.unavailable(exc) from None
        self._state.ok()

    async def page(self, room: str, after: str | None, limit: int) -> Page:
        users, _, order = self._keys.room(room)
        start = "-" if after is None else "(" + after
        try:
            raw = await self._page(keys=[order, users], args=[start, limit + 1])
        except REDIS_ERRORS as exc:
            raise self._state.unavailable(exc) from None
        self._state.ok()
        count, flat = int(raw[0]), [text(x) for x in raw[1:]]
        members: list[Member] = []
        for user, value in zip(flat[0::2], flat[1::2], strict=True):
            status, _, since = value.partition(SEP)
            try:
                when = float(since)
            except ValueError:
                when = 0.0
            members.append(Member(user, status or ONLINE, when))
        return Page(count, members[:limit], len(members) > limit)

    async def counts(self, rooms: list[str]) -> list[int]:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for room in rooms:
                    pipe.zcard(self._keys.room(room)[2])
                return [int(n) for n in await guarded(self._client, pipe.execute)]
        except REDIS_ERRORS as exc:
            raise self._state.unavailable(exc) from None

    async def close(self) -> None:
        """Stop refreshing and drop the heartbeat. Connections still registered (none after a drain)
        are then removed by another instance's sweep, which announces them offline."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            await self._client.delete(self._keys.alive(self.instance_id))
            if not self._local:
                await self._client.delete(self._rooms_key)
                await cast("Awaitable[int]", self._client.srem(self._keys.instances, self.instance_id))
        except REDIS_ERRORS:
            pass  # the heartbeat lapses by itself
        self._local.clear()

    # -- keep-alive and reconciliation -------------------------------------------------------

    async def resync(self) -> None:
        self._dirty = True
        await self._keepalive()

    async def _keepalive(self) -> None:
        """Refresh the heartbeat; reconcile when Redis may have lost or kept what it should not."""
        try:
            existed = await self._client.set(self._keys.alive(self.instance_id), "1", px=int(self.ttl * 1000), get=True)
            await cast("Awaitable[int]", self._client.sadd(self._keys.instances, self.instance_id))
            await self._prune()
        except REDIS_ERRORS as exc:
            raise self._state.unavailable(exc) from None
        self._state.ok()
        if existed is None and self._beating:  # lapsed: a sweeper may have purged us
            for hook in self.lapsed_hooks:
                hook()
        self._beating = True
        if existed is None and self._local:
            self._dirty = True
        if self._dirty and self._can_announce():
            await self._reconcile()

    async def _prune(self) -> None:
        """Unlist the rooms we no longer have connections in (a room joined again meanwhile is
        listed again: the SADD of its join may have raced our SREM)."""
        stale = self._registered - self._rooms()
        if not stale:
            return
        self._registered -= stale
        await cast("Awaitable[int]", self._client.srem(self._rooms_key, *stale))
        again = stale & self._rooms()
        if again:
            self._registered |= again
            await cast("Awaitable[int]", self._client.sadd(self._rooms_key, *again))

    def _rooms(self) -> set[str]:
        return {room for room, _ in self._local.values()}

    async def _remote_members(self) -> set[str]:
        """Our connections as Redis has them, in every room listed under us or held here."""
        listed = {text(r) for r in await cast("Awaitable[set[bytes]]", self._client.smembers(self._rooms_key))}
        out: set[str] = set()
        for room in listed | self._rooms():
            conns = await cast("Awaitable[set[bytes]]", self._client.smembers(self._keys.conns(room, self.instance_id)))
            out.update(f"{room}{SEP}{text(c)}" for c in conns)
        self._registered |= listed
        return out

    async def _reconcile(self) -> None:
        """Make Redis hold exactly our local connections, announcing whoever that changes."""
        self._dirty = False
        lost, self._lost_leaves = self._lost_leaves, set()
        announced: set[tuple[str, str]] = set()  # announced offline
        restored = 0
        try:
            remote = await self._remote_members()
            for member in remote - self._local.keys():
                room, _, rest = member.partition(SEP)
                _, _, user = rest.partition(SEP)
                if (await self._leave_script(room, user, member))[0]:
                    announced.add((room, user))
                    announce(self._on_expired, room, user)
            now = time.time()
            for member, (room, user) in list(self._local.items()):
                if member in remote or member not in self._local:
                    continue
                await self._register(room)
                new, _ = await self._join_script(room, user, member, now)
                restored += 1
                if new:
                    announce(self._on_restored, room, user)
            # Leaves Redis never heard of, because it lost its data meanwhile: nobody has said
            # offline yet, so say it now unless the user is in the room through
            # another connection (here, re-added just above, or elsewhere).
            for room, user in lost - announced:
                users, _, _ = self._keys.room(room)
                if not await cast("Awaitable[bool]", self._client.hexists(users, user)):
                    announced.add((room, user))
                    announce(self._on_expired, room, user)
        except REDIS_ERRORS as exc:
            self._dirty = True
            self._lost_leaves |= lost
            raise self._state.unavailable(exc) from None
        if announced or restored:
            log.info("presence reconciled", extra={"offline": len(announced), "restored": restored})

    async def _refresh_loop(self) -> None:
        while True:
            soon = self._state.failing or self._dirty  # retry (or finish a reconcile) every second
            await asyncio.sleep(min(1.0, self.refresh_interval) if soon else self.refresh_interval)
            try:
                await self._keepalive()
            except StoreError:
                pass  # logged once by the state log; retried every second
