"""RedisOnline: one user's announced state shared by every instance.

Keys (REDIS_PREFIX first):

    online:{user}        hash: `i:<instance>` per instance holding a socket of the user, `state`
                         ("on" once announced online, "off" after user.offline), `seen` (the last
                         socket's close), `due` (when the offline record is due)
    online:due           sorted set: users whose offline is due, by time
    online:by:{instance} set: users with a socket on that instance (for the sweep of a dead one)

Each transition is one script on the user's hash, so of two instances racing exactly one sees it:
OPEN announces online only when `state` was not "on" (and cancels a due offline: a reconnect in
the grace says nothing); CLOSE of the last instance sets `due` = now + OFFLINE_GRACE; SETTLE, run
by whichever instance polls `online:due` first once it is due, turns `state` to "off" and is the
one to produce user.offline. A killed instance's flags are purged by the presence sweeper's
instance (`purge_instance`), which makes their offline due. A failed Redis call is logged once per
outage; presence events during an outage may be missed (they are for notifications, not truth).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, cast

from services.backoff import Backoff
from services.logs import StateLog
from services.online import OFFLINE, ONLINE, Announce
from services.redis_common import REDIS_ERRORS, RedisClient, describe, register, text

log = logging.getLogger("gateway.online")

POLL_INTERVAL = 1.0  # seconds between looks at online:due (how late past the grace offline may be)
SETTLE_BATCH = 100  # users settled per round trip; rounds repeat while they come back full
KEEP_OFFLINE_MS = 24 * 3600 * 1000  # an "off" state is forgotten after a day (then a socket is online anew)

# Lua helper: does the hash still have an instance flag?
_ANY_INSTANCE = """
local function any_instance(key)
  for _, k in ipairs(redis.call('HKEYS', key)) do
    if string.sub(k, 1, 2) == 'i:' then return true end
  end
  return false
end
"""

# KEYS[1] user hash; ARGV[1] the instance field. 1: announce online.
_OPEN = """
redis.call('HSET', KEYS[1], ARGV[1], '1')
redis.call('HDEL', KEYS[1], 'due')
redis.call('PERSIST', KEYS[1])
if redis.call('HGET', KEYS[1], 'state') == 'on' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'on')
return 1
"""

# KEYS[1] user hash; ARGV[1] instance field, ARGV[2] now, ARGV[3] due. The due time, or nil. Also
# purges a dead instance's flag; a due set before (say, by that instance) is kept.
_CLOSE = (
    _ANY_INSTANCE
    + """
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[1], 'state') ~= 'on' or any_instance(KEYS[1]) then return false end
if not redis.call('HGET', KEYS[1], 'due') then
  redis.call('HSET', KEYS[1], 'seen', ARGV[2], 'due', ARGV[3])
end
return redis.call('HGET', KEYS[1], 'due')
"""
)

# KEYS[1] user hash; ARGV[1] now, ARGV[2] ms to keep "off". {0}: nothing to do, {1, due}: not
# yet, {2, seen}: this caller produces user.offline.
_SETTLE = (
    _ANY_INSTANCE
    + """
