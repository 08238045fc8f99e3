"""RedisDedupe: the dedupe store shared by every instance.

Keys: `{REDIS_PREFIX}dedupe:{key}` strings with a PX expiry, where the hub's keys are
`dk:{sender}:{roomId}:{dedupeKey}` (names length-prefixed; value "~{id} {createdAt}" while claimed,
"{id} {createdAt}" once stored: services/hub/messages.py)
and `id:{messageId}`.
`reserve` is one script call (SET NX, or the value already there), so of two instances that see
the same (sender, room, dedupeKey) at once exactly one wins, and the other answers with the
winner's ack.
"""

from __future__ import annotations

import logging

from services.redis_common import REDIS_ERRORS, RedisClient, StoreHealth, register

log = logging.getLogger("gateway.dedupe")

_RESERVE = """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))


class RedisDedupe:
    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._client = client
        self._prefix = prefix + "dedupe:"
        self._reserve = register(client, _RESERVE)
        self._state = StoreHealth(log, "dedupe", "dedupe store")

    async def reserve(self, key: str, value: str, ttl: float) -> str | None:
        try:
            existing = await self._reserve(keys=[self._prefix + key], args=[value, _ms(ttl)])
        except REDIS_ERRORS as exc:
            raise self._state.unavailable(exc) from None
        self._state.ok()
        return _text(existing)

    async def put(self, key: str, value: str, ttl: float) -> None:
        try:
            await self._client.set(self._prefix + key, value, px=_ms(ttl))
        except REDIS_ERRORS as exc:
            raise self._state.unavailable(exc) from None
        self._state.ok()

    async def release(self, key: str) -> None:
        try:
            await self._client.delete(self._prefix + key)
        except REDIS_ERRORS as exc:
            raise self._state.unavailable(exc) from None
        self._state.ok()

    async def close(self) -> None:
        return None  # the shared client is closed by the gateway


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
