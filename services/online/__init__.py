"""Online: a user's announced state across all instances, for the presence events on Kafka
(KAFKA_TOPIC_PRESENCE_EVENTS; docs/kafka.md, "Presence events").

`user.online` when a user not announced online opens a socket anywhere; `user.offline` when a
user announced online has had no socket anywhere for OFFLINE_GRACE seconds. A reconnect within
the grace, or a second socket on another instance, produces nothing. The hub says when a user's
first local socket opens and its last closes (`opened`, `closed`); the tracker decides the
transitions and hands each to `announce` exactly once fleet-wide.

`MemoryOnline` (memory.py) serves one process; `RedisOnline` (redis.py) counts a user's instances
in Redis, where one atomic script per transition lets exactly one instance win the right to emit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

ONLINE = "user.online"
OFFLINE = "user.offline"

# announce(event type, user, at, last seen or None): produce the record.
Announce = Callable[[str, str, float, float | None], None]


class OnlineTracker(Protocol):
    async def start(self, announce: Announce) -> None: ...

    def opened(self, user: str) -> None:
        """The user's first socket on this instance opened."""

    def closed(self, user: str) -> None:
        """The user's last socket on this instance closed."""

    async def close(self) -> None: ...
