"""Messages: a client's message from its frame to every member, exactly once per dedupeKey.

    claim the dedupeKey -> (Kafka on) produce message.ingest and wait for its delivery report
    -> broadcast -> ack

With Kafka, nothing is broadcast or acked before Kafka has the message (durable ack); if Kafka
fails the sender gets ingest_failed and the key is released, so a retry is processed anew.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from schemas.protocol import broadcast_id_key, dedupe_key
from services import frames
from services.dedupe import PENDING, DedupeStore
from services.errors import ClientError, IngestError
from services.history import Position
from services.hub.ordering import SenderOrder, Turn
from services.ids import iso_now, uuid7
from services.metrics import METRICS
from services.session import Session
from services.settings import Settings

Broadcast = Callable[[str, bytes], Awaitable[Position | None]]


class Ingest(Protocol):
    async def ingest(self, message: dict[str, Any]) -> None:
        """Return once the message.ingest record is acknowledged by Kafka; raise IngestError otherwise."""


class MessagePipeline:
    def __init__(self, settings: Settings, dedupe: DedupeStore, ingest: Ingest | None, broadcast: Broadcast) -> None:
        self.settings = settings
        self.dedupe = dedupe
        self.ingest = ingest
        self._broadcast = broadcast

    async def handle(
        self, session: Session, order: SenderOrder, payload: dict[str, Any], request_id: str | None
    ) -> None:
        turn = order.turn()
        try:
            await self._handle(session, turn, payload, request_id)
        finally:
            await turn.finish()

    async def _handle(self, session: Session, turn: Turn, payload: dict[str, Any], request_id: str | None) -> None:
        room = payload["roomId"]
        key: str | None = payload.get("dedupeKey")
        await turn.my_stage()
        msg_id = uuid7()
        created = iso_now()
        store_key = dedupe_key(session.user_id, room, key) if key is not None else None
        if store_key is not None:
            first = await self._claim(store_key, room, key)
            if first is not None:  # seen before: the same ack, no second broadcast
                ack = {"id": first[0], "roomId": room, "createdAt": first[1], "dedupeKey": key}
                session.send(frames.encode("ack", ack, request_id))
                return
        message: dict[str, Any] = {
            "id": msg_id,
            "roomId": room,
            "senderType": "human",
            "senderId": session.user_id,
            "content": payload["content"],
            "attachments": payload.get("attachments") or [],
            "createdAt": created,
        }
        if key is not None:
            message["dedupeKey"] = key
        try:
            if self.ingest is not None:
                # Set before the ingest: the copy coming back as message.created may be consumed
                # before our delivery report.
                await self.dedupe.put(broadcast_id_key(msg_id), "1", self.settings.dedupe_ttl)
                delivery = asyncio.ensure_future(self.ingest.ingest(message))
                # The produce call runs in that task's first step, before any later message's.
                turn.stage_done()
                await delivery
        except IngestError as exc:
            if store_key is not None:
                await self.dedupe.release(store_key)
            raise ClientError("ingest_failed", f"message not stored: {exc}", roomId=room, dedupeKey=key) from None
        turn.stage_done()
        await turn.my_publish()
        # Past this point the message is accepted (and durable with Kafka): a store failure no
        # longer stops its broadcast.
        if store_key is not None:
            await self.dedupe.put(store_key, f"{msg_id} {created}", self.settings.dedupe_ttl)
        await self._broadcast(room, frames.encode("message", message))
        ack = {"id": msg_id, "roomId": room, "createdAt": created}
        if key is not None:
            ack["dedupeKey"] = key
        session.send(frames.encode("ack", ack, request_id))
        METRICS.messages.inc()

    async def external(self, message: dict[str, Any]) -> tuple[bool, Position | None]:
        """A complete message from elsewhere (a Kafka message.created, the control API) to its room,
        once per id: this gateway may have broadcast it already (its own client's message coming
        back from the persistence side, a redelivered record, a retried API call). (delivered, its
        position in the room's history)."""
        id_key = broadcast_id_key(message["id"])
        if await self.dedupe.reserve(id_key, "1", self.settings.dedupe_ttl) is not None:
            return False, None
        message.setdefault("attachments", [])
        try:
            position = await self._broadcast(message["roomId"], frames.encode("message", message))
        except BaseException:
            await self.dedupe.release(id_key)
            raise
        return True, position

    async def _claim(self, store_key: str, room: str, client_key: str | None) -> tuple[str, str] | None:
        """Reserve a dedupe key. None: ours to process. Else the first message's (id, createdAt),
        waiting while the first send is still in flight (its ingest may yet fail and free the key)."""
        hold_for = self.settings.kafka_message_timeout + 5
        deadline = time.monotonic() + hold_for
        while True:
            existing = await self.dedupe.reserve(store_key, PENDING, hold_for)
            if existing is None:
                return None
            if existing != PENDING:
                first_id, _, first_created = existing.partition(" ")
                return first_id, first_created
            if time.monotonic() > deadline:
                raise ClientError(
                    "ingest_failed",
                    "an earlier send with this dedupeKey is still pending",
                    roomId=room,
                    dedupeKey=client_key,
                )
            await asyncio.sleep(0.05)