local due = redis.call('HGET', KEYS[1], 'due')
if not due then return {0} end
if tonumber(due) > tonumber(ARGV[1]) then return {1, due} end
redis.call('HDEL', KEYS[1], 'due')
if redis.call('HGET', KEYS[1], 'state') ~= 'on' or any_instance(KEYS[1]) then return {0} end
redis.call('HSET', KEYS[1], 'state', 'off')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {2, redis.call('HGET', KEYS[1], 'seen') or ARGV[1]}
"""
)


class RedisOnline:
    def __init__(self, client: RedisClient, prefix: str, instance_id: str, grace: float) -> None:
        self._client = client
        self._prefix = prefix + "online:"
        self._field = f"i:{instance_id}"
        self._mine = self._by(instance_id)
        self._due_key = self._prefix + "due"
        self._grace = grace
        self._open = register(client, _OPEN)
        self._close = register(client, _CLOSE)
        self._settle = register(client, _SETTLE)
        self._announce: Announce | None = None
        self._want: dict[str, bool] = {}  # user -> has a local socket (what Redis should say)
        self._told: dict[str, bool] = {}  # ... what Redis was last told
        self._busy: set[str] = set()  # users whose worker is running
        self._tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._closing = False
        self._state = StateLog(log, "redis online")

    def _by(self, instance: str) -> str:
        return f"{self._prefix}by:{{{instance}}}"

    def _user(self, user: str) -> str:
        return f"{self._prefix}{{{user}}}"

    async def start(self, announce: Announce) -> None:
        self._announce = announce
        self._poller = asyncio.ensure_future(self._poll_forever())

    # -- the hub's calls: one worker per user applies the latest local state in order --------

    def opened(self, user: str) -> None:
        self._set(user, True)

    def closed(self, user: str) -> None:
        self._set(user, False)

    def _set(self, user: str, want: bool) -> None:
        self._want[user] = want
        if user not in self._busy:
            self._busy.add(user)
            task = asyncio.ensure_future(self._apply(user))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _apply(self, user: str) -> None:
        """Until Redis says what this instance holds for `user` (retried with backoff through an
        outage: a flag left behind would keep the user online for ever; the scripts can run twice)."""
        backoff = Backoff(0.5, 10.0)  # seconds between attempts to tell Redis, through an outage
        try:
            while (want := self._want.get(user, False)) != self._told.get(user, False):
                try:
                    await (self._opened(user) if want else self._closed(user))
                except REDIS_ERRORS as exc:
                    self._state.failed(describe(exc))
                    if self._closing:
                        return
                    await asyncio.sleep(backoff.next())
                    continue
                self._told[user] = want
        finally:
            self._busy.discard(user)
            if not self._want.get(user, False):
                self._want.pop(user, None)
                self._told.pop(user, None)

    async def _opened(self, user: str) -> None:
        await cast("Awaitable[int]", self._client.sadd(self._mine, user))
        if int(await self._open(keys=[self._user(user)], args=[self._field])) == 1:
            self._emit(ONLINE, user, time.time(), None)
        self._state.ok()

    async def _closed(self, user: str) -> None:
        now = time.time()
        due = await self._close(keys=[self._user(user)], args=[self._field, _num(now), _num(now + self._grace)])
        if due is not None:
            await self._client.zadd(self._due_key, {user: float(due)})
        await cast("Awaitable[int]", self._client.srem(self._mine, user))
        self._state.ok()

    def reassert(self) -> None:
        """Our heartbeat had lapsed, so a sweeper may have taken this instance for dead and purged
        its flags (it was only late): tell Redis again which users have a socket here. A user the
        sweep made offline meanwhile is online again (a record); one whose offline was only due is
        not (no record)."""
        for user, want in list(self._want.items()):
            if want:
                self._told[user] = False
                self._set(user, True)

    # -- offline records ---------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                await self.settle_due()
            except REDIS_ERRORS as exc:
                self._state.failed(describe(exc))
            except Exception:  # safety net: a bug here must not end every offline record
                log.exception("settling due offline records failed")

    async def settle_due(self) -> None:
        """Produce user.offline for every user whose grace ended; each record by one instance. A
        user is claimed from `online:due` first (ZREM answers 1 to one instance), so a due added
        again meanwhile by another instance's close is never removed by a late claim."""
        while True:
            now = time.time()
            raw = await self._client.zrangebyscore(self._due_key, "-inf", now, start=0, num=SETTLE_BATCH)
            for member in raw:
                user = text(member)
                if not await cast("Awaitable[int]", self._client.zrem(self._due_key, user)):
                    continue  # another instance claimed it
                out: list[Any] = await self._settle(keys=[self._user(user)], args=[_num(now), KEEP_OFFLINE_MS])
                if int(out[0]) == 1:  # the due moved (a later close): look again then
                    await self._client.zadd(self._due_key, {user: float(out[1])})
                elif int(out[0]) == 2:
                    self._emit(OFFLINE, user, now, float(out[1]))
            self._state.ok()
            if len(raw) < SETTLE_BATCH:
                return

    async def purge_instance(self, instance: str) -> None:
        """A dead instance's users (the presence sweeper found it dead): their flags go, and the
        offline of those with no socket left anywhere becomes due."""
        key = self._by(instance)
        now = time.time()
        field = f"i:{instance}"
        for member in await cast("Awaitable[set[bytes]]", self._client.smembers(key)):
            user = text(member)
            due = await self._close(keys=[self._user(user)], args=[field, _num(now), _num(now + self._grace)])
            if due is not None:
                await self._client.zadd(self._due_key, {user: float(due)})
        await self._client.delete(key)

    def _emit(self, event_type: str, user: str, at: float, seen: float | None) -> None:
        if self._announce is not None:
            self._announce(event_type, user, at, seen)

    async def close(self) -> None:
        self._closing = True
        if self._poller is not None:
            self._poller.cancel()
        if self._tasks:  # the drain's last closes reach Redis, so another instance settles them
            await asyncio.wait(set(self._tasks), timeout=2.0)


def _num(value: float) -> str:
    return f"{value:.3f}"
