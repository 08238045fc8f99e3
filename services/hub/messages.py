"""Messages: a client's message from its frame to every member, exactly once per dedupeKey.

    claim the dedupeKey -> (PUBLISH_HOOK_URL) the backend accepts, rewrites or rejects it
    -> (Kafka on) produce message.ingest and wait for its delivery report
    -> store it in the room's history and publish it (one step with Redis) -> ack

What an ack means (docs/protocol.md): with Kafka, Kafka has the message; with Redis, it is in the
room's history and on its way to every instance. A message that cannot get there is delivered to
nobody and refused: `ingest_failed` (Kafka) or `unavailable` (Redis), both retryable with the same
dedupeKey.

The dedupe record of (sender, room, dedupeKey) is first `~<id> <createdAt>`: claimed, with the id
this message has. A retry that finds it (the attempt was refused, or its answer was lost) takes
that id over, so a refused-then-resent message is one message everywhere: the history's append is
idempotent per id, and the persistence side dedupes Kafka records by id. Once stored the record is
`<id> <createdAt>` and a retry gets the same ack, nothing else. An attempt still running on this
instance is waited for, not taken over. A message the publish hook rejects (`rejected`) or does not
answer for (`unavailable`) releases its claim: nothing of it went anywhere, and the same dedupeKey
sent again is decided anew (docs/hooks.md, "publish").
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Any, Protocol

from schemas.protocol import broadcast_id_key, dedupe_key
from services import frames
from services.breaker import LIVE
from services.dedupe import DedupeStore
from services.errors import BusError, ClientError, HookUnavailable, IngestError, StoreError
from services.history import Position
from services.hooks import Hooks, Refusal
from services.hub.ordering import SenderOrder, Turn
from services.ids import iso_now, uuid7
from services.metrics import METRICS
from services.session import Session
from services.settings import Settings

CLAIMED = "~"  # prefix of a dedupe record whose message is not stored yet


class Ingest(Protocol):
    async def ingest(self, message: dict[str, Any]) -> None:
        """Return once the message.ingest record is acknowledged by Kafka; raise IngestError otherwise."""


class Broadcaster(Protocol):
    """Where an accepted message goes: the room's history and every instance (fanout.py)."""

    async def broadcast_entry(self, room: str, frame: bytes, message_id: str = "") -> Position | None:
        """Its position (None with history off); StoreError or BusError when it cannot get there."""


