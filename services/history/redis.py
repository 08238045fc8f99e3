"""RedisHistory: one history per room shared by every instance.

Keys (one hash tag per room, so both live in the room's slot):

    {REDIS_PREFIX}history:{<room>}        stream of the room's entries, id `0-<offset>`, field f = frame;
                                          at most HISTORY_SIZE entries and HISTORY_ROOM_BYTES of frames,
                                          expires HISTORY_TTL after the last append
    {REDIS_PREFIX}history:{<room>}:pos    hash epoch, offset, bytes (of the stream's frames); expires
                                          POSITION_TTL after the last append

`append` is one script: the next offset, the frame with its position, XADD, and PUBLISH (SPUBLISH
on a cluster) on the room's bus channel, so the order of the offsets is the order every instance receives the entries
in. A missing position hash (flushed, or Redis restarted empty) starts a new epoch. When an append
fails, the entry reached this instance's members only: the room is remembered, and its epoch is
renewed by the next command that reaches Redis (`heal` after the bus is back), so a later
recovery never skips that entry silently.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

from redis.asyncio.cluster import RedisCluster

from schemas.protocol import room_channel
from services.bus.wire import bus_key, entry_head
from services.errors import StoreError
from services.history import POSITION_TTL, Position, Replay, recovery_check
from services.redis_common import REDIS_ERRORS, RedisClient, StoreHealth, register, text

log = logging.getLogger("gateway.history")

# Shared head of both scripts: the room's epoch, renewed when missing or asked to (ARGV[1] = a
# fresh epoch, ARGV[2] = "1" to renew, ARGV[3] = the position's TTL in ms).
_EPOCH = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch or ARGV[2] == '1' then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'offset', 0, 'bytes', 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
"""

# ARGV[4] size, ARGV[5] entries' TTL ms, ARGV[6] channel, ARGV[7] entry head, ARGV[8] frame less "}}",
# ARGV[9] PUBLISH, or SPUBLISH on a cluster (the room's channel is in the slot of KEYS: docs/scaling.md),
# ARGV[10] bytes of entries kept. The position's `bytes` counts the stream's frames (0 once the stream
# expired); the oldest entries go while over either bound, and an entry over the bytes alone empties
# the stream: what it keeps always ends at the room's offset.
_APPEND = (
    _EPOCH
    + """
local offset = redis.call('HINCRBY', KEYS[2], 'offset', 1)
local frame = ARGV[8] .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}}'
local most_bytes = tonumber(ARGV[10])
local held = 0
if redis.call('EXISTS', KEYS[1]) == 1 then held = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0') end
if #frame > most_bytes then
  redis.call('DEL', KEYS[1])
  held = 0
else
  redis.call('XADD', KEYS[1], '0-' .. offset, 'f', frame)
  held = held + #frame
  local count = redis.call('XLEN', KEYS[1])
  local most = tonumber(ARGV[4])
  while count > most or held > most_bytes do
    local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
    if not oldest then held = 0 break end  -- the count had drifted (an older instance trimmed): reset
    redis.call('XDEL', KEYS[1], oldest[1])
    held = math.max(0, held - #oldest[2][2])
    count = count - 1
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
redis.call('HSET', KEYS[2], 'bytes', held)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call(ARGV[9], ARGV[6], ARGV[7] .. offset .. ',"' .. epoch .. '"]\\n' .. frame)
return {epoch, offset, frame}
"""
)

# ARGV[4] "position", "since" or "latest", ARGV[5] since offset, ARGV[6] since epoch, ARGV[7] most entries,
# ARGV[8] most bytes. Returns {epoch, offset, frames...}; for "since", frames only when every entry after
# it is held and they fit in the bytes; for "latest", the newest that fit.
_READ = (
    _EPOCH
    + """
local offset = tonumber(redis.call('HGET', KEYS[2], 'offset') or '0')
local out = {epoch, offset}
if ARGV[4] == 'position' then return out end
local most = tonumber(ARGV[7])
local budget = tonumber(ARGV[8])
if ARGV[4] == 'latest' then
  local rev = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', most)
  local n = 0
  for i = 1, #rev do
    budget = budget - #rev[i][2][2]
    if budget < 0 then break end
    n = i
  end
  for i = n, 1, -1 do out[#out + 1] = rev[i][2][2] end
  return out
end
local since = tonumber(ARGV[5])
if ARGV[6] ~= epoch or since >= offset or offset - since > most then return out end
local got = redis.call('XRANGE', KEYS[1], '0-' .. (since + 1), '0-' .. offset)
if #got ~= offset - since then return out end
for _, entry in ipairs(got) do budget = budget - #entry[2][2] end
if budget < 0 then return out end
for _, entry in ipairs(got) do out[#out + 1] = entry[2][2] end
return out
"""
)


