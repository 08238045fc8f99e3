"""Time-ordered message ids (UUIDv7, RFC 9562) and the gateway's timestamp format."""

from __future__ import annotations

import functools
import os
import threading
import time
import uuid
from datetime import UTC, datetime

_lock = threading.Lock()
_last_ms = 0
_seq = 0


def uuid7() -> str:
    """UUIDv7 that stays strictly increasing within one process, even within a millisecond."""
    global _last_ms, _seq
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _seq += 1
            if _seq > 0xFFF:  # 4096 ids in one millisecond: borrow the next millisecond
                ms += 1
                _seq = 0
        else:
            _seq = int.from_bytes(os.urandom(2), "big") & 0x3FF  # leave headroom for increments
        _last_ms = ms
        seq = _seq
    rand = int.from_bytes(os.urandom(8), "big") & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand
    return str(uuid.UUID(int=value))


def iso_now() -> str:
    return iso(time.time())


def iso(ts: float) -> str:
    """ISO-8601 UTC with milliseconds and a `Z`, e.g. 2026-01-01T00:00:00.000Z. The seconds part
    is formatted once per second (`_second`): a presence page formats a hundred of these per join,
    and datetime formatting was half the CPU of filling a big room (BENCHMARKS.md)."""
    whole = int(ts // 1)
    micros = round((ts - whole) * 1_000_000)  # as datetime.fromtimestamp rounds, then truncated
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return f"{_second(whole)}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second(whole: int) -> str:
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def short_id() -> str:
    return uuid.uuid4().hex[:12]
