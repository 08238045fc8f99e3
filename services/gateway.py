"""The running gateway: settings plus the services built from them, chosen once at start-up."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from schemas.client import payload_schemas
from services.auth import TokenVerifier
from services.bus import Bus, MemoryBus, MemoryNetwork
from services.dedupe import DedupeStore, MemoryDedupe
from services.hub import RoomHub
from services.ids import short_id
from services.kafka_consumer import KafkaEvents
from services.kafka_producer import KafkaIngest
from services.presence import MemoryPresence, PresenceStore
from services.session import CLOSE_RESTART, FLUSH_GRACE, Session
from services.settings import Settings

log = logging.getLogger("gateway")


class StartupError(Exception):
    """A dependency the configuration asks for is not usable at start (exit code 2)."""


class Gateway:
    def __init__(
        self,
        settings: Settings,
        network: MemoryNetwork | None = None,
        dedupe: DedupeStore | None = None,
    ) -> None:
        """`network` and `dedupe` are a test hook: in-process gateways given the same ones behave
        like instances sharing Redis (one bus, one dedupe store)."""
        self.settings = settings
        self.instance_id = settings.instance_id or short_id()
        self.verifier = TokenVerifier(settings)
        self.bus: Bus
        self.presence: PresenceStore
        self.dedupe: DedupeStore
        self.bus, self.presence, self.dedupe = self._backends(network, dedupe)
        self.payload_schemas = payload_schemas(settings.max_content)
        self.producer: KafkaIngest | None = None
        self.consumer: KafkaEvents | None = None
        if settings.kafka_enabled:
            self.producer = KafkaIngest(settings, self.instance_id)
        self.hub = RoomHub(settings, self.bus, self.presence, self.dedupe, ingest=self.producer)
        if settings.kafka_enabled:
            self.consumer = KafkaEvents(settings, self.hub, self.dedupe)
        self.sessions: set[Session] = set()
        self.draining = False

    def _backends(
        self, network: MemoryNetwork | None, dedupe: DedupeStore | None
    ) -> tuple[Bus, PresenceStore, DedupeStore]:
        return MemoryBus(self.instance_id, network), MemoryPresence(), dedupe or MemoryDedupe()

    async def start(self) -> None:
        await self.hub.start()
        if self.producer is None or self.consumer is None:
            log.info("kafka disabled (KAFKA_BROKER_URL unset): messages are acked without ingest")
            return
        # Neither waits for the broker: a gateway started during a Kafka outage serves sockets,
        # answers ingest_failed and stays unready until the broker is reachable.
        self.producer.start()
        self.consumer.start()
        log.info(
            "kafka enabled",
            extra={
                "brokers": ",".join(self.settings.kafka_brokers),
                "group": self.settings.kafka_group_id,
                "ingest_topic": self.settings.kafka_topic_ingest,
                "event_topics": ",".join(self.consumer.topics),
            },
        )

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {"bus": self.bus.ready(), "draining": self.draining}
        ok = checks["bus"] and not self.draining
        if self.producer is not None and self.consumer is not None:
            checks["kafka"] = {"producer": self.producer.state, "consumer": self.consumer.state}
            ok = ok and self.producer.ready() and self.consumer.ready()
        else:
            checks["kafka"] = "disabled"
        return ok, checks

    async def drain(self) -> None:
        """SIGTERM: readiness 503 now; after DRAIN_DELAY close sockets with 1012, spread over
        DRAIN_WINDOW so clients reconnect elsewhere without a thundering herd."""
        self.draining = True
        log.info(
            "draining",
            extra={
                "connections": len(self.sessions),
                "delay": self.settings.drain_delay,
                "window": self.settings.drain_window,
            },
        )
        await asyncio.sleep(self.settings.drain_delay)
        sessions = list(self.sessions)
        step = self.settings.drain_window / len(sessions) if sessions else 0.0
        for session in sessions:
            session.close(CLOSE_RESTART, "server restarting")
            if step:
                await asyncio.sleep(step)
        deadline = time.monotonic() + FLUSH_GRACE + 3
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # Let disconnect handlers clean presence before the stores close.
        await self.hub.settle()

    async def stop(self) -> None:
        # Consumer first (no new events), then the producer's bounded flush, then the stores.
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop(self.settings.kafka_flush_timeout)
        await self.hub.close()
        await self.bus.close()
        await self.presence.close()
        await self.dedupe.close()
