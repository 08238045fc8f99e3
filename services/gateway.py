"""The running gateway: settings plus the services built from them, chosen once at start-up."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import KeysView
from typing import Any

from schemas.protocol import CLOSE_RESTART
from services.admission import Admission, TrustedProxies
from services.auth import TokenVerifier
from services.bus import Bus
from services.bus.memory import MemoryBus, MemoryNetwork
from services.connection import Connections
from services.dedupe import DedupeStore
from services.dedupe.memory import MemoryDedupe
from services.errors import BusError, StartupError, StoreError
from services.history import History
from services.history.memory import MemoryHistory
from services.hooks import Hooks
from services.hub import RoomHub
from services.ids import iso, short_id
from services.kafka.consumer import KafkaEvents
from services.kafka.producer import KafkaIngest
from services.loop_lag import LoopLag
from services.metrics import METRICS
from services.online import OnlineTracker
from services.online.memory import MemoryOnline
from services.presence import PresenceStore
from services.presence.fallback import FallbackPresence
from services.presence.memory import MemoryPresence
from services.redis_common import REDIS_ERRORS, RedisClient, make_client
from services.redis_startup import until_redis_answers
from services.revocation import RevocationStore
from services.revocation.memory import MemoryRevocations
from services.session import FLUSH_GRACE, Session
from services.settings import Settings
from services.sse import Streams

log = logging.getLogger("gateway")

_START_ERRORS: tuple[type[BaseException], ...] = (BusError, StoreError, TimeoutError, *REDIS_ERRORS)


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
        self.admission = Admission(settings.max_connections)
        self.trusted = TrustedProxies(settings.trusted_proxies)
        self.loop_lag = LoopLag(settings.max_loop_lag)  # asked by the listener before accepting
        self.bus: Bus
        self.presence: PresenceStore
        self.dedupe: DedupeStore
        self.redis: RedisClient | None = None
        self.history: History | None = None
        self.revocations: RevocationStore = MemoryRevocations()
        self.online: OnlineTracker | None = None  # presence events: only with Kafka
        self.bus, self.presence, self.dedupe = self._backends(network, dedupe)
        self.hooks = Hooks(settings, self.instance_id)
        self.producer: KafkaIngest | None = None
        self.consumer: KafkaEvents | None = None
        if settings.kafka_enabled:
            self.producer = KafkaIngest(settings, self.instance_id)
            if self.online is None:
                self.online = MemoryOnline(settings.offline_grace)
        self.hub = RoomHub(
            settings,
            self.bus,
            self.presence,
            self.dedupe,
            ingest=self.producer,
            history=self.history,
            revocations=self.revocations,
            online=self.online,
            hooks=self.hooks,
        )
        if settings.kafka_enabled:
            self.consumer = KafkaEvents(settings, self.hub, self.dedupe)
        self.connections = Connections(settings, self.verifier, self.admission, self.hub, self.hooks)
        self.streams = Streams(settings, self.connections.inbound, self.hub)  # the HTTP transport's

    @property
    def sessions(self) -> KeysView[Session]:
        return self.connections.sessions

    @property
    def draining(self) -> bool:
        return self.connections.draining

    def _backends(
        self, network: MemoryNetwork | None, dedupe: DedupeStore | None
    ) -> tuple[Bus, PresenceStore, DedupeStore]:
        """Memory backends for one process; Redis ones (one shared command pool) when REDIS_HOST is set."""
        s = self.settings
        if not s.redis_enabled:
            if s.history_size:
                self.history = MemoryHistory(
                    s.history_size, s.history_ttl, s.history_room_bytes, s.history_memory_bytes
                )
            return MemoryBus(self.instance_id, network), MemoryPresence(), dedupe or MemoryDedupe(s.dedupe_memory_bytes)
        from services.bus.redis import RedisBus
        from services.dedupe.redis import RedisDedupe
        from services.history.redis import RedisHistory
        from services.online.redis import RedisOnline
        from services.presence.redis import RedisPresence
        from services.revocation.redis import RedisRevocations

        self.redis = make_client(s, self.instance_id)
        self.revocations = RedisRevocations(self.redis, s.redis_prefix)
        bus = RedisBus(self.instance_id, s, self.redis)
        presence = RedisPresence(self.redis, s.redis_prefix, self.instance_id, s.presence_ttl, bus.ready)
        if s.kafka_enabled:
            online = RedisOnline(self.redis, s.redis_prefix, self.instance_id, s.offline_grace)
            presence.sweeper.dead_hooks.append(online.purge_instance)
            presence.lapsed_hooks.append(online.reassert)
            self.online = online
        if s.history_size:
            self.history = RedisHistory(
                self.redis,
                s.redis_prefix,
                self.instance_id,
                s.history_size,
                s.history_ttl,
                bus.ready,
                s.history_room_bytes,
            )
        return bus, FallbackPresence(presence), RedisDedupe(self.redis, s.redis_prefix)

    async def start(self) -> None:
        self.loop_lag.start()
        await self._start_hub()
        self._announce_hooks()
        if self.history is not None:
            await self.history.start()
        if self.producer is None or self.consumer is None:
            log.info("kafka disabled (KAFKA_BROKER_URL unset): messages are acked without ingest")
            return
        # Neither waits for the broker: a gateway started during a Kafka outage serves sockets,
        # answers ingest_failed and stays unready until the broker is reachable.
        self.producer.start()
        self.consumer.start()
        # Read at each scrape: the same states /readyz reports, without a hook in either client.
        producer, consumer = self.producer, self.consumer
        METRICS.kafka_up.labels("producer").set_function(lambda: 1.0 if producer.ready() else 0.0)
        METRICS.kafka_up.labels("consumer").set_function(lambda: 1.0 if consumer.ready() else 0.0)
        if self.online is not None:
            await self.online.start(self._announce)
        log.info(
            "kafka enabled",
            extra={
                "brokers": ",".join(self.settings.kafka_brokers),
                "group": self.settings.kafka_group_id,
                "ingest_topic": self.settings.kafka_topic_ingest,
                "event_topics": ",".join(self.consumer.topics),
            },
        )

    def _announce_hooks(self) -> None:
        s = self.settings
        urls = {
            "connect": s.connect_hook_url,
            "join": self.hooks.join_url,
            "publish": s.publish_hook_url,
            "rpc": s.rpc_hook_url,
        }
        if any(urls.values()):
            self.hooks.client.load()
            log.info(
                "backend hooks on",
                extra={"hooks": ",".join(h for h, url in urls.items() if url), "signed": bool(s.hook_secret)},
            )
        if s.join_hook_url and s.room_access != "hook":
            log.warning("JOIN_HOOK_URL is set but ROOM_ACCESS is not `hook`: joins do not ask the backend")

    def _announce(self, event_type: str, user: str, at: float, seen: float | None) -> None:
        """A presence transition (services/online) as a record on KAFKA_TOPIC_PRESENCE_EVENTS."""
        assert self.producer is not None
        payload = {"userId": user, "at": iso(at)}
        if seen is not None:
            payload["lastSeenAt"] = iso(seen)
        if self.producer.emit(self.settings.kafka_topic_presence_events, user, event_type, payload):
            METRICS.presence_events.labels(event_type).inc()

    async def _start_hub(self) -> None:
        """Start the hub and its backends. With Redis: retry until REDIS_CONNECT_TIMEOUT, then
        StartupError (exit 2); with WAIT_FOR_REDIS keep retrying, logging once that we wait."""

        async def started() -> None:
            await self.hub.start()
            await self.streams.start()

        if self.redis is None:
            await started()
            METRICS.bus_up.set(1)  # the in-process bus cannot be down
            return

        async def attempt(budget: float | None) -> None:
            await (asyncio.wait_for(started(), budget) if budget is not None else started())

        try:
            await until_redis_answers(self.settings, log, attempt, _START_ERRORS)
        except ConnectionError as exc:
            await self.bus.close()  # nothing else holds a socket yet
            await self.redis.aclose()
            raise StartupError(str(exc)) from None

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {"bus": self.bus.ready(), "draining": self.draining}
        ok = checks["bus"] and not self.draining
        if self.producer is not None and self.consumer is not None:
            checks["kafka"] = {"producer": self.producer.state, "consumer": self.consumer.state}
            ok = ok and self.producer.ready() and self.consumer.ready()
        else:
            checks["kafka"] = "disabled"
        return ok, checks

    async def drain(self, at_once: bool = False) -> None:
        """SIGTERM: readiness 503 now; after DRAIN_DELAY close sockets with 1012, spread over
        DRAIN_WINDOW so clients reconnect elsewhere without a thundering herd. `at_once` (Ctrl-C)
        skips the delay and the spread."""
        self.connections.draining = True
        delay, window = (0.0, 0.0) if at_once else (self.settings.drain_delay, self.settings.drain_window)
        log.info(
            "draining",
            extra={
                "connections": len(self.sessions),
                "delay": delay,
                "window": window,
                "hint": "signal again (Ctrl-C) to exit at once",
            },
        )
        if self.sessions:  # nobody to hand over: an idle server stops at once
            await asyncio.sleep(delay)
        sessions = [s for s in self.sessions if not s.closed]
        step = window / len(sessions) if sessions else 0.0
        for index, session in enumerate(sessions):
            session.close(CLOSE_RESTART, "server restarting")
            if step and index < len(sessions) - 1:
                await asyncio.sleep(step)
        for session in list(self.sessions):  # upgrades that were still in flight
            session.close(CLOSE_RESTART, "server restarting")
        deadline = time.monotonic() + FLUSH_GRACE + 3
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # Let disconnect handlers clean presence before the stores close.
        await self.hub.settle()

    async def stop(self) -> None:
        # Consumer first (no new events), then the producer's bounded flush, then the stores.
        if self.consumer is not None:
            await self.consumer.stop()
        if self.online is not None:
            await self.online.close()  # its last records go before the producer's flush
        if self.producer is not None:
            await self.producer.stop(self.settings.kafka_flush_timeout)
        self.loop_lag.stop()
        await self.hub.close()
        await self.hooks.close()
        await self.bus.close()
        await self.presence.close()
        await self.dedupe.close()
        await self.revocations.close()
        if self.history is not None:
            await self.history.close()
        if self.redis is not None:
            await self.redis.aclose()
