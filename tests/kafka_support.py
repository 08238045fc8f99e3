"""What the Kafka tests share: topics of a test's own, and gateway settings on them (the `brokers`
fixture is in tests/conftest.py)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic


@dataclass(frozen=True)
class Topics:
    ingest: str
    messages: str
    rooms: str
    users: str
    presence: str

    @property
    def all(self) -> list[str]:
        return [self.ingest, self.messages, self.rooms, self.users, self.presence]


PARTITIONS = 3  # of every test topic, as scripts/kafka.sh creates the project's own


def create_topics(admin: AdminClient, names: list[str], partitions: int = PARTITIONS) -> None:
    futures = admin.create_topics([NewTopic(n, partitions, 1) for n in names], operation_timeout=15)
    for fut in futures.values():
        fut.result(timeout=20)
    deadline = time.monotonic() + 15
    while True:  # wait for leaders, so the first produce does not race the controller
        md = admin.list_topics(timeout=5).topics
        if all(
            n in md and md[n].error is None and all(p.leader >= 0 for p in md[n].partitions.values()) for n in names
        ):
            return
        assert time.monotonic() < deadline, f"topics {names} have no leaders"
        time.sleep(0.1)


def kafka_settings(brokers: str, topics: Topics | None = None, **extra: Any) -> dict[str, Any]:
    """Settings overrides for a gateway on `brokers`, with a consumer group of its own test."""
    s: dict[str, Any] = {
        "kafka_brokers": (brokers,),
        "kafka_group_id": f"test-{uuid.uuid4().hex[:10]}",
        "kafka_message_timeout": 5.0,
        "kafka_flush_timeout": 2.0,
    }
    if topics is not None:
        s.update(
            kafka_topic_ingest=topics.ingest,
            kafka_topic_message_events=topics.messages,
            kafka_topic_room_events=topics.rooms,
            kafka_topic_user_events=topics.users,
            kafka_topic_presence_events=topics.presence,
        )
    s.update(extra)
    return s
