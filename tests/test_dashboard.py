"""The Grafana dashboard (charts/realtime-gateway/dashboards/gateway.json) and its optional ConfigMap.

Every PromQL query must name only series a real gateway exports on /metrics: a renamed metric must break this
test, not silently blank a panel. The ConfigMap is checked with the real helm binary (see tests/test_chart.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient

from tests.helpers import RunningGateway
from tests.test_chart import ALL_OPTIONS, CHART, IMAGE, KUBE_VERSION, NAMESPACE, RELEASE, THROWAWAY, run_helm

DASHBOARD = CHART / "dashboards" / "gateway.json"
DATA_KEY = "realtime-gateway.json"
ROWS = ["Traffic", "Latency", "Health", "Sessions", "Backend hooks"]
DATASOURCE = "${datasource}"
# Metrics the dashboard must chart (at least one query each).
REQUIRED_METRICS = frozenset(
    {
        "gateway_connections",
        "gateway_deliveries_total",
        "gateway_bus_publish_seconds_bucket",
        "gateway_outbound_overflows_total",
        "gateway_bus_up",
        "gateway_bus_reconnects_total",
        "gateway_bus_publish_failures_total",
        "gateway_kafka_produce_seconds_bucket",
        "gateway_kafka_produce_failures_total",
        "gateway_kafka_consumer_lag",
        "gateway_kafka_invalid_total",
        "gateway_kafka_consumed_total",
        "gateway_recoveries_total",
        "gateway_recovered_entries_total",
        "gateway_unavailable_total",
        "gateway_redis_refused_total",
        "gateway_redis_circuit_open",
        "gateway_gap_fill_entries_total",
        "gateway_history_epoch_renewals_total",
        "gateway_hook_calls_total",
        "gateway_hook_seconds_bucket",
        "gateway_hook_in_flight",
        "gateway_frames_waiting",
    }
)

Panel = dict[str, Any]


# --------------------------------------------------------------------------------------------------
# PromQL metric-name extraction
# --------------------------------------------------------------------------------------------------

# Words of PromQL that look like identifiers but are not metric names (functions and aggregations are
# recognised by the "(" that follows them, so they need not be listed).
PROMQL_WORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        "le",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier not glued to a number (0.99, 5m, 1e3) and not a function call.
_IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?P<selector>.*?)\s*,\s*(?P<label>[A-Za-z_]\w*)\s*\)\s*$", re.S)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: label matchers, grouping labels, ranges, strings, Grafana
    variables, functions, keywords and numbers removed."""
    assert "__name__" not in expr, f"select metrics by name, not by __name__ (the name check would miss it): {expr}"
    text = _STRING.sub(" ", expr)
    text = _VARIABLE.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENT.findall(text) if name.lower() not in PROMQL_WORDS}


def variable_metric_names(query: str) -> set[str]:
    """Metric names in a template variable query: label_values(<selector>, <label>)."""
    match = _LABEL_VALUES.match(query)
    assert match is not None, f"variable queries are label_values(<selector>, <label>): {query}"
    return metric_names(match["selector"])


# --------------------------------------------------------------------------------------------------
# the dashboard model
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def all_panels(dashboard: dict[str, Any]) -> Iterator[Panel]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels of a collapsed row


def chart_panels(dashboard: dict[str, Any]) -> list[Panel]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in chart_panels(dashboard) for t in p["targets"]]


def variable_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = []
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def test_dashboard_model(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "realtime-gateway" and dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    assert dashboard.get("id") is None  # provisioned: Grafana assigns the id
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "job", "pod"):
        var = variables[name]
        assert var["type"] == "query" and var["datasource"]["uid"] == DATASOURCE
        assert var["includeAll"] and var["allValue"] == ".*"
        query = var["query"]["query"]
        assert query.startswith("label_values(gateway_connections") and query.endswith(f", {name})")
    assert [p["title"] for p in dashboard["panels"] if p["type"] == "row"] == ROWS


