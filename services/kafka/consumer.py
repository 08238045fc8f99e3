"""KafkaEvents: message, room and user events from other services, brought to the sockets.

All instances share one consumer group, so each record is consumed by one instance; that instance
hands it to the RoomHub, which brings it to every instance through the bus. The poll loop runs in
its own thread (from a one-thread executor) and passes each batch to the IOLoop, where events.py
decides what each record becomes; only once the IOLoop has handled the batch are its offsets
stored for the next auto-commit (at-least-once).
A record seen twice (redelivery after a crash or rebalance) is suppressed by its eventId, and a
message.created by its message id, in the dedupe store that Redis shares across instances.

A new group starts at the latest offsets. They are resolved explicitly when partitions are
assigned, and committed at once, so once readiness says "assigned" every event produced from then on
is delivered: a session lost before anything arrived (a broker outage of about session.timeout.ms)
resumes from that committed start instead of resolving "latest" again past what was produced
meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from services.dedupe import DedupeStore
from services.hub import RoomHub
from services.kafka.common import client_config, describe_kafka, in_daemon_thread
from services.kafka.events import EventRouter
from services.logs import StateLog
from services.metrics import METRICS
from services.settings import Settings

log = logging.getLogger("gateway.kafka.consumer")

BATCH = 200  # records handed to the IOLoop at once
POLL_TIMEOUT = 0.5  # seconds; also how long stop() may wait for the loop to notice
CALL_TIMEOUT = 5.0  # seconds for the offset look-ups done while partitions are assigned
CLOSE_TIMEOUT = 5.0

UP = "up"
DOWN = "down"
CONNECTING = "connecting"

Partition = tuple[str, int]


class KafkaEvents:
    def __init__(self, settings: Settings, hub: RoomHub, dedupe: DedupeStore) -> None:
        self.settings = settings
        self.router = EventRouter(settings, hub, dedupe)
        self.topics = [
            settings.kafka_topic_message_events,
            settings.kafka_topic_room_events,
            settings.kafka_topic_user_events,
        ]
        self.health = StateLog(log, "kafka consumer", CONNECTING)
        self._consumer: Consumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kafka-consumer")
        self._run: asyncio.Future[None] | None = None
        self._stopping = threading.Event()
        self._assigned = False
        # Next offset to read per assigned partition, as handled (not merely fetched). Committed on
        # revoke, so the partition's next owner resumes exactly here even if nothing arrived yet.
        self._positions: dict[Partition, int] = {}
        self._reported: set[int] = set()  # error codes already logged in the current outage

    def _config(self) -> dict[str, Any]:
        return {
            **client_config(self.settings, "consumer"),
            "group.id": self.settings.kafka_group_id,
            "auto.offset.reset": "latest",
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 1000,
            "enable.auto.offset.store": False,
            # An instance that dies without leaving the group holds its partitions this long.
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 2000,
            "statistics.interval.ms": 2000,
            "stats_cb": self._on_stats,
            "error_cb": self._on_error,
        }

    def start(self) -> None:
        """Subscribe and start the poll loop; never blocks, even with the broker down."""
        self._loop = asyncio.get_running_loop()
        consumer = self._consumer = Consumer(self._config())
        consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        self._run = self._loop.run_in_executor(self._executor, self._poll_loop, consumer, self._loop)

    def ready(self) -> bool:
        """True once the group has given this instance its assignment (possibly empty: more
        instances than partitions), until the assignment is lost."""
        return self._assigned and not self._stopping.is_set()

    @property
    def state(self) -> str:
        return "assigned" if self.ready() else ("waiting-for-assignment" if not self._stopping.is_set() else "stopped")

    # -- poll thread -------------------------------------------------------------------------

    def _poll_loop(self, consumer: Consumer, loop: asyncio.AbstractEventLoop) -> None:
        while not self._stopping.is_set():
            try:
                records = consumer.consume(BATCH, POLL_TIMEOUT)
            except KafkaException as exc:
                self._report_error(exc.args[0])
                self._stopping.wait(1.0)
                continue
            except Exception:  # never let the loop die: log (a bug) and keep polling
                log.exception("kafka consume failed")
                self._stopping.wait(1.0)
                continue
            batch: list[Message] = []
            for record in records:
                err = record.error()
                if err is None:
                    batch.append(record)
                else:
                    self._report_error(err)
            if batch and not self._hand_off(batch, loop):
                return  # stopping mid-hand-off: offsets not stored, the records come again
            if batch:
                self._store(consumer, batch)

    def _hand_off(self, batch: list[Message], loop: asyncio.AbstractEventLoop) -> bool:
        """Run the batch on the IOLoop and wait for it; False if stopped before it finished."""
        items = [(r.topic(), r.partition(), r.offset(), r.value()) for r in batch]
        try:
            done = asyncio.run_coroutine_threadsafe(self.router.handle(items), loop)
        except RuntimeError:  # the loop is closing
            return False
        while True:
            try:
                done.result(timeout=POLL_TIMEOUT)
                return True
            except concurrent.futures.TimeoutError:
                if self._stopping.is_set():
                    done.cancel()
                    return False
            except concurrent.futures.CancelledError:
                return False
            except Exception:  # handle() catches per record; this would be a bug
                log.exception("kafka hand-off failed")
                return True

    def _store(self, consumer: Consumer, batch: list[Message]) -> None:
        """Mark handled records for the next commit (at-least-once)."""
        nxt: dict[Partition, int] = {}
        for record in batch:
            nxt[(record.topic(), record.partition())] = record.offset() + 1
        self._positions.update(nxt)
        try:
            consumer.store_offsets(offsets=[TopicPartition(t, p, o) for (t, p), o in nxt.items()])
        except KafkaException as exc:  # partition revoked meanwhile: its new owner re-reads them
            log.debug("offset store failed", extra={"error": describe_kafka(exc)})

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Start each partition at its committed offset, or at the current end for a new group."""
        deadline = time.monotonic() + CALL_TIMEOUT
        fresh: list[TopicPartition] = []
        while True:
            try:
                starts, fresh = self._start_offsets(consumer, partitions)
                break
            except KafkaException as exc:
                # Right after a topic is created or a leader moves, the look-up can briefly fail.
                if time.monotonic() < deadline and not self._stopping.is_set():
                    time.sleep(0.2)
                    continue
                # Fall back to librdkafka's own (lazy) reset to latest: nothing committed is
                # skipped, only the "latest" point may be a little later than this assignment.
                log.warning("kafka offset look-up failed on assignment", extra={"error": describe_kafka(exc)})
                starts = partitions
                break
        consumer.assign(starts)
        if fresh:
            # The start of a partition that never had a commit, committed now: see the module docstring.
            try:
                consumer.commit(offsets=fresh, asynchronous=False)
            except KafkaException as exc:
                log.warning("kafka commit of the start offsets failed", extra={"error": describe_kafka(exc)})
        self._positions.update({(tp.topic, tp.partition): tp.offset for tp in starts if tp.offset >= 0})
        self._assigned = True
        log.info("kafka consumer assigned", extra={"partitions": len(partitions)})

    @staticmethod
    def _start_offsets(
        consumer: Consumer, partitions: list[TopicPartition]
    ) -> tuple[list[TopicPartition], list[TopicPartition]]:
        """Where each partition starts, and those of them that had nothing committed (to commit)."""
        starts: list[TopicPartition] = consumer.committed(partitions, timeout=CALL_TIMEOUT)
        fresh: list[TopicPartition] = []
        for tp in starts:
            if tp.error is not None:
                raise KafkaException(tp.error)
            if tp.offset < 0:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=CALL_TIMEOUT, cached=False
                )
                tp.offset = high
                fresh.append(TopicPartition(tp.topic, tp.partition, high))
        return starts, fresh

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Commit where this instance got to, including partitions where nothing arrived."""
        revoked = [(tp.topic, tp.partition) for tp in partitions]
        offsets = [
            TopicPartition(t, p, self._positions[(t, p)]) for t, p in revoked if self._positions.get((t, p), -1) >= 0
        ]
        for key in revoked:
            self._positions.pop(key, None)
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                log.debug("commit on revoke failed", extra={"error": describe_kafka(exc)})
        log.info("kafka consumer revoked", extra={"partitions": len(partitions)})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """The group moved on without us (session timeout): not ready until assigned again."""
        self._positions.clear()
        self._assigned = False
        log.warning("kafka consumer lost its assignment", extra={"partitions": len(partitions)})

    def _on_error(self, err: KafkaError) -> None:
        self._report_error(err)

    def _report_error(self, err: KafkaError) -> None:
        """One line per distinct error until the broker is seen again, never one per retry.
        Connection errors are left to the statistics, which show whether any broker is up."""
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            return
        if err.code() not in self._reported:
            self._reported.add(err.code())
            log.warning("kafka consumer error", extra={"error": err.name(), "detail": err.str()})

    def _on_stats(self, raw: str) -> None:
        """librdkafka statistics: broker reachability (for the state log) and consumer lag."""
        try:
            stats = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if any(b.get("state") == "UP" for b in stats.get("brokers", {}).values()):
            if self.health.set(UP):
                self._reported.clear()
        else:
            self.health.set(DOWN, logging.WARNING)
        lag = 0
        for topic in stats.get("topics", {}).values():
            for pid, part in topic.get("partitions", {}).items():
                if pid != "-1" and part.get("consumer_lag", -1) > 0:
                    lag += part["consumer_lag"]
        METRICS.kafka_consumer_lag.set(lag)

    # -- shutdown ----------------------------------------------------------------------------

    async def stop(self) -> None:
        """End the poll loop, then leave the group (committing what was handled), bounded."""
        self._stopping.set()
        if self._run is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._run), POLL_TIMEOUT + 2 * CALL_TIMEOUT + 1)
            except TimeoutError:
                log.warning("kafka poll loop did not stop in time")
        self._executor.shutdown(wait=False)
        consumer, self._consumer = self._consumer, None
        if consumer is not None and not await in_daemon_thread(consumer.close, CLOSE_TIMEOUT):
            log.warning("kafka consumer close timed out", extra={"timeout": CLOSE_TIMEOUT})
        self.health.set("stopped")
