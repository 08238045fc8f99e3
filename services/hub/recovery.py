"""Recovery: what a joiner is told of a room's history, and what it is replayed (docs/protocol.md,
"History and recovery").

The joiner's subscription is live and its frames are held (joins.py) before the history is read,
so every entry is either in what the history returns or among the held frames; the held ones at
or below the position read are dropped at release: no gap and no duplicate at the seam.

A replay or a `history` reply sends at most REPLAY_BYTES of entries: a replay that would need
more answers `recovered: false` (the client reloads from the chat API), a reply leaves out the
oldest. Either costs its sender one token of RATE_LIMIT per 64 KiB (services/ratelimit.py).

A replay may be longer than the joiner's outbound queue (a client closed 4008 missed at least a
queue's worth): it is paced, a quarter of the bound at a time as the socket takes it, while the
room's live frames wait in the joiner's hold (bounded like the queue).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.errors import ClientError, StoreError
from services.history import History, Position, recovery_check
from services.hub.fanout import Fanout
from services.metrics import METRICS
from services.session import Session
from services.settings import Settings

log = logging.getLogger("gateway.hub")


@dataclass
class JoinAnswer:
    """The fields the `joined` reply adds, the entries to replay after it, and the position the
    held frames are filtered against."""

    fields: dict[str, Any] = field(default_factory=dict)
    replay: list[bytes] = field(default_factory=list)
    seen: Position | None = None


class Recovery:
    def __init__(self, settings: Settings, history: History | None, fanout: Fanout) -> None:
        self._history = history
        self._fanout = fanout
        self._most_frames = settings.history_size
        self._most_bytes = settings.replay_bytes
        self._chunk_frames = max(1, settings.outbound_queue_frames // 4)
        self._chunk_bytes = max(1, settings.outbound_queue_bytes // 4)

    async def join(self, room: str, since: dict[str, Any] | None, member_already: bool) -> JoinAnswer:
        answer = JoinAnswer()
        if self._history is None:
            if since is not None:
                answer.fields["recovered"] = False
            return answer
        asked = Position(since["offset"], since["epoch"]) if since is not None else None
        try:
            if asked is None or member_already:
                current = await self._history.position(room)
                entries: list[bytes] | None = [] if asked is not None and recovery_check(asked, current) else None
            else:
                result = await self._history.recover(room, asked, self._most_frames, self._most_bytes)
                current, entries = result.position, result.entries
        except StoreError:
            if asked is None:
                return answer  # joined without a position: its first entry will say it
            # Not `recovered: false`: the history may well be whole, and the client's retry (the
            # error is retryable) recovers once Redis answers.
            raise ClientError("unavailable", "history unavailable (Redis), try again", roomId=room) from None
        answer.fields.update(offset=current.offset, epoch=current.epoch)
        answer.seen = current
        if asked is not None:
            answer.fields["recovered"] = entries is not None
            METRICS.recoveries.labels("recovered" if entries is not None else "not_recovered").inc()
            if entries:
                answer.replay = entries
                METRICS.recovered_entries.inc(len(entries))
        return answer

    async def replay(self, session: Session, entries: list[bytes]) -> None:
        """Send `entries` in order, paced to what the session's socket takes."""
        chunk: list[bytes] = []
        size = 0
        for frame in entries:
            if chunk and (len(chunk) >= self._chunk_frames or size + len(frame) > self._chunk_bytes):
                await self._send_chunk(session, chunk, size)
                chunk, size = [], 0
            chunk.append(frame)
            size += len(frame)
        if chunk:
            await self._send_chunk(session, chunk, size)

    async def _send_chunk(self, session: Session, chunk: list[bytes], size: int) -> None:
        await session.room_for(len(chunk), min(size, self._chunk_bytes))
        for frame in chunk:
            session.send(frame)

    async def history(self, room: str, limit: int, request_id: str | None) -> bytes:
        """The `history` reply: the room's position and latest entries, oldest first, only the
        newest that fit in REPLAY_BYTES. The stored frames are `{type, payload}` already, so the
        reply is assembled without parsing them."""
        payload: dict[str, Any] = {"roomId": room}
        entries: list[bytes] = []
        if self._history is not None:
            try:
                position, entries = await self._history.latest(room, limit, self._most_bytes)
            except StoreError:
                raise ClientError("unavailable", "history unavailable (Redis), try again", roomId=room) from None
            payload.update(offset=position.offset, epoch=position.epoch)
        head = orjson.dumps({"type": "history", "payload": payload})[:-2]
        tail = b"}" if request_id is None else b',"requestId":' + orjson.dumps(request_id) + b"}"
        METRICS.frames_out.labels("history").inc()
        return head + b',"entries":[' + b",".join(entries) + b"]}" + tail

    def catch_up(self) -> None:
        """After the bus was away: every local room reads the entries it missed meanwhile (fanout.py)."""
        if self._history is not None:
            self._fanout.catch_up()
