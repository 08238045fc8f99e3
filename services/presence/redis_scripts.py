"""The Redis layout of RedisPresence (redis.py): its keys, and its Lua scripts, one atomic step
each, so a count never drifts: join says whether the user is new to the room, leave whether the
user has gone.

Keys (P = REDIS_PREFIX, default `rt:`). A room's keys share the hash tag {room} and an instance's
the tag {instance}, so every script touches one slot of a Redis Cluster (docs/scaling.md):
  P presence:room:{room}              hash  user -> "status\x1fsince"   what presence_state lists
  P presence:count:{room}             hash  user -> live connections      a user leaves when it hits 0
  P presence:order:{room}             zset  user, score 0                 the members in user id order
                                                                          (pages: ZRANGEBYLEX; count: ZCARD)
  P presence:conns:{room}:instance    set   "conn\x1fuser"               an instance's connections there
  P presence:rooms:{instance}         set   rooms the instance has (or lately had) connections in
  P presence:alive:{instance}         string, PX = PRESENCE_TTL           the owner's heartbeat
  P presence:instances                set   instance ids with registrations
  P presence:sweep                    string, short PX                    the sweeper's lock

"""

from __future__ import annotations

SEP = "\x1f"
PURGE_CHUNK = 500  # connections of a dead instance removed per script call (keeps Redis responsive)

# JOIN and LEAVE return {1 if the user is new / gone, users in the room}.
# KEYS: room, count, order, conns (of this instance); ARGV: user, "conn\x1fuser", "status\x1fsince".
JOIN = """
if redis.call('SADD', KEYS[4], ARGV[2]) == 0 then return {0, redis.call('ZCARD', KEYS[3])} end
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
if n == 1 or redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
redis.call('ZADD', KEYS[3], 0, ARGV[1])
if n == 1 then return {1, redis.call('ZCARD', KEYS[3])} end
return {0, redis.call('ZCARD', KEYS[3])}
"""

LEAVE = """
if redis.call('SREM', KEYS[4], ARGV[2]) == 0 then return {0, redis.call('ZCARD', KEYS[3])} end
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
if n <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  return {1, redis.call('ZCARD', KEYS[3])}
end
return {0, redis.call('ZCARD', KEYS[3])}
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

# A dead instance's connections in one room, ARGV[1] at a time. KEYS: room, count, order, conns (of
# the dead instance). Returns {connections of it left there, user1, user2, ...} for users who have gone.
PURGE = """
local members = redis.call('SPOP', KEYS[4], tonumber(ARGV[1]))
local out = {0}
for _, m in ipairs(members) do
  local a = string.find(m, '\\31', 1, true)
  if a then
    local user = string.sub(m, a + 1)
    local n = redis.call('HINCRBY', KEYS[2], user, -1)
    if n <= 0 then
      redis.call('HDEL', KEYS[2], user)
      redis.call('HDEL', KEYS[1], user)
      redis.call('ZREM', KEYS[3], user)
      table.insert(out, user)
    end
  end
end
out[1] = redis.call('SCARD', KEYS[4])
return out
"""


def local_member(room: str, user: str, conn_id: str) -> str:
    """An instance's local name of a connection in a room; in Redis it is `conn\x1fuser` in the room's set."""
    return f"{room}{SEP}{conn_id}{SEP}{user}"


def remote_member(member: str) -> str:
    """`room\x1fconn\x1fuser` -> `conn\x1fuser`, the member of the room's set in Redis."""
    return member.partition(SEP)[2]


class Keys:
    """Every presence key, under the deployment's REDIS_PREFIX."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.instances = f"{prefix}presence:instances"
        self.sweep_lock = f"{prefix}presence:sweep"

    def room(self, room: str) -> tuple[str, str, str]:
        """(users with their status, users with their live connection count, users in order)."""
        p = self.prefix
        return f"{p}presence:room:{{{room}}}", f"{p}presence:count:{{{room}}}", f"{p}presence:order:{{{room}}}"

    def conns(self, room: str, instance: str) -> str:
        return f"{self.prefix}presence:conns:{{{room}}}:{instance}"

    def scripted(self, room: str, instance: str) -> list[str]:
        """The KEYS of JOIN, LEAVE and PURGE: room, count, order, the instance's connections there."""
        return [*self.room(room), self.conns(room, instance)]

    def rooms(self, instance: str) -> str:
        return f"{self.prefix}presence:rooms:{{{instance}}}"

    def alive(self, instance: str) -> str:
        return f"{self.prefix}presence:alive:{{{instance}}}"