class MessagePipeline:
    def __init__(
        self, settings: Settings, dedupe: DedupeStore, ingest: Ingest | None, broadcaster: Broadcaster, hooks: Hooks
    ) -> None:
        self.settings = settings
        self.hooks = hooks
        self.dedupe = dedupe
        self.ingest = ingest
        self._broadcaster = broadcaster
        self._running: dict[str, asyncio.Future[None]] = {}  # dedupe records whose attempt runs here

    async def handle(
        self, session: Session, order: SenderOrder, payload: dict[str, Any], request_id: str | None
    ) -> None:
        room, key = payload["roomId"], payload.get("dedupeKey")
        turn = order.turn(room, key)
        live = LIVE.set(True)  # its Redis calls take the live slots (services/breaker.py)
        try:
            await self._handle(session, turn, payload, request_id)
        except ClientError:
            if turn.refused:
                order.owe(room, key)
            raise
        else:
            order.paid(room, key)
        finally:
            LIVE.reset(live)
            await turn.finish()

    async def _handle(self, session: Session, turn: Turn, payload: dict[str, Any], request_id: str | None) -> None:
        room = payload["roomId"]
        key: str | None = payload.get("dedupeKey")
        await turn.my_stage()
        if turn.waits_for_others():  # an earlier message is owed first (ordering.py)
            raise _unavailable(turn, room, key)
        msg_id, created = uuid7(), iso_now()
        store_key = dedupe_key(session.user_id, room, key) if key is not None else None
        if store_key is not None:
            try:
                stored, msg_id, created = await self._claim(store_key, msg_id, created)
            except StoreError:
                raise _unavailable(turn, room, key) from None
            if stored:  # seen before: the same ack, no second broadcast
                session.send(frames.encode("ack", _ack(msg_id, room, created, key), request_id))
                return
        try:
            message = _message(session.user_id, payload, msg_id, created)
            if self.hooks.publish_url is not None:
                await self._moderate(session, turn, message, store_key)
            await self._process(turn, message)
            if store_key is not None:
                # A failure here leaves the record claimed: a retry then finds the stored entry.
                with suppress(StoreError):
                    await self.dedupe.put(store_key, f"{msg_id} {created}", self.settings.dedupe_ttl)
        finally:
            if store_key is not None:
                self._running.pop(store_key).set_result(None)
        session.send(frames.encode("ack", _ack(msg_id, room, created, key), request_id))
        METRICS.messages.inc()

    async def _moderate(self, session: Session, turn: Turn, message: dict[str, Any], store_key: str | None) -> None:
        """The publish hook's word, in the sender's stage (its messages are asked one at a time, in
        order); the message is rewritten in place when the answer says so."""
        room, key = message["roomId"], message.get("dedupeKey")
        asked = {
            name: message[name]
            for name in ("id", "content", "attachments", "createdAt", "dedupeKey")
            if name in message
        }
        try:
            answer = await self.hooks.publish(session, room, asked)
        except HookUnavailable:
            await self._release(store_key)
            turn.refused = True  # retryable: its successors must not overtake it (ordering.py)
            raise ClientError(
                "unavailable", "the backend did not answer; send the message again", roomId=room, dedupeKey=key
            ) from None
        if isinstance(answer, Refusal) or not answer["allow"]:
            reason = answer.error if isinstance(answer, Refusal) else answer.get("reason") or "rejected by the backend"
            await self._release(store_key)
            raise ClientError("rejected", reason, roomId=room, dedupeKey=key, details={"reason": reason})
        for name in ("content", "attachments"):
            if name in answer:
                message[name] = answer[name]

    async def _release(self, store_key: str | None) -> None:
        if store_key is not None:
            with suppress(StoreError):  # a claim Redis keeps is taken over by the resend (module docstring)
                await self.dedupe.release(store_key)

    async def _process(self, turn: Turn, message: dict[str, Any]) -> None:
        room, key = message["roomId"], message.get("dedupeKey")
        if self.ingest is not None:
            try:
                # Set before the ingest: the copy coming back as message.created may be consumed
                # before our delivery report.
                await self.dedupe.put(broadcast_id_key(message["id"]), "1", self.settings.dedupe_ttl)
            except StoreError:
                raise _unavailable(turn, room, key) from None
            delivery = asyncio.ensure_future(self.ingest.ingest(message))
            # The produce call runs in that task's first step, before any later message's.
            turn.stage_done()
            try:
                await delivery
            except IngestError as exc:
                raise ClientError("ingest_failed", f"message not stored: {exc}", roomId=room, dedupeKey=key) from None
        turn.stage_done()
        if await turn.my_publish():  # the one before was refused: this one would overtake it
            raise _unavailable(turn, room, key)
        try:
            await self._broadcaster.broadcast_entry(room, frames.encode("message", message), message["id"])
        except (StoreError, BusError):
            raise _unavailable(turn, room, key) from None

    async def _claim(self, store_key: str, msg_id: str, created: str) -> tuple[bool, str, str]:
        """(stored already, the message's id, its createdAt): a new claim keeps the given id, a
        claimed record's id is taken over (module docstring). StoreError when Redis cannot say."""
        while (running := self._running.get(store_key)) is not None:
            await asyncio.wait([running])
        existing = await self.dedupe.reserve(store_key, f"{CLAIMED}{msg_id} {created}", self.settings.dedupe_ttl)
        if existing is not None:
            first_id, _, first_created = existing.removeprefix(CLAIMED).partition(" ")
            if not existing.startswith(CLAIMED) and first_created:
                return True, first_id, first_created
            if first_created:  # (an older gateway's "pending" record has no id: keep ours)
                msg_id, created = first_id, first_created
        self._running[store_key] = asyncio.get_running_loop().create_future()
        return False, msg_id, created

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
            frame = frames.encode("message", message)
            position = await self._broadcaster.broadcast_entry(message["roomId"], frame, message["id"])
        except BaseException:
            with suppress(StoreError):
                await self.dedupe.release(id_key)  # a retry (the same id) is idempotent in the history
            raise
        return True, position


def _message(sender: str, payload: dict[str, Any], msg_id: str, created: str) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": msg_id,
        "roomId": payload["roomId"],
        "senderType": "human",
        "senderId": sender,
        "content": payload["content"],
        "attachments": payload.get("attachments") or [],
        "createdAt": created,
    }
    if "dedupeKey" in payload:
        message["dedupeKey"] = payload["dedupeKey"]
    return message


def _ack(msg_id: str, room: str, created: str, key: str | None) -> dict[str, Any]:
    ack = {"id": msg_id, "roomId": room, "createdAt": created}
    if key is not None:
        ack["dedupeKey"] = key
    return ack


def _unavailable(turn: Turn, room: str, key: str | None) -> ClientError:
    """Redis could not store the message: retryable with the same dedupeKey (and its successors
    queued behind it are refused too, ordering.py)."""
    turn.refused = True
    METRICS.unavailable.inc()
    return ClientError(
        "unavailable", "message not stored: Redis is unavailable; send it again", roomId=room, dedupeKey=key
    )
