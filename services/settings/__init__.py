"""Settings: every option is an environment variable and a command-line flag; the flag wins.

One table, the `Settings` dataclass below: each field declares its default, parser and help once
(services/settings/options.py derives the variable and flag names, argparse, the environment
lookup and the README's configuration table from it), so an option cannot be half-added.
`python -m services.settings` prints the README table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.settings.checks import check
from services.settings.options import (
    boolean,
    choice,
    cidrs,
    csv_list,
    host_ports,
    http_url,
    integer,
    number,
    options_of,
    read_values,
    setting,
    text,
)


@dataclass(frozen=True)
class Settings:
    # -- where it listens
    port: int = setting(3000, integer(0, 65535), "listen port (0 picks a free one)")
    host: str | None = setting(
        None, text, "listen address (default 0.0.0.0; 127.0.0.1 while the secret is generated for the run)"
    )
    internal_port: int | None = setting(
        None,
        integer(0, 65535),
        "port serving /metrics and /api/* (and /healthz, /readyz); set: /metrics and /api/* are 404 on PORT",
    )
    # -- tokens
    jwt_secret: str | None = setting(
        None,
        text,
        "HS256 secret (JWT_DEV is an alias); unset: a random secret for this run and a printed dev token",
        aliases=("JWT_DEV",),
    )
    jwt_public_key: str | None = setting(None, text, "PEM public key (or @path to a PEM file) for RS256/ES256 tokens")
    jwt_algorithms: tuple[str, ...] = setting(("HS256",), csv_list, "accepted token algorithms, comma-separated")
    jwt_audience: str | None = setting(None, text, "required `aud` claim")
    jwt_issuer: str | None = setting(None, text, "required `iss` claim")
    jwt_leeway: int = setting(5, integer(0, 300), "seconds of clock skew on exp/nbf")
    token_refresh_notice: float = setting(
        60.0, number(0.0), "seconds before a token's exp that the socket is sent token_expiring (then `refresh`)"
    )
    # -- control plane (docs/protocol.md, "Sessions")
    api_key: str | None = setting(
        None, text, "key of the HTTP control API (/api/*, header `Authorization: apikey KEY`); unset: /api/* is 404"
    )
    revocation_ttl: float = setting(
        7 * 86400.0, number(1.0), "seconds a revocation or a room removal keeps refusing older tokens"
    )
    offline_grace: float = setting(
        10.0, number(0.0), "seconds a user has no socket anywhere before user.offline is produced"
    )
    # -- trying it out
    dev: bool = setting(False, boolean, "development mode: allow short secrets and serve /dev/token", is_switch=True)
    require_secret: bool = setting(
        False,
        boolean,
        "refuse to start without JWT_SECRET or JWT_PUBLIC_KEY unless DEV is on (the container image sets it)",
    )
    demo: bool = setting(True, boolean, "serve the /demo page (--no-demo turns it off)")
    # -- Redis
    redis_host: str | None = setting(
        None, text, "Redis host; unset: in-process bus, presence and dedupe (one instance)"
    )
    redis_port: int = setting(6379, integer(1, 65535), "Redis port")
    redis_cluster_nodes: tuple[tuple[str, int], ...] = setting(
        (), host_ports, "Redis Cluster seed nodes, host:port comma-separated (instead of REDIS_HOST; docs/scaling.md)"
    )
    redis_username: str | None = setting(None, text, "Redis ACL user (with REDIS_PASSWORD)")
    redis_password: str | None = setting(None, text, "Redis password")
    redis_tls: bool = setting(False, boolean, "connect to Redis over TLS", is_switch=True)
    redis_tls_ca: str | None = setting(
        None, text, "PEM file of the CA that signed Redis's certificate (default: the system's CAs)"
    )
    redis_db: int = setting(0, integer(0, 1000), "Redis database number")
    redis_prefix: str = setting("rt:", text, "prefix of every Redis key/channel")
    # Redis not there at start: exit 2 after the timeout, or wait
    redis_connect_timeout: float = setting(10.0, number(0.1), "seconds to reach Redis at start before exit 2")
    wait_for_redis: bool = setting(False, boolean, "keep waiting for Redis at start instead of exiting", is_switch=True)
    # -- Kafka
    kafka_brokers: tuple[str, ...] = setting(
        (), csv_list, "comma-separated Kafka brokers; unset: Kafka disabled", env="KAFKA_BROKER_URL"
    )
    kafka_client_id: str = setting("realtime-gateway", text, "Kafka client id")
    kafka_group_id: str = setting("realtime-gateway", text, "consumer group shared by all instances")
    kafka_topic_ingest: str = setting("chat.messages.ingest", text, "topic for message.ingest")
    kafka_topic_message_events: str = setting("chat.messages.events", text, "topic of message.created/updated/deleted")
    kafka_topic_room_events: str = setting("chat.rooms.events", text, "topic of room.updated/deleted/member_removed")
    kafka_topic_user_events: str = setting(
        "chat.users.events", text, "topic of user.disconnected/tokens_revoked (consumed)"
    )
    kafka_topic_presence_events: str = setting(
        "chat.presence.events", text, "topic user.online/offline are produced to"
    )
    kafka_message_timeout: float = setting(
        10.0, number(0.5), "seconds before an undelivered ingest record fails (ingest_failed)"
    )
    kafka_flush_timeout: float = setting(
        5.0, number(0.0), "seconds the producer may flush on shutdown before undelivered records are dropped"
    )
    # -- browsers, rooms, processes
    allowed_origins: tuple[str, ...] = setting((), csv_list, "comma-separated browser Origin allowlist; unset: any")
    workers: int = setting(1, integer(1, 64), "processes sharing the port; >1 needs Redis")
    room_access: str = setting(
        "open",
        choice("open", "token", "hook"),
        "open: any room; token: only rooms matched by the token's `rooms` claim; hook: JOIN_HOOK_URL decides each join",
    )
    # -- the application's backend (docs/hooks.md)
    connect_hook_url: str | None = setting(
        None, http_url, "asked who a handshake without a token is (cookie, headers); unset: a token is needed"
    )
    join_hook_url: str | None = setting(None, http_url, "asked for every join with ROOM_ACCESS=hook")
    publish_hook_url: str | None = setting(
        None, http_url, "asked for every client message before it is stored or sent: accept, rewrite or reject"
    )
    rpc_hook_url: str | None = setting(None, http_url, "answers `rpc` frames; unset: they get error not_enabled")
    hook_timeout: float = setting(3.0, number(0.05), "seconds one backend call may take (then `unavailable`)")
    hook_concurrency: int = setting(
        200, integer(1, 100000), "backend calls in flight per instance; a call over it is `unavailable` at once"
    )
    hook_answer_bytes: int = setting(
        1048576, integer(1024), "largest backend answer read (a larger one is `unavailable`)"
    )
    hook_secret: str | None = setting(
        None, text, "HMAC-SHA256 key signing every backend call (X-Gateway-Signature); unset: calls are unsigned"
    )
    hook_forward_headers: tuple[str, ...] = setting(
        ("Cookie", "Authorization", "User-Agent", "Origin"),
        csv_list,
        "handshake headers the connect hook receives, comma-separated",
    )
    join_hook_cache_ttl: float = setting(
        0.0, number(0.0), "seconds a join allowed by the hook is reused for that user and room on this instance"
    )
    waiting_bytes: int = setting(
        262144,
        integer(4096),
        "bytes of client frames one connection may have in the background at once (messages, presence, rpc, "
        "frames waiting for the backend), each counted as its length plus 1 KiB for its task; over it: unavailable",
    )
    # -- frames of one connection
    max_content: int = setting(4000, integer(1), "message content length, characters")
    max_message_bytes: int = setting(65536, integer(256), "largest WebSocket frame accepted (close 1009 above it)")
    rate_limit: float = setting(20.0, number(0.1), "client frames per second")
    rate_burst: int = setting(40, integer(1), "client frames allowed in a burst")
    invalid_frame_limit: int = setting(30, integer(1), "rejected frames per minute before close 1008")
    # -- connections
    max_rooms: int = setting(100, integer(1), "rooms per connection")
    max_connections: int = setting(
        10000, integer(1), "open WebSockets per instance (HTTP 503 before the upgrade above it)"
    )
    max_connections_per_ip: int = setting(
        200, integer(1), "open connections per client address, plain HTTP and WebSocket (HTTP 429 above it)"
    )
    trusted_proxies: tuple[str, ...] = setting(
        (), cidrs, "CIDRs whose X-Forwarded-For / X-Real-Ip are believed; unset: the peer address, always"
    )
    max_user_connections: int = setting(20, integer(1), "connections per user (close 4029 above it)")
    outbound_queue_frames: int = setting(1000, integer(1), "frames queued for one slow client before close 4008")
    outbound_queue_bytes: int = setting(
        4 * 1024 * 1024, integer(1024), "bytes queued for one slow client before close 4008"
    )
    # -- presence and dedupe
    typing_ttl: float = setting(6.0, number(0.1), "seconds before typing lapses to online")
    presence_grace: float = setting(
        3.0, number(0.0), "seconds a closed socket's rooms keep its user before offline is announced (0: at once)"
    )
    presence_ttl: float = setting(30.0, number(1.0), "seconds a dead instance's users stay online")
    dedupe_ttl: float = setting(86400.0, number(1.0), "seconds a dedupeKey is remembered")
    dedupe_memory_bytes: int = setting(
        64 * 1024 * 1024, integer(65536), "bytes of dedupe records one process holds without Redis (oldest go first)"
    )
    # -- large rooms (README.md, "Large rooms")
    presence_page: int = setting(100, integer(1, 1000), "members per presence_state page")
    presence_broadcast_limit: int = setting(
        200, integer(0), "users in a room above which per-user presence frames give way to presence_count"
    )
    presence_count_interval: float = setting(2.0, number(0.1), "seconds between presence_count frames of a room")
    # -- history and recovery (README.md, "Recovery")
    history_size: int = setting(1000, integer(0, 100000), "entries kept per room for recovery (0: history off)")
    history_ttl: float = setting(
        600.0, number(1.0), "seconds an entry is kept (without Redis from its own append, with Redis the room's last)"
    )
    history_room_bytes: int = setting(
        1024 * 1024, integer(1024), "bytes of entries kept per room (oldest dropped first), besides HISTORY_SIZE"
    )
    history_memory_bytes: int = setting(
        256 * 1024 * 1024,
        integer(65536),
        "bytes of history one process holds without Redis (least recently used rooms' entries dropped first)",
    )
    replay_bytes: int = setting(
        1024 * 1024, integer(1024), "bytes one history reply or since replay sends (over it: recovered false)"
    )
    # -- keepalive and handshake
    ping_interval: float = setting(25.0, number(0.0), "seconds between WebSocket pings and SSE heartbeats (0: off)")
    ping_timeout: float = setting(20.0, number(1.0), "seconds without a pong before the socket is dropped")
    max_loop_lag: float = setting(
        0.2, number(0.0), "seconds the loop may run late before new connections wait in the listen backlog (0: off)"
    )
    listen_backlog: int = setting(
        4096, integer(16, 65535), "connections the kernel holds before the gateway accepts them (capped by somaxconn)"
    )
    handshake_timeout: float = setting(10.0, number(1.0), "seconds for a client to send its upgrade request")
    http_idle_timeout: float = setting(
        5.0, number(0.5), "seconds a plain HTTP keep-alive connection may wait for its next request"
    )
    request_body_bytes: int = setting(
        64 * 1024, integer(0), "request body bytes read on PORT before authentication (none for an upgrade)"
    )
    sse_send_bytes: int = setting(
        256 * 1024, integer(1024), "largest POST /sse/send body (frames, each at most MAX_MESSAGE_BYTES); over it: 413"
    )
    api_body_bytes: int = setting(
        1024 * 1024, integer(1024), "request body bytes of a control API call, read once its key is checked"
    )
    # -- shutdown (README.md, "Drain on SIGTERM")
    drain_delay: float = setting(5.0, number(0.0), "seconds between SIGTERM (readiness 503) and closing sockets")
    drain_window: float = setting(20.0, number(0.0), "seconds over which open sockets are closed with 1012")
    # -- operations
    gc_threshold: int = setting(
        10000,
        integer(0),
        "allocations between the garbage collector's young passes (Python's own: 700; 0: no automatic collection)",
    )
    uvloop: bool = setting(
        False, boolean, "run on uvloop (installed with the `uvloop` extra; measured in BENCHMARKS.md)", is_switch=True
    )
    log_level: str = setting("info", choice("debug", "info", "warning", "error"), "log level")
    instance_id: str | None = setting(None, text, "instance id (default: random)")
    # Set by server.py when JWT_SECRET (or JWT_DEV) was not given: the secret was generated for this run.
    generated_secret: bool = field(default=False, compare=False)

    @property
    def redis_enabled(self) -> bool:
        return bool(self.redis_host or self.redis_cluster_nodes)

    @property
    def kafka_enabled(self) -> bool:
        return bool(self.kafka_brokers)

    @property
    def dev_tokens(self) -> bool:
        """/dev/token is served only with a generated secret or explicit --dev."""
        return self.dev or self.generated_secret

    @property
    def listen_host(self) -> str:
        """HOST, else loopback while the secret is generated (a laptop default must not hand out
        tokens to the network), else every interface."""
        if self.host:
            return self.host
        return "127.0.0.1" if self.generated_secret else "0.0.0.0"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


OPTIONS = options_of(Settings)


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Flags over environment over defaults; every value validated, errors as ConfigError."""
    settings = Settings(**read_values(OPTIONS, argv, environ))
    check(settings)
    return settings
