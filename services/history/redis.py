"""RedisHistory: one history per room shared by every instance.

Keys (one hash tag per room, so all live in the room's slot):

    {REDIS_PREFIX}history:{<room>}        stream of the room's entries, id `0-<offset>`, fields f = frame
                                          and, for a message, i = its id; at most HISTORY_SIZE entries and
                                          HISTORY_ROOM_BYTES of frames; expires HISTORY_TTL after the last append
    {REDIS_PREFIX}history:{<room>}:pos    hash epoch, offset, bytes (of the stream's frames); expires
                                          POSITION_TTL after the last append
    {REDIS_PREFIX}history:{<room>}:ids    hash message id -> offset of the messages still in the stream

`append` is one script: the next offset, the frame with its position, XADD, and PUBLISH (SPUBLISH
on a cluster) on the room's bus channel, so the order of the offsets is the order every instance
receives the entries in. It is idempotent per message id: a command cut by its timeout may still
run once Redis resumes (a pause, a partition), and the sender's retry with the same dedupeKey (the
same id, services/hub/messages.py) then finds the entry instead of storing it twice.

An epoch is renewed only when the history was lost: the position hash is missing (flushed, Redis
restarted empty), or it went back behind what the calling instance already delivered in that
epoch (a failover to a replica that had not received the last entries). Nothing else renews it:
an entry that could not be stored was refused to its sender, so the history has no hole.
"""

from __future__ import annotations

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

# Shared head of both scripts: the room's epoch, renewed when missing or behind the caller
# (ARGV[1] = a fresh epoch, ARGV[2] and ARGV[3] = the epoch and offset the caller last delivered,
# "" and 0 when it knows none, ARGV[4] = the position's TTL in ms).
_EPOCH = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch or (epoch == ARGV[2] and tonumber(redis.call('HGET', KEYS[2], 'offset')) < tonumber(ARGV[3])) then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1], KEYS[3])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'offset', 0, 'bytes', 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
"""

# ARGV[5] size, ARGV[6] entries' TTL ms, ARGV[7] channel, ARGV[8] entry head, ARGV[9] frame less "}}",
# ARGV[10] PUBLISH, or SPUBLISH on a cluster (the room's channel is in the slot of KEYS: docs/scaling.md),
# ARGV[11] bytes of entries kept, ARGV[12] the message's id ("" for updates and deletes). An id already
# in the stream returns its entry unchanged and publishes nothing (the entry must name the id: an index
# left behind by anything that emptied the stream is not believed). The position's `bytes` counts the
# stream's frames (0 once the stream expired); the oldest entries go while over either bound, and an
# entry over the bytes alone empties the stream: what it keeps always ends at the room's offset.
_APPEND = (
    _EPOCH
    + """
local id = ARGV[12]
if id ~= '' then
  local seen = redis.call('HGET', KEYS[3], id)
  local entry = seen and redis.call('XRANGE', KEYS[1], '0-' .. seen, '0-' .. seen)[1]
  if entry and entry[2][4] == id then return {epoch, tonumber(seen), entry[2][2]} end
end
local offset = redis.call('HINCRBY', KEYS[2], 'offset', 1)
local frame = ARGV[9] .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}}'
local most_bytes = tonumber(ARGV[11])
local held = 0
if redis.call('EXISTS', KEYS[1]) == 1 then held = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0') end
if #frame > most_bytes then
  redis.call('DEL', KEYS[1], KEYS[3])
  held = 0
