"""/metrics over HTTP: valid Prometheus text, and the counters move with real traffic."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient


async def scrape(gw) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await AsyncHTTPClient().fetch(f"{gw.http}/metrics")
    assert resp.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(resp.body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels: str):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.gen_test(timeout=20)
async def test_metrics_parse_and_move_with_traffic(gw):
    before = await scrape(gw)
    assert value(before, "process_resident_memory_bytes") > 0  # process collector included
    alice, bob = await gw.client("alice"), await gw.client("bob")
    await alice.join("m")
    await bob.join("m")
    for i in range(3):
        alice.send("message", {"roomId": "m", "content": f"x{i}"})
        await alice.expect("ack")
    alice.send_raw("{bad")
    await alice.expect_error("invalid_json")
    after = await scrape(gw)
    opened = value(after, "gateway_connections", transport="websocket")
    assert opened == value(before, "gateway_connections", transport="websocket") + 2
    assert value(after, "gateway_rooms") >= 1
    assert (
        value(after, "gateway_frames_in_total", type="message")
        == value(before, "gateway_frames_in_total", type="message") + 3
    )
    assert (
        value(after, "gateway_frames_out_total", type="ack")
        >= value(before, "gateway_frames_out_total", type="ack") + 3
    )
    assert value(after, "gateway_deliveries_total") >= value(before, "gateway_deliveries_total") + 6
    assert value(after, "gateway_messages_total") == value(before, "gateway_messages_total") + 3
    assert (
        value(after, "gateway_errors_total", code="invalid_json")
        == value(before, "gateway_errors_total", code="invalid_json") + 1
    )
