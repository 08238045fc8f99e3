"""KafkaIngest: the hub's durable ingest. A client message is acked only once Kafka has it.

Each message becomes one `message.ingest` record keyed by roomId (one room's records stay in one
partition, in order). The idempotent producer with acks=all means a delivery report without error
says every in-sync replica has the record exactly once. librdkafka runs its callbacks on whatever
thread polls it, so a dedicated poll thread serves them and hands each result to the IOLoop with
`call_soon_threadsafe`; nothing in the IOLoop ever blocks on Kafka.

The same thread probes the broker (a metadata request every few seconds) so readiness says
whether ingest can work right now, and logs one line per change, not one per failed connect.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from functools import partial
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas.events import MESSAGE_INGEST
from services.errors import IngestError
from services.kafka.common import client_config, describe_kafka, envelope
from services.logs import StateLog
from services.metrics import METRICS
from services.settings import Settings

log = logging.getLogger("gateway.kafka.producer")

POLL_INTERVAL = 0.1  # seconds the poll thread waits for delivery reports per round
PROBE_UP = 5.0  # seconds between broker probes while the broker is reachable
PROBE_DOWN = 1.0  # ... and while it is not, so recovery shows within about a second
PROBE_TIMEOUT = 1.0
# Extra wait past message.timeout.ms: librdkafka reports every record by then, this only guards
# against a report that never comes (a bug, a fatal error) turning into a hang.
REPORT_GRACE = 2.0

UP = "up"
DOWN = "down"
CONNECTING = "connecting"
NO_TOPIC = "topic-missing"
STOPPED = "stopped"


class KafkaIngest:
    def __init__(self, settings: Settings, instance_id: str) -> None:
        self.settings = settings
        self.topic = settings.kafka_topic_ingest
        self.source = f"{settings.kafka_client_id}/{instance_id}"
        self.health = StateLog(log, "kafka producer", CONNECTING)
        self._producer: Producer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._fatal = False
        self._next_probe = 0.0

    def _config(self) -> dict[str, Any]:
        return {
            **client_config(self.settings, "producer"),
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": 5,
            "message.timeout.ms": int(self.settings.kafka_message_timeout * 1000),
            "error_cb": self._on_error,
        }

    def start(self) -> None:
        """Create the producer and its poll thread; never blocks, even with the broker down."""
        self._producer = Producer(self._config())
        self._thread = threading.Thread(target=self._serve, name="kafka-producer-poll", daemon=True)
        self._thread.start()

    def ready(self) -> bool:
        return self.health.state == UP

    @property
    def state(self) -> str:
        return self.health.state

    def in_flight(self) -> int:
        """Records produced but not yet reported (queued or awaiting the broker's ack)."""
        producer = self._producer
        return len(producer) if producer is not None else 0

    # -- ingest (IOLoop) ---------------------------------------------------------------------

    async def ingest(self, message: dict[str, Any]) -> None:
        """Produce message.ingest and return once its delivery report says it is stored."""
        producer = self._producer
        if producer is None or self._stopping.is_set():
            raise IngestError("Kafka producer is not running")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        record = envelope(MESSAGE_INGEST, message, self.source, occurred_at=message["createdAt"])
        started = time.monotonic()
        try:
            producer.produce(
                self.topic,
                value=orjson.dumps(record),
                key=message["roomId"].encode(),
                on_delivery=partial(_report, loop, done),
            )
        except BufferError:
            METRICS.kafka_produce_failures.inc()
            raise IngestError("Kafka producer queue is full") from None
        except KafkaException as exc:
            METRICS.kafka_produce_failures.inc()
            raise IngestError(describe_kafka(exc)) from None
        try:
            await asyncio.wait_for(done, self.settings.kafka_message_timeout + REPORT_GRACE)
        except TimeoutError:
            METRICS.kafka_produce_failures.inc()
            raise IngestError("no delivery report from Kafka") from None
        except IngestError:
            METRICS.kafka_produce_failures.inc()
            raise
        METRICS.kafka_produce_seconds.observe(time.monotonic() - started)

    # -- events (IOLoop) --------------------------------------------------------------------

    def emit(self, topic: str, key: str, event_type: str, payload: dict[str, Any]) -> bool:
        """Produce one event without waiting for its report (presence events: nobody is waiting for
        them). False when it could not even be queued; a failed delivery is counted."""
        producer = self._producer
        if producer is None or self._stopping.is_set():
            return False
        record = envelope(event_type, payload, self.source)
        try:
            producer.produce(topic, value=orjson.dumps(record), key=key.encode(), on_delivery=_count_failure)
        except (BufferError, KafkaException) as exc:
            METRICS.kafka_produce_failures.inc()
            log.warning("kafka event not produced", extra={"type": event_type, "error": str(exc)})
            return False
        return True

    # -- poll thread -------------------------------------------------------------------------

    def _serve(self) -> None:
        """Serve delivery reports and error callbacks; probe the broker; replace a dead producer."""
        while not self._stopping.is_set():
            producer = self._producer
            if producer is None:
                return
            try:
                producer.poll(POLL_INTERVAL)
                if self._fatal:
                    self._replace(producer)
                    continue
                if time.monotonic() >= self._next_probe:
                    self._probe(producer)
                    self._next_probe = time.monotonic() + (PROBE_UP if self.ready() else PROBE_DOWN)
            except Exception:  # a bug here must not silently end delivery reports
                log.exception("kafka producer poll failed")
                self._stopping.wait(1.0)

    def _probe(self, producer: Producer) -> None:
        """A metadata request for the ingest topic: proves the broker answers and the topic exists."""
        try:
            meta = producer.list_topics(self.topic, timeout=PROBE_TIMEOUT)
        except KafkaException as exc:
            self.health.set(DOWN, logging.WARNING, error=describe_kafka(exc))
            return
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None:
            error = topic.error.name() if topic is not None and topic.error is not None else "absent"
            self.health.set(NO_TOPIC, logging.WARNING, topic=self.topic, error=error)
            return
        self.health.set(UP, brokers=len(meta.brokers))

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's global errors (poll thread). Connection errors are retried internally."""
        if err.fatal():
            # An idempotent producer can hit fatal sequence errors; it is unusable afterwards.
            self._fatal = True
            self.health.set(DOWN, logging.ERROR, error=err.name())
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            # Probe now rather than trust it: the report can trail a reconnect that already worked.
            self._next_probe = 0.0

    def _replace(self, old: Producer) -> None:
        """After a fatal error: fail what the old producer holds, continue with a fresh one."""
        log.error("kafka producer fatal error: replacing the producer")
        self._producer = Producer(self._config())
        self._fatal = False
        old.purge()
        old.poll(0)  # runs the purged records' delivery reports: their senders get ingest_failed

    # -- shutdown ----------------------------------------------------------------------------

    async def stop(self, timeout: float) -> int:
        """Flush with a bound; returns (and logs) how many records could not be delivered."""
        producer = self._producer
        self._stopping.set()
        if producer is None:
            return 0
        loop = asyncio.get_running_loop()
        # Flush right away: the poll thread may be inside a probe for a while yet; librdkafka
        # allows polling from both threads and the delivery callback is thread-safe.
        remaining: int = await loop.run_in_executor(None, producer.flush, timeout)
        if self._thread is not None:
            await loop.run_in_executor(None, self._thread.join, PROBE_TIMEOUT + 1)
        if remaining:
            producer.purge()
            producer.poll(0)  # fail the waiting senders now rather than leaving them hanging
            log.warning(
                "kafka producer stopped with undelivered records",
                extra={"undelivered": remaining, "flush_timeout": timeout},
            )
        else:
            log.info("kafka producer flushed and stopped", extra={"undelivered": 0})
        self.health.set(STOPPED)
        self._producer = None
        return remaining


def _report(loop: asyncio.AbstractEventLoop, done: asyncio.Future[None], err: KafkaError | None, _: Message) -> None:
    """Delivery report (poll thread): settle the sender's future on the IOLoop."""
    try:
        loop.call_soon_threadsafe(_settle, done, err)
    except RuntimeError:  # loop already closed: nobody is waiting any more
        pass


def _settle(done: asyncio.Future[None], err: KafkaError | None) -> None:
    if done.done():  # timed out or cancelled meanwhile
        return
    if err is None:
        done.set_result(None)
    else:
        done.set_exception(IngestError(err.str()))


def _count_failure(err: KafkaError | None, _msg: Message) -> None:
    """Delivery report of an emitted event (poll thread): only failures matter."""
    if err is not None:
        METRICS.kafka_produce_failures.inc()
        log.warning("kafka event not delivered", extra={"error": err.name()})
