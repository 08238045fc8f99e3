"""Revocation store: what the control plane holds against a user, shared by every instance.

Two kinds of record, each kept REVOCATION_TTL from when it was made (docs/protocol.md, "Sessions"):

- tokens revoked: the user's tokens issued (`iat`) before a moment are refused at the handshake
  and at `refresh`, and their sockets are closed with 4003;
- removed from a room (a Kafka `room.member_removed`): tokens issued before the removal may not
  join that room again, so a removal is not undone by a reconnect.

A token without `iat` cannot show it is newer: while any such record stands it counts as older.
The handshake reads a user's records once (`load`); the hub keeps them for users with local
sockets and the bus keeps those copies current (services/hub/control.py), so a join costs no
store round trip. `MemoryRevocations` (memory.py) serves one process; `RedisRevocations`
(redis.py) many.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

TOKENS = "*"  # the record key of "tokens issued before"; a room removal's key is the room id


@dataclass(slots=True)
class Revocations:
    """One user's records in force: record key (TOKENS or a room id) -> the moment before which
    tokens are refused (Unix seconds)."""

    before: dict[str, float] = field(default_factory=dict)

    def refuses(self, issued_at: float | None) -> bool:
        """Is a token issued at `issued_at` revoked?"""
        return _older(issued_at, self.before.get(TOKENS))

    def refuses_room(self, room: str, issued_at: float | None) -> bool:
        """May a token issued at `issued_at` not join `room` (its user was removed from it)?"""
        return _older(issued_at, self.before.get(room))

    def add(self, key: str, moment: float) -> None:
        """Keep the later moment: a revocation never narrows an earlier, wider one."""
        if moment > self.before.get(key, float("-inf")):
            self.before[key] = moment


NOTHING = Revocations()  # shared by users with no record: never mutated (callers copy before adding)


def _older(issued_at: float | None, moment: float | None) -> bool:
    if moment is None:
        return False
    return issued_at is None or issued_at < moment


class RevocationStore(Protocol):
    async def load(self, user: str) -> Revocations:
        """The user's records in force; raises StoreError when the store cannot answer."""

    async def add(self, user: str, key: str, moment: float, ttl: float) -> None:
        """Refuse the user's tokens issued before `moment` (in `key`: TOKENS or a room) for `ttl`
        seconds from now; raises StoreError when it could not be stored."""

    async def close(self) -> None: ...