def test_every_panel_uses_the_datasource_variable_and_has_a_unit(dashboard: dict[str, Any]) -> None:
    panels = chart_panels(dashboard)
    assert len(panels) >= 20
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        where = f"panel {panel['title']!r}"
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, where
        assert panel["targets"], where
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE, where
            assert target["expr"].strip(), where
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{where} has no unit"
        assert panel.get("description"), f"{where} has no description"


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_queries_filter_by_the_variables_and_use_rate_interval(dashboard: dict[str, Any]) -> None:
    for expr in exprs(dashboard):
        # Every selector of a gateway series carries the namespace/job/pod filters.
        for selector in re.findall(r"gateway_\w+(\{[^}]*\}|)", expr):
            assert selector == '{namespace=~"$namespace", job=~"$job", pod=~"$pod"}', expr
        for fn, window in re.findall(r"\b(rate|increase)\([^\[]*\[([^\]]*)\]", expr):
            assert window in ("$__rate_interval", "$__range"), f"{fn} over [{window}]: {expr}"
        if "histogram_quantile" in expr:
            quantile = r"histogram_quantile\(0\.\d+, sum by \(le(, pod|, hook)?\) \(rate\(\w+_bucket\{"
            assert re.search(quantile, expr), expr


def test_required_panels(dashboard: dict[str, Any]) -> None:
    used = set().union(*(metric_names(e) for e in exprs(dashboard)))
    assert not REQUIRED_METRICS - used, sorted(REQUIRED_METRICS - used)
    all_exprs = exprs(dashboard)
    # Connections per pod and in total.
    assert any(e.startswith("sum by (pod) (gateway_connections{") for e in all_exprs)
    assert any(e.startswith("sum(gateway_connections{") for e in all_exprs)
    # p99 of the bus publish and of the Kafka produce histograms.
    for histogram in ("gateway_bus_publish_seconds_bucket", "gateway_kafka_produce_seconds_bucket"):
        assert any(e.startswith("histogram_quantile(0.99,") and histogram in e for e in all_exprs), histogram
    # Recoveries broken down by outcome.
    assert any("sum by (outcome)" in e and "gateway_recoveries_total" in e for e in all_exprs)


# --------------------------------------------------------------------------------------------------
# names against a real gateway's /metrics
# --------------------------------------------------------------------------------------------------

# Sample names of each metric type in the text format. A labelled metric with no child yet has a family
# (HELP/TYPE) but no sample, so names are derived from the family too.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


async def exported_names(gw: RunningGateway) -> set[str]:
    response = await AsyncHTTPClient().fetch(f"{gw.http}/metrics", request_timeout=10)
    names: set[str] = set()
    for family in text_string_to_metric_families(response.body.decode()):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def test_extractor_finds_names() -> None:
    expr = (
        'sum by (pod) (rate(gateway_bogus_total{namespace=~"$namespace", le="0.5", code!~"a(b)"}[$__rate_interval]))'
        " / on (pod) group_left gateway_connections offset 5m > bool 0"
        " and histogram_quantile(0.99, sum without (instance) (rate(gateway_bus_publish_seconds_bucket"
        '{pod=~"${pod}"}[5m]))) or vector(1e3) * -Inf'
        ' + max(label_replace(up, "dst", "$1", "src", "(.*)")) by (job)'
    )
    assert metric_names(expr) == {
        "gateway_bogus_total",
        "gateway_connections",
        "gateway_bus_publish_seconds_bucket",
        "up",
    }
    assert metric_names("sum(rate(gateway_deliveries_total[1m]))") == {"gateway_deliveries_total"}
    assert metric_names("count(gateway_bus_up == 0) or vector(0)") == {"gateway_bus_up"}
    assert variable_metric_names('label_values(gateway_connections{namespace=~"$namespace"}, pod)') == {
        "gateway_connections"
    }
    with pytest.raises(AssertionError):
        metric_names('sum({__name__="gateway_connections"})')


