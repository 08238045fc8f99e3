"""What the Kafka producer and consumer share: client settings, the event envelope, logging that
reports a broker outage once per state change instead of once per failed connect, and a bounded
wait for librdkafka calls that can hang (`in_daemon_thread`)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from services.ids import iso_now, uuid7
from services.settings import Settings

log = logging.getLogger("gateway.kafka")

ENVELOPE_VERSION = 1


def envelope(event_type: str, payload: dict[str, Any], source: str, occurred_at: str | None = None) -> dict[str, Any]:
    """The one envelope every Kafka event has (docs/kafka.md)."""
    return {
        "eventId": uuid7(),
        "type": event_type,
        "version": ENVELOPE_VERSION,
        "occurredAt": occurred_at or iso_now(),
        "source": source,
        "payload": payload,
    }


class _LibrdkafkaLog:
    """librdkafka's own log lines (one per failed reconnect while a broker is down) go to DEBUG;
    the operator sees our state-change lines instead."""

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(name)

    def log(self, level: int, msg: str, *args: Any) -> None:
        self._log.debug(msg, *args)


def client_config(settings: Settings, role: str) -> dict[str, Any]:
    """Settings common to producer and consumer. Reconnect backoff is capped at 2 s so a broker
    that comes back is used again within seconds, not librdkafka's default 10 s."""
    return {
        "bootstrap.servers": ",".join(settings.kafka_brokers),
        "client.id": settings.kafka_client_id,
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 2000,
        "log.connection.close": False,
        "logger": _LibrdkafkaLog(f"gateway.kafka.{role}.librdkafka"),
    }


def describe_kafka(exc: KafkaException) -> str:
    """librdkafka's one-line reason, for logs and ingest_failed messages."""
    err = exc.args[0] if exc.args else None
    return err.str() if isinstance(err, KafkaError) else str(exc)


async def in_daemon_thread(fn: Callable[[], object], timeout: float) -> bool:
    """Run a blocking call that might hang (librdkafka close with the broker gone) in a daemon
    thread, so it can never keep the process from exiting. True if it finished in time."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def work() -> None:
        try:
            fn()
        except Exception as exc:
            log.debug("kafka close failed", extra={"error": str(exc)})
        try:
            loop.call_soon_threadsafe(_resolve, finished)
        except RuntimeError:  # the loop is gone: nobody waits any more
            pass

    threading.Thread(target=work, name="kafka-close", daemon=True).start()
    try:
        await asyncio.wait_for(finished, timeout)
    except TimeoutError:
        return False
    return True


def _resolve(finished: asyncio.Future[None]) -> None:
    if not finished.done():
        finished.set_result(None)
