"""EventRouter: what a consumed Kafka record becomes, on the IOLoop. Each record is parsed against
the envelope and its type's schema (an invalid one is logged without content, counted and
skipped), suppressed if its eventId was handled before, and handed to the hub: messages to the
room, room changes as membership actions. docs/kafka.md lists the events."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from marshmallow import ValidationError

from schemas.events import (
    CONSUMED,
    MEMBER_REMOVED,
    MESSAGE_CREATED,
    MESSAGE_DELETED,
    MESSAGE_UPDATED,
    ROOM_DELETED,
    ROOM_UPDATED,
    USER_DISCONNECTED,
    USER_TOKENS_REVOKED,
    EnvelopeSchema,
)
from schemas.protocol import event_key
from services.backoff import Backoff
from services.dedupe import DedupeStore
from services.errors import BusError, InvalidRecord, StoreError
from services.hub import RoomHub
from services.metrics import METRICS
from services.settings import Settings

log = logging.getLogger("gateway.kafka.consumer")

REDELIVER_FOR = 60.0  # seconds one event is retried while Redis cannot take it, before it is skipped


class EventRouter:
    def __init__(self, settings: Settings, hub: RoomHub, dedupe: DedupeStore) -> None:
        self.settings = settings
        self.hub = hub
        self.dedupe = dedupe
        self._envelope = EnvelopeSchema()
        self._payloads = {name: schema() for name, schema in CONSUMED.items()}

    async def handle(self, items: list[tuple[str, int, int, bytes | None]]) -> None:
        """Deliver a batch in order. Invalid records are counted and skipped."""
        for topic, partition, offset, value in items:
            where = {"topic": topic, "partition": partition, "offset": offset}
            try:
                event_id, event_type, payload = self._parse(value)
            except InvalidRecord as exc:
                METRICS.kafka_invalid.inc()
                log.warning("kafka record skipped", extra={**where, "reason": str(exc)})
                continue
            try:
                await self._dispatch_through_outage(event_id, event_type, payload, where)
            except Exception:
                log.exception("kafka event failed", extra={**where, "type": event_type})

    async def _dispatch_through_outage(
        self, event_id: str, event_type: str, payload: dict[str, Any], where: dict[str, Any]
    ) -> None:
        """While Redis cannot take the event, try again (the partition waits: its events keep their
        order), for at most REDELIVER_FOR seconds; then it is skipped, logged and counted."""
        deadline = time.monotonic() + REDELIVER_FOR
        backoff = Backoff(0.2, 2.0)
        while True:
            try:
                await self._dispatch(event_id, event_type, payload)
                return
            except (StoreError, BusError) as exc:  # an outage, logged where it is seen: no traceback
                if time.monotonic() > deadline:
                    METRICS.kafka_consumed.labels("failed").inc()
                    log.warning("kafka event skipped", extra={**where, "type": event_type, "error": str(exc)})
                    return
                if backoff.attempt == 0:
                    log.info("kafka event waits for redis", extra={**where, "type": event_type})
            await asyncio.sleep(backoff.next())

    def _parse(self, value: bytes | None) -> tuple[str, str, dict[str, Any]]:
        if not value:
            raise InvalidRecord("empty record")
        try:
            raw = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise InvalidRecord("not JSON") from None
        if not isinstance(raw, dict):
            raise InvalidRecord("not a JSON object")
        try:
            env = self._envelope.load(raw)
        except ValidationError as exc:
            raise InvalidRecord(f"envelope fails schema: {_fields(exc)}") from None
        event_type: str = env["type"]
        schema = self._payloads.get(event_type)
        if schema is None:
            raise InvalidRecord(f"unknown type {event_type[:64]!r}")
        try:
            payload: dict[str, Any] = schema.load(env["payload"])
        except ValidationError as exc:
            raise InvalidRecord(f"{event_type} payload fails schema: {_fields(exc)}") from None
        return env["eventId"], event_type, payload

    async def _dispatch(self, event_id: str, event_type: str, payload: dict[str, Any]) -> None:
        ttl = self.settings.dedupe_ttl
        seen_key = event_key(event_id)
        if await self.dedupe.reserve(seen_key, "1", ttl) is not None:
            METRICS.kafka_consumed.labels("duplicate").inc()
            return
        try:
            await self._deliver(event_type, payload)
        except BaseException:  # cancelled at shutdown too: the record will be redelivered
            await self.dedupe.release(seen_key)  # let a redelivery try again
            raise
        METRICS.kafka_consumed.labels(event_type).inc()

    async def _deliver(self, event_type: str, payload: dict[str, Any]) -> None:
        if event_type == USER_DISCONNECTED:
            await self.hub.control.disconnect(payload["userId"], payload.get("reason"))
            return
        if event_type == USER_TOKENS_REVOKED:
            await self.hub.control.revoke(payload["userId"], payload["issuedBefore"].timestamp())
            return
        room: str = payload["roomId"]
        if event_type == MESSAGE_CREATED:
            delivered, _ = await self.hub.messages.external(_present(payload))
            if not delivered:
                METRICS.kafka_consumed.labels("duplicate").inc()
        elif event_type == MESSAGE_UPDATED:
            await self.hub.deliver(room, "message_updated", _present(payload))
        elif event_type == MESSAGE_DELETED:
            await self.hub.deliver(room, "message_deleted", _present(payload))
        elif event_type == ROOM_UPDATED:
            changes = {k: v for k, v in payload.items() if k != "roomId"}
            await self.hub.deliver(room, "room_update", {"roomId": room, "action": "updated", "changes": changes})
        elif event_type == ROOM_DELETED:
            await self.hub.delete_room(room)
        elif event_type == MEMBER_REMOVED:
            await self.hub.control.remove(room, payload["userId"])


def _present(payload: dict[str, Any]) -> dict[str, Any]:
    """A frame payload: the schema's fields, without nulls (frames omit absent fields)."""
    return {k: v for k, v in payload.items() if v is not None}


def _fields(exc: ValidationError) -> str:
    """Which fields failed, never their values (they may be message content)."""
    messages = exc.messages
    return ", ".join(sorted(str(k) for k in messages)) if isinstance(messages, dict) else "invalid"
