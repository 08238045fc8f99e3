"""Settings: every option is an environment variable and a command-line flag; the flag wins.

One table (`OPTIONS`) drives argparse, the environment lookup, validation and the README's
configuration section, so a new option cannot be half-added.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from services.admission import parse_networks
from services.errors import ConfigError


def _int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
        if value < lo or (hi is not None and value > hi):
            bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise ValueError(f"must be {bound}, got {value}")
        return value

    return parse


def _float(lo: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if value < lo:
            raise ValueError(f"must be >= {lo}, got {value}")
        return value

    return parse


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _cidrs(raw: str) -> tuple[str, ...]:
    specs = _csv(raw)
    parse_networks(specs)  # raises ValueError naming the bad entry
    return specs


def _text(raw: str) -> str:
    return raw.strip()


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


@dataclass(frozen=True)
class Option:
    name: str  # attribute on Settings
    env: str
    flag: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    is_switch: bool = False  # flag takes no value (--dev); its env var still takes true/false
    aliases: tuple[str, ...] = ()  # older environment names, read when `env` is unset


OPTIONS: tuple[Option, ...] = (
    Option("port", "PORT", "--port", _int(0, 65535), 3000, "listen port (0 picks a free one)"),
    Option(
        "host",
        "HOST",
        "--host",
        _text,
        None,
        "listen address (default 0.0.0.0; 127.0.0.1 while the secret is generated for the run)",
    ),
    Option(
        "internal_port",
        "INTERNAL_PORT",
        "--internal-port",
        _int(0, 65535),
        None,
        "port serving /metrics (and /healthz, /readyz) only; set: /metrics is 404 on PORT",
    ),
    Option(
        "jwt_secret",
        "JWT_SECRET",
        "--jwt-secret",
        _text,
        None,
        "HS256 secret (JWT_DEV is an alias); unset: a random secret for this run and a printed dev token",
        aliases=("JWT_DEV",),
    ),
    Option(
        "jwt_public_key",
        "JWT_PUBLIC_KEY",
        "--jwt-public-key",
        _text,
        None,
        "PEM public key (or @path to a PEM file) for RS256/ES256 tokens",
    ),
    Option(
        "jwt_algorithms",
        "JWT_ALGORITHMS",
        "--jwt-algorithms",
        _csv,
        ("HS256",),
        "accepted token algorithms, comma-separated",
    ),
    Option("jwt_audience", "JWT_AUDIENCE", "--jwt-audience", _text, None, "required `aud` claim"),
    Option("jwt_issuer", "JWT_ISSUER", "--jwt-issuer", _text, None, "required `iss` claim"),
    Option("jwt_leeway", "JWT_LEEWAY", "--jwt-leeway", _int(0, 300), 5, "seconds of clock skew on exp/nbf"),
    Option(
        "dev",
        "DEV",
        "--dev",
        _bool,
        False,
        "development mode: allow short secrets and serve /dev/token",
        is_switch=True,
    ),
    Option("demo", "DEMO", "--demo", _bool, True, "serve the /demo page (--no-demo turns it off)"),
    Option(
        "redis_host",
        "REDIS_HOST",
        "--redis-host",
        _text,
        None,
        "Redis host; unset: in-process bus, presence and dedupe (one instance)",
    ),
    Option("redis_port", "REDIS_PORT", "--redis-port", _int(1, 65535), 6379, "Redis port"),
    Option("redis_password", "REDIS_PASSWORD", "--redis-password", _text, None, "Redis password"),
    Option("redis_db", "REDIS_DB", "--redis-db", _int(0, 1000), 0, "Redis database number"),
    Option("redis_prefix", "REDIS_PREFIX", "--redis-prefix", _text, "rt:", "prefix of every Redis key/channel"),
    Option(
        "redis_connect_timeout",
        "REDIS_CONNECT_TIMEOUT",
        "--redis-connect-timeout",
        _float(0.1),
        10.0,
        "seconds to reach Redis at start before exit 2",
    ),
    Option(
        "wait_for_redis",
        "WAIT_FOR_REDIS",
        "--wait-for-redis",
        _bool,
        False,
        "keep waiting for Redis at start instead of exiting",
        is_switch=True,
    ),
    Option(
        "kafka_brokers",
        "KAFKA_BROKER_URL",
        "--kafka-brokers",
        _csv,
        (),
        "comma-separated Kafka brokers; unset: Kafka disabled",
    ),
    Option(
        "kafka_client_id",
        "KAFKA_CLIENT_ID",
        "--kafka-client-id",
        _text,
        "realtime-gateway",
        "Kafka client id",
    ),
    Option(
        "kafka_group_id",
        "KAFKA_GROUP_ID",
        "--kafka-group-id",
        _text,
        "realtime-gateway",
        "consumer group shared by all instances",
    ),
    Option(
        "kafka_topic_ingest",
        "KAFKA_TOPIC_INGEST",
        "--kafka-topic-ingest",
        _text,
        "chat.messages.ingest",
        "topic for message.ingest",
    ),
    Option(
        "kafka_topic_message_events",
        "KAFKA_TOPIC_MESSAGE_EVENTS",
        "--kafka-topic-message-events",
        _text,
        "chat.messages.events",
        "topic of message.created/updated/deleted",
    ),
    Option(
        "kafka_topic_room_events",
        "KAFKA_TOPIC_ROOM_EVENTS",
        "--kafka-topic-room-events",
        _text,
        "chat.rooms.events",
        "topic of room.updated/deleted/member_removed",
    ),
    Option(
        "kafka_message_timeout",
        "KAFKA_MESSAGE_TIMEOUT",
        "--kafka-message-timeout",
        _float(0.5),
        10.0,
        "seconds before an undelivered ingest record fails (ingest_failed)",
    ),
    Option(
        "kafka_flush_timeout",
        "KAFKA_FLUSH_TIMEOUT",
        "--kafka-flush-timeout",
        _float(0.0),
        5.0,
        "seconds the producer may flush on shutdown before undelivered records are dropped",
    ),
    Option(
        "allowed_origins",
        "ALLOWED_ORIGINS",
        "--allowed-origins",
        _csv,
        (),
        "comma-separated browser Origin allowlist; unset: any",
    ),
    Option("workers", "WORKERS", "--workers", _int(1, 64), 1, "processes sharing the port; >1 needs Redis"),
    Option(
        "room_access",
        "ROOM_ACCESS",
        "--room-access",
        _choice("open", "token"),
        "open",
        "open: any room; token: only rooms matched by the token's `rooms` claim",
    ),
    Option("max_content", "MAX_CONTENT", "--max-content", _int(1), 4000, "message content length, characters"),
    Option(
        "max_message_bytes",
        "MAX_MESSAGE_BYTES",
        "--max-message-bytes",
        _int(256),
        65536,
        "largest WebSocket frame accepted (close 1009 above it)",
    ),
    Option("rate_limit", "RATE_LIMIT", "--rate-limit", _float(0.1), 20.0, "client frames per second"),
    Option("rate_burst", "RATE_BURST", "--rate-burst", _int(1), 40, "client frames allowed in a burst"),
    Option(
        "invalid_frame_limit",
        "INVALID_FRAME_LIMIT",
        "--invalid-frame-limit",
        _int(1),
        30,
        "rejected frames per minute before close 1008",
    ),
    Option("max_rooms", "MAX_ROOMS", "--max-rooms", _int(1), 100, "rooms per connection"),
    Option(
        "max_connections",
        "MAX_CONNECTIONS",
        "--max-connections",
        _int(1),
        10000,
        "open WebSockets per instance (HTTP 503 before the upgrade above it)",
    ),
    Option(
        "max_connections_per_ip",
        "MAX_CONNECTIONS_PER_IP",
        "--max-connections-per-ip",
        _int(1),
        200,
        "open WebSockets per client address (HTTP 429 above it)",
    ),
    Option(
        "trusted_proxies",
        "TRUSTED_PROXIES",
        "--trusted-proxies",
        _cidrs,
        (),
        "CIDRs whose X-Forwarded-For / X-Real-Ip are believed; unset: the peer address, always",
    ),
    Option(
        "max_user_connections",
        "MAX_USER_CONNECTIONS",
        "--max-user-connections",
        _int(1),
        20,
        "connections per user (close 4029 above it)",
    ),
    Option(
        "outbound_queue_frames",
        "OUTBOUND_QUEUE_FRAMES",
        "--outbound-queue-frames",
        _int(1),
        1000,
        "frames queued for one slow client before close 4008",
    ),
    Option(
        "outbound_queue_bytes",
        "OUTBOUND_QUEUE_BYTES",
        "--outbound-queue-bytes",
        _int(1024),
        4 * 1024 * 1024,
        "bytes queued for one slow client before close 4008",
    ),
    Option("typing_ttl", "TYPING_TTL", "--typing-ttl", _float(0.1), 6.0, "seconds before typing lapses to online"),
    Option(
        "presence_ttl",
        "PRESENCE_TTL",
        "--presence-ttl",
        _float(1.0),
        30.0,
        "seconds a dead instance's users stay online",
    ),
    Option("dedupe_ttl", "DEDUPE_TTL", "--dedupe-ttl", _float(1.0), 86400.0, "seconds a dedupeKey is remembered"),
    Option(
        "ping_interval",
        "PING_INTERVAL",
        "--ping-interval",
        _float(0.0),
        25.0,
        "seconds between WebSocket pings (0: off)",
    ),
    Option(
        "ping_timeout",
        "PING_TIMEOUT",
        "--ping-timeout",
        _float(1.0),
        20.0,
        "seconds without a pong before the socket is dropped",
    ),
    Option(
        "handshake_timeout",
        "HANDSHAKE_TIMEOUT",
        "--handshake-timeout",
        _float(1.0),
        10.0,
        "seconds for a client to send its upgrade request",
    ),
    Option(
        "drain_delay",
        "DRAIN_DELAY",
        "--drain-delay",
        _float(0.0),
        5.0,
        "seconds between SIGTERM (readiness 503) and closing sockets",
    ),
    Option(
        "drain_window",
        "DRAIN_WINDOW",
        "--drain-window",
        _float(0.0),
        20.0,
        "seconds over which open sockets are closed with 1012",
    ),
    Option(
        "log_level",
        "LOG_LEVEL",
        "--log-level",
        _choice("debug", "info", "warning", "error"),
        "info",
        "log level",
    ),
    Option("instance_id", "INSTANCE_ID", "--instance-id", _text, None, "instance id (default: random)"),
)


@dataclass(frozen=True)
class Settings:
    port: int = 3000
    host: str | None = None
    internal_port: int | None = None
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: int = 5
    dev: bool = False
    demo: bool = True
    redis_host: str | None = None
    redis_port: int = 6379
    redis_password: str | None = None
    redis_db: int = 0
    redis_prefix: str = "rt:"
    redis_connect_timeout: float = 10.0
    wait_for_redis: bool = False
    kafka_brokers: tuple[str, ...] = ()
    kafka_client_id: str = "realtime-gateway"
    kafka_group_id: str = "realtime-gateway"
    kafka_topic_ingest: str = "chat.messages.ingest"
    kafka_topic_message_events: str = "chat.messages.events"
    kafka_topic_room_events: str = "chat.rooms.events"
    kafka_message_timeout: float = 10.0
    kafka_flush_timeout: float = 5.0
    allowed_origins: tuple[str, ...] = ()
    workers: int = 1
    room_access: str = "open"
    max_content: int = 4000
    max_message_bytes: int = 65536
    rate_limit: float = 20.0
    rate_burst: int = 40
    invalid_frame_limit: int = 30
    max_rooms: int = 100
    max_connections: int = 10000
    max_connections_per_ip: int = 200
    trusted_proxies: tuple[str, ...] = ()
    max_user_connections: int = 20
    outbound_queue_frames: int = 1000
    outbound_queue_bytes: int = 4 * 1024 * 1024
    typing_ttl: float = 6.0
    presence_ttl: float = 30.0
    dedupe_ttl: float = 86400.0
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    handshake_timeout: float = 10.0
    drain_delay: float = 5.0
    drain_window: float = 20.0
    log_level: str = "info"
    instance_id: str | None = None
    # Set by server.py when JWT_SECRET (or JWT_DEV) was not given: the secret was generated for this run.
    generated_secret: bool = field(default=False, compare=False)

    @property
    def redis_enabled(self) -> bool:
        return bool(self.redis_host)

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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _build_parser() -> _Parser:
    parser = _Parser(prog="server.py", description="Realtime Gateway: WebSocket gateway for chat.")
    for opt in OPTIONS:
        if opt.is_switch or opt.parse is _bool:
            parser.add_argument(
                opt.flag,
                dest=opt.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{opt.help} [env {opt.env}]",
            )
        else:
            parser.add_argument(
                opt.flag,
                dest=opt.name,
                default=None,
                metavar=opt.env,
                help=f"{opt.help} [env {opt.env}, default {opt.default}]",
            )
    return parser


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Flags over environment over defaults; every value validated, errors as ConfigError."""
    env = os.environ if environ is None else environ
    args = vars(_build_parser().parse_args(list(argv) if argv is not None else None))
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        raw = args.get(opt.name)
        source = opt.flag
        if raw is None:
            source = next((name for name in (opt.env, *opt.aliases) if env.get(name) is not None), opt.env)
            raw = env.get(source)
            if raw is not None and raw.strip() == "" and opt.default is None:
                raw = None  # an empty env var means "unset" for optional strings
        if raw is None:
            continue
        if isinstance(raw, bool):
            values[opt.name] = raw
            continue
        try:
            values[opt.name] = opt.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"invalid {source}: {exc}") from None
    settings = Settings(**values)
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    if s.internal_port is not None and s.internal_port != 0 and s.internal_port == s.port:
        raise ConfigError("INTERNAL_PORT must differ from PORT")
    if s.workers > 1 and not s.redis_enabled:
        raise ConfigError("WORKERS > 1 needs Redis: set REDIS_HOST (or --redis-host)")
    allowed = {
        "HS256",
        "HS384",
        "HS512",
        "RS256",
        "RS384",
        "RS512",
        "ES256",
        "ES384",
        "ES512",
        "PS256",
        "EdDSA",
    }
    for alg in s.jwt_algorithms:
        if alg not in allowed:
            raise ConfigError(f"invalid JWT_ALGORITHMS: unsupported algorithm {alg!r}")
    if not s.jwt_algorithms:
        raise ConfigError("invalid JWT_ALGORITHMS: empty")
    asymmetric = [a for a in s.jwt_algorithms if not a.startswith("HS")]
    if asymmetric and not s.jwt_public_key:
        raise ConfigError(f"JWT_ALGORITHMS has {asymmetric[0]} but JWT_PUBLIC_KEY is not set")
