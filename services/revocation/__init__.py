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

import time
from dataclasses import dataclass, field
from typing import Protocol

TOKENS = "*"  # the record key of "tokens issued before"; a room removal's key is the room id


@dataclass(slots=True)
class Revocations:
    """One user's records: record key (TOKENS or a room id) -> (the moment before which tokens are
    refused, when the record lapses), Unix seconds. A lapsed record refuses nothing."""

    before: dict[str, tuple[float, float]] = field(default_factory=dict)

    def refuses(self, issued_at: float | None) -> bool:
        """Is a token issued at `issued_at` revoked?"""
        return self._refuses(TOKENS, issued_at)

    def refuses_room(self, room: str, issued_at: float | None) -> bool:
        """May a token issued at `issued_at` not join `room` (its user was removed from it)?"""
        return self._refuses(room, issued_at)

    def _refuses(self, key: str, issued_at: float | None) -> bool:
        record = self.before.get(key)
        return record is not None and record[1] > time.time() and older(issued_at, record[0])

    def add(self, key: str, moment: float, expires: float) -> None:
        """Keep the later moment and the later lapse: a revocation never narrows an earlier one."""
        old = self.before.get(key)
        if old is None:
            self.before[key] = (moment, expires)
        else:
            self.before[key] = (max(moment, old[0]), max(expires, old[1]))

    def merge(self, other: Revocations) -> None:
        for key, (moment, expires) in other.before.items():
            self.add(key, moment, expires)


NOTHING = Revocations()  # shared by users with no record: never mutated (callers copy before adding)


def older(issued_at: float | None, moment: float) -> bool:
    """Was a token issued at `issued_at` issued before `moment`? One without `iat` counts as older."""
    return issued_at is None or issued_at < moment


class RevocationStore(Protocol):
    async def load(self, user: str) -> Revocations:
        """The user's records in force; raises StoreError when the store cannot answer."""

    async def add(self, user: str, key: str, moment: float, ttl: float) -> None:
        """Refuse the user's tokens issued before `moment` (in `key`: TOKENS or a room) for `ttl`
        seconds from now; raises StoreError when it could not be stored."""

    async def close(self) -> None: ...
