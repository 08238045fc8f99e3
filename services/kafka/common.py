"""What the Kafka producer and consumer share: client settings, the event envelope, and logging
that reports a broker outage once per state change instead of once per failed connect."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from services.ids import iso_now, uuid7
from services.settings import Settings

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
