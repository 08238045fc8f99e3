"""Pure logic of two cuts in the cost of filling big rooms (BENCHMARKS.md, "Filling one room"): the
timestamp format's per-second cache (services/ids.py `iso`) gives exactly what datetime formatting
gives, at the edges of a second too; GC_THRESHOLD reaches the collector (server.py `tune_gc`)."""

from __future__ import annotations

import gc
import random
from datetime import UTC, datetime

from server import tune_gc
from services.ids import iso


def reference(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_iso_matches_datetime_formatting() -> None:
    rng = random.Random(7)
    stamps = [rng.uniform(0, 4e9) for _ in range(20_000)]
    edges = [1_700_000_000 + f for f in (0.0, 0.0005, 0.001, 0.9994999, 0.9995, 0.9999994, 0.9999995, 0.9999999)]
    for ts in [*stamps, *edges]:
        assert iso(ts) == reference(ts), ts
    assert iso(0.0) == "1970-01-01T00:00:00.000Z"


def test_gc_threshold_spaces_the_young_passes_and_freezes_what_start_up_made() -> None:
    before = gc.get_threshold()
    gc.unfreeze()  # whatever an earlier test froze: the count below is tune_gc's
    assert gc.get_freeze_count() == 0
    try:
        tune_gc(1234)
        assert gc.get_threshold() == (1234, 10, 10)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
