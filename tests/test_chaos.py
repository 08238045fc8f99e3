"""Short seeded runs of the chaos harness (bench/chaos.py): three gateway processes on a redis-server
of their own, members that recover with `since`, publishers whose acks are checked against what
every member got. The long run is `python -m bench.chaos` (BENCHMARKS.md, "Chaos")."""

from __future__ import annotations

import shutil

import pytest

from bench.chaos import Plan, run
from tests.conftest import unavailable


@pytest.fixture(autouse=True)
def _redis_server() -> None:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed")


def short(seed: int, *faults: str) -> Plan:
    return Plan(seed, gateways=3, rooms=2, subscribers=3, messages=600, rate=40.0, faults=faults, longest=8.0)


@pytest.mark.parametrize(
    ("seed", "faults"),
    [
        # seed 1: pauses of 1.8, 3.7 and 7.3 s. A gateway that delivered unstored messages locally
        # (630d91a) lost 4 (member, acked message) pairs and renewed 2 epochs in this run.
        pytest.param(1, ("redis-pause",), id="redis-pauses"),
        pytest.param(
            23, ("partition", "gateway-kill", "gateway-term", "client-abort"), id="partitions-kills-drains-aborts"
        ),
    ],
)
@pytest.mark.gen_test(timeout=150)
async def test_faults_that_keep_the_history_lose_nothing_and_renew_nothing(seed: int, faults: tuple[str, ...]) -> None:
    report = await run(short(seed, *faults))
    assert report.faults, "the schedule applied no fault"
    assert report.acked == 600 and report.failed == 0, report
    assert (report.missing, report.duplicates, report.order) == (0, 0, 0), report
    assert (report.renewals, report.not_recovered) == (0, 0), report


@pytest.mark.gen_test(timeout=150)
async def test_redis_lost_empty_is_an_announced_break_never_a_silent_one() -> None:
    report = await run(short(1, "redis-restart"))
    assert report.faults and report.renewals >= 1, report  # the history was lost: a new epoch
    assert (report.silent, report.duplicates, report.order) == (0, 0, 0), report