@pytest.mark.gen_test(timeout=20)
async def test_every_query_names_exported_metrics(
    make_gateway: Callable[..., Awaitable[RunningGateway]], dashboard: dict[str, Any]
) -> None:
    gw = await make_gateway()
    exported = await exported_names(gw)
    # The parse itself: unlabelled and labelled (possibly childless) families of every type.
    assert {
        "gateway_connections",
        "gateway_deliveries_total",
        "gateway_frames_in_total",
        "gateway_kafka_consumed_total",
        "gateway_bus_publish_seconds_bucket",
        "gateway_bus_publish_seconds_count",
    } <= exported

    used: dict[str, set[str]] = {}
    for expr in exprs(dashboard):
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        for name in names:
            used.setdefault(name, set()).add(expr)
    for query in variable_queries(dashboard):
        for name in variable_metric_names(query):
            used.setdefault(name, set()).add(query)
    unknown = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not unknown, f"queries name metrics the gateway does not export: {unknown}"
    assert not REQUIRED_METRICS - set(used)

    # The same check catches a bogus or misspelt name.
    bogus = 'sum(rate(gateway_bogus_total{pod=~"$pod"}[$__rate_interval])) / sum(gateway_connection{pod=~"$pod"})'
    assert metric_names(bogus) - exported == {"gateway_bogus_total", "gateway_connection"}


# --------------------------------------------------------------------------------------------------
# the ConfigMap (helm template)
# --------------------------------------------------------------------------------------------------


def render(helm: str, *extra: str) -> list[dict[str, Any]]:
    result = run_helm(
        helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *IMAGE, *extra
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert all(isinstance(d, dict) for d in docs)
    return docs


def dashboard_maps(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "ConfigMap" and DATA_KEY in d.get("data", {})]


def test_dashboard_configmap_off_by_default(helm: str) -> None:
    docs = render(helm, *THROWAWAY)
    assert not dashboard_maps(docs)
    assert [d["kind"] for d in docs].count("ConfigMap") == 1  # the app's settings only


def test_dashboard_configmap_holds_the_file(helm: str) -> None:
    docs = render(helm, *THROWAWAY, "--set", "grafanaDashboard.enabled=true")
    (cm,) = dashboard_maps(docs)
    meta = cm["metadata"]
    assert meta["name"] == f"{RELEASE}-realtime-gateway-dashboard"
    assert meta["namespace"] == NAMESPACE
    # kube-prometheus-stack's sidecar default: label grafana_dashboard="1".
    assert meta["labels"]["grafana_dashboard"] == "1"
    assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE
    assert "annotations" not in meta
    # Byte for byte the chart's file (so .helmignore keeps dashboards/), and valid JSON.
    assert cm["data"] == {DATA_KEY: DASHBOARD.read_text()}
    assert json.loads(cm["data"][DATA_KEY])["uid"] == "realtime-gateway"
    # Well inside the ConfigMap limit and the 256 KiB of kubectl's last-applied annotation.
    assert len(DASHBOARD.read_bytes()) < 200_000


def test_dashboard_configmap_label_namespace_and_annotations(helm: str) -> None:
    docs = render(
        helm,
        *THROWAWAY,
        "--set", "grafanaDashboard.enabled=true",
        "--set", "grafanaDashboard.label=example.com/dashboard",
        "--set-string", "grafanaDashboard.labelValue=gateway",
        "--set", "grafanaDashboard.namespace=monitoring",
        "--set", "grafanaDashboard.labels.team=chat",
        "--set", "grafanaDashboard.annotations.grafana_folder=Chat",
    )  # fmt: skip
    (cm,) = dashboard_maps(docs)
    labels = cm["metadata"]["labels"]
    assert labels["example.com/dashboard"] == "gateway" and labels["team"] == "chat"
    assert "grafana_dashboard" not in labels
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Chat"}


def test_dashboard_configmap_all_options(helm: str) -> None:
    values = yaml.safe_load(ALL_OPTIONS.read_text())["grafanaDashboard"]
    assert values["enabled"] is True
    (cm,) = dashboard_maps(render(helm, "--values", str(ALL_OPTIONS)))
    assert cm["metadata"]["namespace"] == values["namespace"]
    assert cm["metadata"]["labels"][values["label"]] == str(values["labelValue"])
    for key, value in values["labels"].items():
        assert cm["metadata"]["labels"][key] == value
    assert cm["metadata"]["annotations"] == values["annotations"]


def test_dashboard_values_are_checked_by_the_schema(helm: str) -> None:
    bad_values = (
        "grafanaDashboard.enable=true",
        "grafanaDashboard.label=not a label",
        "grafanaDashboard.labelValue=true",
    )
    for bad in bad_values:
        result = run_helm(
            helm, "template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, *IMAGE, *THROWAWAY, "--set", bad
        )
        assert result.returncode != 0, bad
        assert "grafanaDashboard" in result.stderr, result.stderr
