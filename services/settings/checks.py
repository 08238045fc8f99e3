"""The checks across settings, run once they are read (services/settings/__init__.py)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from services.errors import ConfigError

if TYPE_CHECKING:
    from services.settings import Settings

_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "EdDSA")


def check(s: Settings) -> None:
    """ConfigError (one line, exit 2) for settings that are valid one by one but not together."""
    if s.internal_port is not None and s.internal_port != 0 and s.internal_port == s.port:
        raise ConfigError("INTERNAL_PORT must differ from PORT")
    if s.api_key is not None and not s.api_key:
        raise ConfigError("API_KEY is empty: set a key, or leave it unset to keep the control API off")
    if s.workers > 1 and not s.redis_enabled:
        raise ConfigError("WORKERS > 1 needs Redis: set REDIS_HOST or REDIS_CLUSTER_NODES")
    if s.redis_host and s.redis_cluster_nodes:
        raise ConfigError("REDIS_HOST and REDIS_CLUSTER_NODES are exclusive: set one")
    if s.redis_cluster_nodes and s.redis_db != 0:
        raise ConfigError("REDIS_DB must be 0 with REDIS_CLUSTER_NODES (a cluster has one database)")
    if s.redis_tls_ca is not None and not os.path.isfile(s.redis_tls_ca):
        raise ConfigError(f"REDIS_TLS_CA: no such file: {s.redis_tls_ca}")
    for alg in s.jwt_algorithms:
        if alg not in _ALGORITHMS:
            raise ConfigError(f"invalid JWT_ALGORITHMS: unsupported algorithm {alg!r}")
    if not s.jwt_algorithms:
        raise ConfigError("invalid JWT_ALGORITHMS: empty")
    if s.room_access == "hook" and not s.join_hook_url:
        raise ConfigError("ROOM_ACCESS=hook needs JOIN_HOOK_URL: the backend that decides each join")
    asymmetric = [a for a in s.jwt_algorithms if not a.startswith("HS")]
    if asymmetric and not s.jwt_public_key:
        raise ConfigError(f"JWT_ALGORITHMS has {asymmetric[0]} but JWT_PUBLIC_KEY is not set")
    if s.sse_send_bytes < s.max_message_bytes:
        raise ConfigError("SSE_SEND_BYTES must be at least MAX_MESSAGE_BYTES (one such frame must fit in a POST)")
