"""The benchmark harness's own plumbing (bench/): /proc readings, percentiles, the report tables and
starting/stopping the gateway target. No timing is asserted anywhere; the figures live in BENCHMARKS.md."""

from __future__ import annotations

import os
import shutil
from argparse import Namespace
from typing import Any

from bench import fanout
from bench.common import percentile, proc_sample, wait_port
from bench.targets import start


def test_percentile_picks_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 50) in (50.0, 51.0)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 100.0
    assert percentile([7], 99) == 7.0
    assert percentile([], 50) != percentile([], 50)  # NaN for no samples


def test_proc_sample_reads_this_process():
    sample = proc_sample(os.getpid())
    assert sample.rss > 1024 * 1024
    assert sample.hwm >= sample.rss
    assert sample.cpu >= 0
    assert sample.threads >= 1


def _opts(**kw: Any) -> Namespace:
    base = {"clients": 100, "rooms": 1, "messages": 10, "size": 128, "rate": 0.0, "join": True}
    base.update(kw)
    return Namespace(**base)


def _result(target: str, deliveries: float, cpu_us: float) -> dict[str, Any]:
    return {
        "target": target,
        "rss_idle": 40 * 2**20,
        "rss_conns": 50 * 2**20,
        "bytes_per_conn": 10 * 2**20 / 100,
        "connect_s": 1.0,
        "setup_cpu_s": 0.5,
        "threads": 1,
        "deliveries_per_s": deliveries,
        "p50_ms": 1.0,
        "p95_ms": 2.0,
        "p99_ms": 3.0,
        "server_cpu_s": 1.0,
        "server_busy": 0.5,
        "us_cpu_per_delivery": cpu_us,
        "client_busy_max": 0.25,
        "other_load_cores": 0.1,
        "lost": 0,
    }


def test_rows_and_ratios():
    opts = _opts()
    line = fanout.row(_result("gateway", 1000.0, 50.0), opts)
    assert line.startswith("| gateway | 100 | 1 | 10 | 128 | ack-paced | 1,000 |")
    assert line.count("|") == fanout.HEADER.count("|")
    by_target = {"gateway": [_result("gateway", 1000.0, 50.0)], "peer": [_result("peer", 3000.0, 10.0)]}
    table = fanout.ratios(by_target, capacity=False)
    assert table[0].startswith("| ratio to gateway")
    assert table[-1].startswith("| peer | 3.00x |")
    assert "0.20x" in table[-1]  # CPU per delivery


def test_capacity_row_and_unavailable_target():
    opts = _opts(messages=0, join=False)
    line = fanout.row(_result("gateway", 0.0, 0.0), opts)
    assert line.count("|") == fanout.CAP_HEADER.count("|")
    assert "| no |" in line
    assert "unavailable: no go" in fanout.row({"target": "x", "unavailable": "no go"}, opts)


def test_gateway_target_starts_and_stops():
    server = start("gateway", None, ["--log-level", "info"])
    try:
        wait_port(server.port, timeout=10)
        assert proc_sample(server.pid).rss > 0
        assert server.url == f"ws://127.0.0.1:{server.port}"
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
    assert server.proc.returncode == 0


def test_the_storm_summary_counts_from_the_drop_and_keeps_only_the_storms_live_deliveries():
    from bench import storm

    drop = 10_000_000_000
    members = {
        "publisher": False,
        "back_ns": [drop + k * 10_000_000 for k in range(1, 101)],  # back 10 ms apart, the last at 1 s
        "missing": 1,
        "dups": 0,
        "not_recovered": 2,
        "failures": 3,
        "behind": 0,
        "live_at": [drop - 1, drop + 5, drop + 2_000_000_000],  # before, during, after the storm
        "live_us": [100, 7_000, 50],
    }
    publisher = {**members, "back_ns": [], "missing": 0, "live_at": [drop + 6], "live_us": [9_000]}
    publisher["publisher"] = True
    res: dict[str, Any] = {"storm_writes": 250.0}
    storm.summarise(res, [members, publisher], drop, Namespace(clients=100))
    assert abs(res["back_all_s"] - 1.0) < 1e-9 and abs(res["back_p99_s"] - 0.99) < 1e-9
    assert res["reconnects"] == 100 and abs(res["reconnects_per_s"] - 100.0) < 1e-6
    assert (res["missing"], res["not_recovered"], res["failures"]) == (1, 2, 3)
    assert res["live_during"] == 2 and res["live_p99_ms"] == 9.0 and res["stayers_p99_ms"] == 9.0
    assert res["steady_p99_ms"] == 0.1  # the delivery before the drop
    assert res["storm_writes_per_reconnect"] == 2.5