else
  if id ~= '' then
    redis.call('XADD', KEYS[1], '0-' .. offset, 'f', frame, 'i', id)
    redis.call('HSET', KEYS[3], id, offset)
    redis.call('PEXPIRE', KEYS[3], ARGV[6])
  else
    redis.call('XADD', KEYS[1], '0-' .. offset, 'f', frame)
  end
  held = held + #frame
  local count = redis.call('XLEN', KEYS[1])
  local most = tonumber(ARGV[5])
  while count > most or held > most_bytes do
    local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
    if not oldest then held = 0 break end  -- the count had drifted (an older instance trimmed): reset
    redis.call('XDEL', KEYS[1], oldest[1])
    if oldest[2][4] then redis.call('HDEL', KEYS[3], oldest[2][4]) end
    held = math.max(0, held - #oldest[2][2])
    count = count - 1
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
redis.call('HSET', KEYS[2], 'bytes', held)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call(ARGV[10], ARGV[7], ARGV[8] .. offset .. ',"' .. epoch .. '"]\\n' .. frame)
return {epoch, offset, frame}
"""
)

# ARGV[5] "position", "since" or "latest", ARGV[6] since offset, ARGV[7] since epoch, ARGV[8] most entries,
# ARGV[9] most bytes. Returns {epoch, offset, frames...}; for "since", frames only when every entry after
# it is held and they fit in the bytes; for "latest", the newest that fit.
_READ = (
    _EPOCH
    + """
local offset = tonumber(redis.call('HGET', KEYS[2], 'offset') or '0')
local out = {epoch, offset}
if ARGV[5] == 'position' then return out end
local most = tonumber(ARGV[8])
local budget = tonumber(ARGV[9])
if ARGV[5] == 'latest' then
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
local since = tonumber(ARGV[6])
if ARGV[7] ~= epoch or since >= offset or offset - since > most then return out end
local got = redis.call('XRANGE', KEYS[1], '0-' .. (since + 1), '0-' .. offset)
if #got ~= offset - since then return out end
for _, entry in ipairs(got) do budget = budget - #entry[2][2] end
if budget < 0 then return out end
for _, entry in ipairs(got) do out[#out + 1] = entry[2][2] end
return out
"""
)


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
        self._state = StoreHealth(log, "history", "history")

    async def start(self) -> None:
        pass

    def _keys(self, room: str) -> list[str]:
        stream = f"{self._prefix}history:{{{room}}}"
        return [stream, stream + ":pos", stream + ":ids"]

    async def _call(self, room: str, script: Any, args: list[Any], known: Position | None = None) -> list[Any]:
        epoch_args = [secrets.token_hex(6), known.epoch if known else "", known.offset if known else 0]
        try:
            result = await script(keys=self._keys(room), args=[*epoch_args, self._position_ms, *args])
        except REDIS_ERRORS as exc:
            raise self._state.unavailable(exc) from None
        self._state.ok()
        return list(result)

    async def append(
        self, room: str, frame: bytes, message_id: str = "", known: Position | None = None
    ) -> tuple[Position, bytes]:
        if not self._bus_ready():
            raise StoreError("history unavailable: the bus is down")
        channel = bus_key(self._prefix, room_channel(room).key, self._sharded)
        publish = "SPUBLISH" if self._sharded else "PUBLISH"
        args = [self._size, self._entries_ms, channel, self._head, frame[:-2], publish, self._room_bytes, message_id]
        epoch, offset, full = await self._call(room, self._append, args, known)
        return Position(int(offset), text(epoch)), bytes(full)

    async def position(self, room: str, known: Position | None = None) -> Position:
        epoch, offset, *_ = await self._call(room, self._read, ["position", 0, "", 0, 0], known)
        return Position(int(offset), text(epoch))

    async def recover(
        self, room: str, since: Position, limit: int, max_bytes: int | None = None, known: Position | None = None
    ) -> Replay:
        args = ["since", since.offset, since.epoch, limit, _unbounded(max_bytes)]
        epoch, offset, *frames = await self._call(room, self._read, args, known)
        current = Position(int(offset), text(epoch))
        verdict = recovery_check(since, current)
        if verdict is not None:
            return Replay(current, [] if verdict else None)
        return Replay(current, [bytes(f) for f in frames] if frames else None)

    async def latest(self, room: str, limit: int, max_bytes: int | None = None) -> tuple[Position, list[bytes]]:
        epoch, offset, *frames = await self._call(room, self._read, ["latest", 0, "", limit, _unbounded(max_bytes)])
        return Position(int(offset), text(epoch)), [bytes(f) for f in frames]

    async def close(self) -> None:
        pass  # the shared client is closed by the gateway
