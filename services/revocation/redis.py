"""RedisRevocations: the revocation store shared by every instance.

One hash per user, `{REDIS_PREFIX}revoked:{user}`: field `*` (tokens issued before) or a room id,
value `"<moment> <expires at>"` (Unix seconds). A record expires on its own time, read from its
value; the key lives as long as its longest record (PEXPIRE only ever extends it), and a write
sweeps expired fields once the hash has more than a few, so a user removed from many rooms
over months costs only the records still in force.
"""

from __future__ import annotations

import logging
import time

from services.redis_common import REDIS_ERRORS, RedisClient, StoreHealth, register
from services.revocation import Revocations

log = logging.getLogger("gateway.revocation")

# KEYS[1] the user's hash; ARGV: field, moment, now, expires at, ttl in ms.
_ADD = """
local now = tonumber(ARGV[3])
local moment = tonumber(ARGV[2])
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local m, e = string.match(old, '^(%S+) (%S+)$')
  if m and tonumber(e) > now and tonumber(m) > moment then moment = tonumber(m) end
end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.3f %s', moment, ARGV[4]))
if redis.call('HLEN', KEYS[1]) > 16 then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local e = string.match(all[i + 1], ' (%S+)$')
    if not e or tonumber(e) <= now then redis.call('HDEL', KEYS[1], all[i]) end
  end
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[5]) then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
return 1
"""


class RedisRevocations:
    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._client = client
        self._prefix = prefix + "revoked:"
        self._add = register(client, _ADD)
        self._state = StoreHealth(log, "revocations", "revocation store")

    async def load(self, user: str) -> Revocations:
        try:
            raw = await self._client.hgetall(self._prefix + user)  # type: ignore[misc]
        except REDIS_ERRORS as exc:
            raise self._state.unavailable(exc) from None
        self._state.ok()
        now = time.time()
        found = Revocations()
        for key, value in raw.items():
            try:
                moment, expires = (float(part) for part in value.split(b" "))
            except ValueError:
                continue  # not ours
            if expires > now:
                found.add(key.decode("utf-8", "replace"), moment, expires)
        return found

    async def add(self, user: str, key: str, moment: float, ttl: float) -> None:
        now = time.time()
        args: list[str | int] = [key, f"{moment:.3f}", f"{now:.3f}", f"{now + ttl:.3f}", max(1, int(ttl * 1000))]
        try:
            await self._add(keys=[self._prefix + user], args=args)
        except REDIS_ERRORS as exc:
            raise self._state.unavailable(exc) from None
        self._state.ok()

    async def close(self) -> None:
        return None  # the shared client is closed by the gateway
