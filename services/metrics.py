"""Prometheus metrics, named once here so every module counts into the same series."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from schemas.protocol import TRANSPORTS


class _Metrics:
    def __init__(self) -> None:
        self.connections = Gauge(
            "gateway_connections", "Open connections by transport: websocket, sse (docs/protocol.md)", ["transport"]
        )
        for transport in TRANSPORTS:
            self.connections.labels(transport)  # both series exist from the start, at 0
        self.sse_sends = Counter(
            "gateway_sse_sends_total",
            "POST /sse/send requests by HTTP status and route (local: the session is held here; forwarded: "
            "handed over the bus to the instance holding it)",
            ["status", "route"],
        )
        self.rooms = Gauge("gateway_rooms", "Rooms with at least one local member")
        self.frames_in = Counter("gateway_frames_in_total", "Client frames received", ["type"])
        self.frames_out = Counter(
            "gateway_frames_out_total",
            "Server frames encoded, by type (once per broadcast or reply; see deliveries for per-socket)",
            ["type"],
        )
        self.errors = Counter("gateway_errors_total", "Error frames sent, by code", ["code"])
        self.closes = Counter("gateway_closes_total", "Connections closed by the gateway, by code", ["code"])
        self.auth_failures = Counter("gateway_auth_failures_total", "Upgrades refused with 401")
        self.token_refreshes = Counter(
            "gateway_token_refreshes_total",
            "In-band token refreshes by outcome: ok, invalid, other_user, revoked; the connect hook's re-asks also "
            "not_later (an expiresAt that does not move the deadline)",
            ["outcome"],
        )
        self.revocations = Counter(
            "gateway_revocations_total",
            "Control-plane actions taken here, by kind: disconnect, tokens (revoked), room (member removed)",
            ["kind"],
        )
        self.revoked_upgrades = Counter(
            "gateway_revoked_upgrades_total", "Upgrades refused with 401 for a revoked token (also in auth_failures)"
        )
        self.api_requests = Counter(
            "gateway_api_requests_total", "Control API calls by endpoint and HTTP status", ["endpoint", "status"]
        )
        self.presence_events = Counter(
            "gateway_presence_events_total", "user.online / user.offline records produced, by type", ["type"]
        )
        self.upgrades_refused = Counter(
            "gateway_upgrades_refused_total",
            "Refused by a connection limit: upgrades over MAX_CONNECTIONS (503), public requests over "
            "MAX_CONNECTIONS_PER_IP (429)",
            ["status"],
        )
        self.connections_shed = Counter(
            "gateway_connections_shed_total", "Connections closed before their request, to stay within descriptors"
        )
        self.loop_lag = Gauge("gateway_loop_lag_seconds", "How late the event loop ran a 50 ms timer, last look")
        self.accept_pauses = Counter(
            "gateway_accept_pauses_total",
            "Times accepting paused (descriptor budget reached, EMFILE, or the loop behind by MAX_LOOP_LAG)",
        )
        self.messages = Counter("gateway_messages_total", "Client messages accepted and broadcast")
        self.deliveries = Counter("gateway_deliveries_total", "Frames queued to local sockets by fan-out")
        self.socket_writes = Counter(
            "gateway_socket_writes_total", "Writes to client sockets (one syscall each; several frames may share one)"
        )
        self.queue_overflows = Counter("gateway_outbound_overflows_total", "Slow consumers closed with 4008")
        self.history_appends = Counter("gateway_history_appends_total", "Entries appended to room history")
        self.history_bytes = Gauge(
            "gateway_history_bytes", "Bytes of room history this process holds (without Redis; HISTORY_MEMORY_BYTES)"
        )
        self.history_evictions = Counter(
            "gateway_history_evictions_total",
            "Rooms whose history was dropped to stay within HISTORY_MEMORY_BYTES, by what went: entries, position",
            ["kind"],
        )
        self.recoveries = Counter(
            "gateway_recoveries_total", "Joins with `since`, by outcome (recovered or not)", ["outcome"]
        )
        self.recovered_entries = Counter("gateway_recovered_entries_total", "Entries replayed to recovering joiners")
        self.gap_fills = Counter(
            "gateway_gap_fill_entries_total",
            "Entries the bus did not bring (a gap after an outage or a skipped offset), read from the history "
            "and delivered to this instance's members",
        )
        self.epoch_renewals = Counter(
            "gateway_history_epoch_renewals_total",
            "Rooms whose history epoch changed, by cause: lost (Redis lost the history: restarted empty, "
            "flushed, a failover without the data; counted by each instance with members there), "
            "evicted (the position dropped to stay within HISTORY_MEMORY_BYTES)",
            ["cause"],
        )
        self.unavailable = Counter(
            "gateway_unavailable_total",
            "Messages refused with `unavailable` because Redis could not store them (retryable)",
        )
        self.redis_circuit_open = Gauge("gateway_redis_circuit_open", "1 while the Redis circuit breaker is open")
        self.redis_refused = Counter(
            "gateway_redis_refused_total", "Redis commands refused at once by the open circuit breaker"
        )
        self.bus_publish_failures = Counter("gateway_bus_publish_failures_total", "Bus publishes that failed")
        self.bus_publish_seconds = Histogram(
            "gateway_bus_publish_seconds",
            "Bus publish latency",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 2.5, 5),
        )
        self.bus_reconnects = Counter("gateway_bus_reconnects_total", "Bus (Redis) reconnections")
        self.bus_up = Gauge("gateway_bus_up", "1 while the bus is connected and subscribed")
        self.kafka_up = Gauge(
            "gateway_kafka_up",
            "1 while the Kafka producer reaches a broker (role=producer) or the consumer holds its assignment "
            "(role=consumer); absent with Kafka off",
            ["role"],
        )
        self.kafka_produce_seconds = Histogram(
            "gateway_kafka_produce_seconds",
            "Ingest delivery latency",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.kafka_produce_failures = Counter("gateway_kafka_produce_failures_total", "Ingest records that failed")
        self.kafka_consumed = Counter("gateway_kafka_consumed_total", "Kafka events handled", ["type"])
        self.kafka_invalid = Counter("gateway_kafka_invalid_total", "Kafka records skipped as invalid")
        self.kafka_consumer_lag = Gauge("gateway_kafka_consumer_lag", "Records behind the high watermark")
        self.hook_calls = Counter(
            "gateway_hook_calls_total",
            "Calls to the application's backend (docs/hooks.md) by hook (connect, join, publish, rpc) and "
            "outcome (ok, refused, unavailable; a join cache hit is no call)",
            ["hook", "outcome"],
        )
        self.hook_seconds = Histogram(
            "gateway_hook_seconds",
            "Backend call duration by hook (calls refused at once by HOOK_CONCURRENCY are not timed)",
            ["hook"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.hook_in_flight = Gauge("gateway_hook_in_flight", "Backend calls in flight (at most HOOK_CONCURRENCY)")
        self.frames_waiting = Gauge(
            "gateway_frames_waiting",
            "Client frames handled in the background (messages, presence, rpc, frames waiting for the backend); "
            "at most WAITING_BYTES of them per connection",
        )


METRICS = _Metrics()