HEAL_INTERVAL = 1.0  # seconds between attempts to renew the epochs of rooms that lost an entry


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _unbounded(max_bytes: int | None) -> int:
    return (1 << 50) if max_bytes is None else max_bytes


class RedisHistory:
    publishes = True

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        instance_id: str,
        size: int,
        ttl: float,
        bus_ready: Callable[[], bool] = lambda: True,
        room_bytes: int = 1024 * 1024,
    ) -> None:
        """`bus_ready`: while the bus is down an append fails at once (its publish could not reach
        anyone) instead of waiting for a command timeout per message."""
        self._client = client
        self._bus_ready = bus_ready
        self._prefix = prefix
        self._size = size
        self._room_bytes = room_bytes
        self._entries_ms = _ms(ttl)
        self._position_ms = _ms(max(POSITION_TTL, ttl))
        self._head = entry_head(instance_id)
        self._sharded = isinstance(client, RedisCluster)
        self._append = register(client, _APPEND)
        self._read = register(client, _READ)
        self._lost: set[str] = set()  # rooms with an entry delivered here but never stored
        self._healer: asyncio.Task[None] | None = None
        self._state = StoreHealth(log, "history", "history")

    async def start(self) -> None:
        pass

    def _keys(self, room: str) -> list[str]:
        stream = f"{self._prefix}history:{{{room}}}"
        return [stream, stream + ":pos"]

    async def _call(self, room: str, script: Any, args: list[Any]) -> list[Any]:
        # Only one call renews a lost room's epoch (the flag is taken here, given back on failure):
        # several in flight would each start a new epoch.
        renewing = room in self._lost
        self._lost.discard(room)
        epoch_args = [secrets.token_hex(6), "1" if renewing else "0", self._position_ms]
        try:
            result = await script(keys=self._keys(room), args=[*epoch_args, *args])
        except REDIS_ERRORS as exc:
            if renewing:
                self._lose(room)
            raise self._state.unavailable(exc) from None
        self._state.ok()
        if renewing:
            log.info("history epoch renewed after entries were not stored", extra={"room": room})
        return list(result)

    async def append(self, room: str, frame: bytes) -> tuple[Position, bytes]:
        channel = bus_key(self._prefix, room_channel(room).key, self._sharded)
        publish = "SPUBLISH" if self._sharded else "PUBLISH"
        args = [self._size, self._entries_ms, channel, self._head, frame[:-2], publish, self._room_bytes]
        try:
            if not self._bus_ready():
                raise StoreError("history unavailable: the bus is down")
            epoch, offset, full = await self._call(room, self._append, args)
        except StoreError:
            self._lose(room)
            raise
        return Position(int(offset), text(epoch)), bytes(full)

    async def position(self, room: str) -> Position:
        epoch, offset, *_ = await self._call(room, self._read, ["position", 0, "", 0, 0])
        return Position(int(offset), text(epoch))

    async def recover(self, room: str, since: Position, limit: int, max_bytes: int | None = None) -> Replay:
        args = ["since", since.offset, since.epoch, limit, _unbounded(max_bytes)]
        epoch, offset, *frames = await self._call(room, self._read, args)
        current = Position(int(offset), text(epoch))
        verdict = recovery_check(since, current)
        if verdict is not None:
            return Replay(current, [] if verdict else None)
        return Replay(current, [bytes(f) for f in frames] if frames else None)

    async def latest(self, room: str, limit: int, max_bytes: int | None = None) -> tuple[Position, list[bytes]]:
        epoch, offset, *frames = await self._call(room, self._read, ["latest", 0, "", limit, _unbounded(max_bytes)])
        return Position(int(offset), text(epoch)), [bytes(f) for f in frames]

    async def heal(self) -> None:
        """Renew the epoch of every room that lost an entry while Redis was unreachable."""
        for room in list(self._lost):
            try:
                await self.position(room)
            except StoreError:
                return
            await asyncio.sleep(0)

    def _lose(self, room: str) -> None:
        """Remember the room, and keep trying to renew its epoch until Redis answers: the bus may
        stay up (no resync to trigger `heal`) and this instance may never touch the room again."""
        self._lost.add(room)
        if self._healer is None or self._healer.done():
            self._healer = asyncio.ensure_future(self._heal_until_done())

    async def _heal_until_done(self) -> None:
        while self._lost:
            await asyncio.sleep(HEAL_INTERVAL)
            await self.heal()

    async def close(self) -> None:
        if self._healer is not None:
            self._healer.cancel()  # the shared client is closed by the gateway
