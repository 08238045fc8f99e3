"""The Redis layout of RedisPresence (redis.py): its keys, and its Lua scripts, one atomic step
each, so a count never drifts: join says whether the user is new to the room, leave whether the
user has gone.

Keys (P = REDIS_PREFIX, default `rt:`):
  P presence:room:{room}        hash  user -> "status\\x1fsince"     what presence_state lists
  P presence:count:{room}       hash  user -> live connections        a user leaves when it hits 0
  P presence:order:{room}       zset  user, score 0                   the members in user id order
                                                                       (pages: ZRANGEBYLEX; count: ZCARD)
  P presence:instance:{id}      set   "room\\x1fconn\\x1fuser"         connections owned by an instance
  P presence:alive:{id}         string, PX = PRESENCE_TTL             the owner's heartbeat
  P presence:instances          set   instance ids with registrations
  P presence:sweep              string, short PX                      the sweeper's lock

"""

from __future__ import annotations

SEP = "\x1f"
PURGE_CHUNK = 500  # connections of a dead instance removed per script call (keeps Redis responsive)

# JOIN and LEAVE return {1 if the user is new / gone, users in the room}.
JOIN = """
redis.call('SADD', KEYS[4], ARGV[4])
if redis.call('SADD', KEYS[3], ARGV[2]) == 0 then return {0, redis.call('ZCARD', KEYS[5])} end
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
if n == 1 or redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
redis.call('ZADD', KEYS[5], 0, ARGV[1])
if n == 1 then return {1, redis.call('ZCARD', KEYS[5])} end
return {0, redis.call('ZCARD', KEYS[5])}
"""

LEAVE = """
if redis.call('SREM', KEYS[3], ARGV[2]) == 0 then return {0, redis.call('ZCARD', KEYS[4])} end
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
if n <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
  return {1, redis.call('ZCARD', KEYS[4])}
end
return {0, redis.call('ZCARD', KEYS[4])}
"""

# {users in the room, user1, "status\x1fsince"1, ...}: up to ARGV[2] members from ARGV[1] ("-", or
# "(" and the user id to start after).
PAGE = """
local ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], '+', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {redis.call('ZCARD', KEYS[1])}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
end
return out
"""

STATUS = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
if string.sub(cur, 1, #ARGV[2] + 1) == ARGV[2] .. '\\31' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

REFRESH = """
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return existed
"""

# Returns {connections left, room1, user1, room2, user2, ...} for users who have gone; {-1} when
# the instance turned out to be alive.
PURGE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {-1} end
local members = redis.call('SPOP', KEYS[2], tonumber(ARGV[3]))
local out = {0}
for _, m in ipairs(members) do
  local a = string.find(m, '\\31', 1, true)
  local b = a and string.find(m, '\\31', a + 1, true)
  if b then
    local room = string.sub(m, 1, a - 1)
    local user = string.sub(m, b + 1)
    local base = ARGV[1] .. 'presence:room:' .. room
    local count = ARGV[1] .. 'presence:count:' .. room
    local n = redis.call('HINCRBY', count, user, -1)
    if n <= 0 then
      redis.call('HDEL', count, user)
      redis.call('HDEL', base, user)
      redis.call('ZREM', ARGV[1] .. 'presence:order:' .. room, user)
      table.insert(out, room)
      table.insert(out, user)
    end
  end
end
local left = redis.call('SCARD', KEYS[2])
if left == 0 then redis.call('SREM', KEYS[3], ARGV[2]) end
out[1] = left
return out
"""


class Keys:
    """Every presence key, under the deployment's REDIS_PREFIX."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.instances = f"{prefix}presence:instances"
        self.sweep_lock = f"{prefix}presence:sweep"

    def room(self, room: str) -> tuple[str, str, str]:
        """(users with their status, users with their live connection count, users in order)."""
        p = self.prefix
        return f"{p}presence:room:{room}", f"{p}presence:count:{room}", f"{p}presence:order:{room}"

    def alive(self, instance: str) -> str:
        return f"{self.prefix}presence:alive:{instance}"

    def instance(self, instance: str) -> str:
        return f"{self.prefix}presence:instance:{instance}"
