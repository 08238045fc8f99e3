"""Dedupe store: remembers (sender, dedupeKey) and already-broadcast message ids for a TTL.

`reserve` is atomic (SET NX in Redis), so of two concurrent first sends only one wins; the
loser reads the winner's record and answers with the same ack.
"""

from __future__ import annotations

from typing import Protocol


class DedupeStore(Protocol):
    """What the hub needs. The Redis one raises StoreError when Redis cannot answer: the message
    is then refused as `unavailable` (services/hub/messages.py)."""

    async def reserve(self, key: str, value: str, ttl: float) -> str | None:
        """Store `value` under `key` unless present. None: reserved for us; else the existing value."""

    async def put(self, key: str, value: str, ttl: float) -> None: ...

    async def release(self, key: str) -> None: ...

    async def close(self) -> None: ...
