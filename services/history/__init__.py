"""History: each room's latest entries with their offsets, so a returning client is made whole
(docs/protocol.md, "History and recovery").

An entry is a `message`, `message_updated` or `message_deleted` frame. Appending one gives it
the room's next offset (the first is 1) under the room's epoch, the name of one unbroken history:
a new epoch starts only when the history was lost (memory: a process restart, or the room's
position dropped to stay within HISTORY_MEMORY_BYTES; Redis: flushed, restarted empty, or a
failover to a replica that had not received the last entries). The position (offset, epoch) outlives the entries: a
quiet room keeps it for POSITION_TTL. Each room keeps at most HISTORY_SIZE entries and
HISTORY_ROOM_BYTES of them, the oldest dropped first.

`MemoryHistory` (memory.py) serves one process; `RedisHistory` (redis.py) is shared by every
instance and also publishes each entry on the bus in the same server-side step, so every
instance receives a room's entries in offset order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

POSITION_TTL = 86400.0  # seconds a quiet room keeps its position after its last entry
ENTRY_TYPES = frozenset({"message", "message_updated", "message_deleted"})
_TAIL = b"}}"  # an encoded frame ends with its payload's "}" and the frame's own


@dataclass(frozen=True, slots=True)
class Position:
    offset: int  # the last entry's offset; 0 for a room with no entries yet
    epoch: str


@dataclass(frozen=True, slots=True)
class Replay:
    """What `since` asks for: `entries` (frames, in offset order) when every entry after it is
    held, None when it cannot be recovered."""

    position: Position
    entries: list[bytes] | None


class History(Protocol):
    # True when `append` also publishes the entry to every instance, this one included (Redis):
    # the hub then delivers entries as the bus brings them, never at once.
    publishes: bool

    async def start(self) -> None: ...

    async def append(
        self, room: str, frame: bytes, message_id: str = "", known: Position | None = None
    ) -> tuple[Position, bytes]:
        """Give `frame` (an entry without position) the room's next offset; returns the position
        and the frame with `offset` and `epoch` in its payload. A `message_id` already stored
        returns that entry instead (a retry of a send whose answer was lost). `known`: the last
        position this instance delivered in the room; a history behind it was lost and starts a
        new epoch. StoreError when the history cannot be reached: the entry is then not stored
        (or, cut by the timeout, stored later: the retry with the same id finds it)."""

    async def position(self, room: str, known: Position | None = None) -> Position: ...

    async def recover(
        self, room: str, since: Position, limit: int, max_bytes: int | None = None, known: Position | None = None
    ) -> Replay:
        """The entries after `since` when all of them are held, at most `limit` of them and at most
        `max_bytes` together (else None: REPLAY_BYTES bounds what one join can make us send)."""

    async def latest(self, room: str, limit: int, max_bytes: int | None = None) -> tuple[Position, list[bytes]]:
        """The room's position and its latest entries, oldest first: at most `limit`, and only the
        newest that fit in `max_bytes` together."""

    async def close(self) -> None: ...


def with_position(frame: bytes, offset: int, epoch: str) -> bytes:
    """`frame` with `"offset"` and `"epoch"` last in its payload, spliced into the bytes (the
    Redis script does the same in Lua): the frame is encoded once, never re-parsed."""
    if not frame.endswith(_TAIL):
        raise ValueError("not an encoded frame without requestId")
    return b'%s,"offset":%d,"epoch":"%s"}}' % (frame[:-2], offset, epoch.encode())


def recovery_check(since: Position, current: Position) -> bool | None:
    """True: nothing to replay, recovered. False: cannot be recovered. None: read the entries."""
    if since.epoch != current.epoch or since.offset > current.offset:
        return False
    return True if since.offset == current.offset else None
