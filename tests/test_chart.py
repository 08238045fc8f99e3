"""Helm chart tests: lint, render, offline schema validation and assertions on the rendered objects.

helm is a real binary (scripts/helm.sh ensure builds it into .cache/bin); RTG_HELM overrides its path.
Without it the tests skip, or fail when RTG_REQUIRE_SERVICES=1 (CI).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.settings import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "realtime-gateway"
ALL_OPTIONS = ROOT / "tests" / "fixtures" / "chart-all-options.yaml"
KUBE_VERSION = "1.30.0"
RELEASE = "rtg"
NAMESPACE = "chat"
HELM_TIMEOUT = 120

# The settings the chart's values do not cover, each with why: every other setting of the settings
# table (services/settings) must be one the chart can set (test_every_setting_is_a_value_or_excluded).
NOT_IN_VALUES = {
    "DEV": "a laptop's switch (short secrets, /dev/token): never in a cluster",
    "HOST": "the image listens on 0.0.0.0 (Dockerfile)",
    "REQUIRE_SECRET": "the image sets it (Dockerfile): a pod never generates its own secret",
    "INSTANCE_ID": "each pod draws its own; one id shared by replicas would merge their presence",
    "UVLOOP": "the image does not install the uvloop extra",
    "WAIT_FOR_REDIS": "the gateway does not listen while it waits, so the startup probe would restart the pod "
    "anyway: a pod exits 2 and Kubernetes retries with its backoff",
}
# What the all-options values render: every setting but the excluded ones (JWT_DEV, an alias of
# JWT_SECRET, is not a setting of its own). REDIS_CLUSTER_NODES excludes
# REDIS_HOST, so the all-options values cannot set it; its own test does. WORKERS is pinned to 1.
APP_ENV = frozenset(o.env for o in OPTIONS) - set(NOT_IN_VALUES) - {"REDIS_CLUSTER_NODES"}
SECRET_ENV = frozenset({"JWT_SECRET", "JWT_DEV", "REDIS_PASSWORD", "API_KEY", "HOOK_SECRET"})
# The chart refuses to render without a JWT secret source; most tests use the throwaway opt-in.
THROWAWAY = ("--set", "auth.generateSecret=true")
# The project publishes no image: every install names its own registry (the render fails otherwise).
IMAGE = ("--set", "image.repository=registry.example.com/chat/realtime-gateway")
# The only paths the Ingress may route: the WebSocket endpoints, the HTTP transport and the demo page.
PUBLIC_PATHS = [("/", "Exact"), ("/ws", "Exact"), ("/sse", "Exact"), ("/sse/send", "Exact"), ("/demo", "Prefix")]
# CRDs have no bundled schema: checked by hand instead.
CRD_KINDS = frozenset({"ServiceMonitor"})

Manifest = dict[str, Any]


# --------------------------------------------------------------------------------------------------
# helm plumbing
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HelmRun:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def manifests(self) -> list[Manifest]:
        assert self.returncode == 0, f"helm {' '.join(self.args)} failed:\n{self.stderr}"
        docs = [d for d in yaml.safe_load_all(self.stdout) if d]
        assert all(isinstance(d, dict) for d in docs)
        return docs


def run_helm(helm_bin: str, *args: str) -> HelmRun:
    proc = subprocess.run(
        [helm_bin, *args],
        capture_output=True,
        text=True,
        timeout=HELM_TIMEOUT,
        check=False,
        cwd=ROOT,
        # No cluster: keep helm away from any kubeconfig and user-level helm state.
        env={
            **os.environ,
            "KUBECONFIG": os.devnull,
            "HELM_CACHE_HOME": str(ROOT / ".cache/helm/cache"),
            "HELM_CONFIG_HOME": str(ROOT / ".cache/helm/config"),
            "HELM_DATA_HOME": str(ROOT / ".cache/helm/data"),
        },
    )
    return HelmRun(tuple(args), proc.returncode, proc.stdout, proc.stderr)


Render = Callable[..., HelmRun]


@pytest.fixture(scope="session")
def render(helm: str) -> Render:
    """`helm template` of the chart, memoised on its extra arguments (one render per values set).

    IMAGE, then THROWAWAY (auth.generateSecret=true) come first unless image=False or base=False: the
    chart's bare defaults do not render. `--set` wins over `--values`, and a later `--set` over an
    earlier one.
    """
    cache: dict[tuple[str, ...], HelmRun] = {}

    def _render(*extra: str, base: bool = True, image: bool = True) -> HelmRun:
        args = (*(IMAGE if image else ()), *(THROWAWAY if base else ()), *extra)
        if args not in cache:
            cache[args] = run_helm(
                helm,
                "template",
                RELEASE,
                str(CHART),
                "--namespace",
                NAMESPACE,
                "--kube-version",
                KUBE_VERSION,
                *args,
            )
        return cache[args]

    return _render


VALUE_SETS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "all-options": ("--values", str(ALL_OPTIONS)),
}


@pytest.fixture(scope="session", params=sorted(VALUE_SETS))
def values_set(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="session")
def manifests(render: Render, values_set: str) -> list[Manifest]:
    return render(*VALUE_SETS[values_set]).manifests


@pytest.fixture(scope="session")
def defaults(render: Render) -> list[Manifest]:
    return render().manifests


@pytest.fixture(scope="session")
def all_options(render: Render) -> list[Manifest]:
    return render(*VALUE_SETS["all-options"]).manifests


@pytest.fixture(scope="session")
def all_options_values() -> dict[str, Any]:
    data = yaml.safe_load(ALL_OPTIONS.read_text())
    assert isinstance(data, dict)
    return data


# --------------------------------------------------------------------------------------------------
# helpers over rendered objects
# --------------------------------------------------------------------------------------------------


def of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[Manifest], kind: str) -> Manifest:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected exactly one {kind}, got {len(found)}"
    return found[0]


def named(docs: list[Manifest], kind: str, name: str) -> Manifest | None:
    for d in of_kind(docs, kind):
        if d["metadata"]["name"] == name:
            return d
    return None


def pod_spec(docs: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(docs: list[Manifest]) -> dict[str, Any]:
    containers = pod_spec(docs)["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def config_env(docs: list[Manifest]) -> dict[str, str]:
    """The ConfigMap the container takes its environment from (envFrom), as ENV -> value."""
    refs = [e["configMapRef"]["name"] for e in container(docs).get("envFrom", []) if "configMapRef" in e]
    assert refs, "container has no envFrom configMapRef"
    cm = named(docs, "ConfigMap", refs[0])
    assert cm is not None, f"envFrom references ConfigMap {refs[0]} that the chart does not render"
    data: dict[str, str] = cm["data"]
    return data


def env_entries(docs: list[Manifest]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(docs).get("env", [])}


def effective_env_names(docs: list[Manifest]) -> set[str]:
    return set(config_env(docs)) | set(env_entries(docs))


def secret_ref(docs: list[Manifest], name: str) -> dict[str, str]:
    entry = env_entries(docs).get(name)
    assert entry is not None, f"{name} is not in the container env"
    ref: dict[str, str] = entry["valueFrom"]["secretKeyRef"]
    return ref


def pod_labels(docs: list[Manifest]) -> dict[str, str]:
    labels: dict[str, str] = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def ingress_paths(ingress: Manifest) -> list[tuple[str, str]]:
    return [(p["path"], p["pathType"]) for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]


def service_port(service: Manifest, name: str) -> dict[str, Any] | None:
    for p in service["spec"]["ports"]:
        if p["name"] == name:
            port: dict[str, Any] = p
            return port
    return None


def port_number(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    for p in c["ports"]:
        if p.get("name") == port:
            number: int = p["containerPort"]
            return number
    raise AssertionError(f"port {port!r} is not a named port of the container")


# --------------------------------------------------------------------------------------------------
# lint and render
# --------------------------------------------------------------------------------------------------


def test_helm_lint_strict(helm: str, values_set: str) -> None:
    values = VALUE_SETS[values_set]
    result = run_helm(helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *THROWAWAY, *values)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_renders_expected_kinds(manifests: list[Manifest], values_set: str) -> None:
    kinds = sorted(d["kind"] for d in manifests)
    base = ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    if values_set == "defaults":
        # The JWT secret is generated into the chart's Secret (THROWAWAY); the NetworkPolicy is on by
        # default (it closes the internal port); nothing optional is on.
        assert kinds == sorted([*base, "NetworkPolicy", "Secret"])
    else:
        # existingSecret for both JWT_SECRET and REDIS_PASSWORD: the chart renders no Secret. The second
        # ConfigMap holds the Grafana dashboard.
        extra = ["ConfigMap", "HorizontalPodAutoscaler", "Ingress", "NetworkPolicy", "ServiceMonitor"]
        assert kinds == sorted([*base, *extra])
    for d in manifests:
        assert d["metadata"]["name"].startswith(RELEASE)
        assert d["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_manifests_validate_offline(manifests: list[Manifest]) -> None:
    validated = 0
    for d in manifests:
        if d["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(d, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{d['kind']}/{d['metadata']['name']} is invalid for Kubernetes {KUBE_VERSION}: {exc.message}")
        validated += 1
    assert validated >= 5


def test_schema_validation_catches_errors(defaults: list[Manifest]) -> None:
    # The validator itself must reject what the API server would: an unknown container field.
    deployment = yaml.safe_load(yaml.safe_dump(one(defaults, "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["bogusField"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_servicemonitor_by_hand(all_options: list[Manifest], all_options_values: dict[str, Any]) -> None:
    sm = one(all_options, "ServiceMonitor")
    sm_values = all_options_values["metrics"]["serviceMonitor"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["namespace"] == sm_values["namespace"]
    for k, v in sm_values["labels"].items():
        assert sm["metadata"]["labels"][k] == v
    # It lives in another namespace, so it must point back at the release namespace.
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    service = one(all_options, "Service")
    assert selects(sm["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    # /metrics is only served on INTERNAL_PORT: scrape the Service port that targets it.
    assert endpoint["port"] == "internal"
    internal = service_port(service, "internal")
    assert internal is not None and internal["targetPort"] == "internal"
    assert endpoint["interval"] == sm_values["interval"]
    assert endpoint["scrapeTimeout"] == sm_values["scrapeTimeout"]


# --------------------------------------------------------------------------------------------------
# Deployment
# --------------------------------------------------------------------------------------------------


def test_probes_on_container_port(manifests: list[Manifest]) -> None:
    c = container(manifests)
    port = int(config_env(manifests)["PORT"])
    assert port_number(c, "http") == port
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe_name, path in expected.items():
        probe = c.get(probe_name)
        assert probe is not None, f"{probe_name} missing"
        assert probe["httpGet"]["path"] == path
        assert port_number(c, probe["httpGet"]["port"]) == port


def test_env_names_come_from_configmap_and_secret(manifests: list[Manifest]) -> None:
    cm = config_env(manifests)
    names = effective_env_names(manifests)
    # No typo in an env name: every chart-set name is one the app reads.
    chart_names = set(cm) | (set(env_entries(manifests)) - {"OTEL_SERVICE_NAME"})
    assert chart_names <= APP_ENV | {"REDIS_CLUSTER_NODES"}, chart_names - APP_ENV
    # Secrets never sit in the ConfigMap; empty values are left out so app defaults apply.
    assert not (set(cm) & SECRET_ENV)
    assert all(v != "" for v in cm.values()), cm
    assert {"PORT", "INTERNAL_PORT", "JWT_SECRET", "DEMO", "DRAIN_DELAY", "DRAIN_WINDOW"} <= names
    assert cm["WORKERS"] == "1"
    assert "valueFrom" in env_entries(manifests)["JWT_SECRET"]


def test_jwt_secret_env_name(manifests: list[Manifest]) -> None:
    # JWT_SECRET is the app's preferred name; JWT_DEV is only its legacy alias.
    assert "JWT_SECRET" in env_entries(manifests)
    assert "JWT_DEV" not in effective_env_names(manifests)


def test_internal_port(manifests: list[Manifest]) -> None:
    c = container(manifests)
    cm = config_env(manifests)
    internal = port_number(c, "internal")
    assert int(cm["INTERNAL_PORT"]) == internal
    assert internal != int(cm["PORT"])
    assert sorted(p["name"] for p in c["ports"]) == ["http", "internal"]
    service = one(manifests, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    sp = service_port(service, "internal")
    assert sp is not None and sp["targetPort"] == "internal"
    http = service_port(service, "http")
    assert http is not None and http["targetPort"] == "http"
    assert sp["port"] != http["port"]


def test_internal_port_values(all_options: list[Manifest], all_options_values: dict[str, Any]) -> None:
    assert config_env(all_options)["INTERNAL_PORT"] == str(all_options_values["gateway"]["internalPort"])
    sp = service_port(one(all_options, "Service"), "internal")
    assert sp is not None and sp["port"] == all_options_values["service"]["internalPort"]


def test_internal_port_stays_cluster_internal_with_load_balancer(render: Render) -> None:
    docs = render("--set", "service.type=LoadBalancer", "--set", "metrics.serviceMonitor.enabled=true").manifests
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    main = services[f"{RELEASE}-realtime-gateway"]
    assert main["spec"]["type"] == "LoadBalancer"
    assert [p["name"] for p in main["spec"]["ports"]] == ["http"]
    internal = services[f"{RELEASE}-realtime-gateway-internal"]
    assert internal["spec"]["type"] == "ClusterIP"
    assert [p["name"] for p in internal["spec"]["ports"]] == ["internal"]
    assert selects(internal["spec"]["selector"], pod_labels(docs))
    sm = one(docs, "ServiceMonitor")
    assert selects(sm["spec"]["selector"]["matchLabels"], internal["metadata"]["labels"])
    for d in docs:
        if d["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(d, KUBE_VERSION, strict=True)


def test_internal_port_must_differ(render: Render) -> None:
    result = render("--set", "gateway.internalPort=3000")
    assert result.returncode != 0
    assert "gateway.internalPort must differ from gateway.port" in result.stderr


def test_default_env(defaults: list[Manifest]) -> None:
    cm = config_env(defaults)
    assert cm["PORT"] == "3000"
    assert cm["DEMO"] == "false"
    assert (cm["DRAIN_DELAY"], cm["DRAIN_WINDOW"]) == ("5", "20")
    # Single instance defaults: no Redis, no Kafka, so the app runs its in-process bus.
    assert cm["INTERNAL_PORT"] == "9090"
    absent_by_default = ("REDIS_HOST", "REDIS_PORT", "KAFKA_BROKER_URL", "ALLOWED_ORIGINS", "JWT_PUBLIC_KEY")
    for absent in (*absent_by_default, "TRUSTED_PROXIES", "MAX_CONNECTIONS", "MAX_CONNECTIONS_PER_IP"):
        assert absent not in cm
    assert "REDIS_PASSWORD" not in env_entries(defaults)
    assert one(defaults, "Deployment")["spec"]["replicas"] == 1


def test_generated_jwt_secret_is_opt_in(render: Render) -> None:
    docs = render("--set", "auth.generateSecret=true", base=False).manifests
    ref = secret_ref(docs, "JWT_SECRET")
    assert ref["key"] == "JWT_SECRET"
    secret = named(docs, "Secret", ref["name"])
    assert secret is not None, "JWT_SECRET points at a Secret the chart does not render"
    value = base64.b64decode(secret["data"][ref["key"]]).decode()
    assert len(value) >= 32 and value.isalnum()
    assert secret["metadata"]["annotations"]["realtime-gateway/generated"] == "JWT_SECRET"


def test_every_setting_is_a_value_or_excluded() -> None:
    names = {o.env for o in OPTIONS}
    assert set(NOT_IN_VALUES) <= names, "an exclusion names a setting that no longer exists"
    templates = "".join(t.read_text() for t in (CHART / "templates").iterdir())
    covered = {name for name in names if f'"{name}"' in templates or f"name: {name}\n" in templates}
    assert names - covered == set(NOT_IN_VALUES), "a setting the chart neither sets nor excludes"


def test_all_options_env(all_options: list[Manifest], all_options_values: dict[str, Any]) -> None:
    names = effective_env_names(all_options)
    assert names >= APP_ENV, f"missing: {sorted(APP_ENV - names)}"
    cm = config_env(all_options)
    v = all_options_values
    assert cm["REDIS_HOST"] == v["redis"]["host"]
    assert cm["REDIS_PORT"] == str(v["redis"]["port"])
    assert cm["KAFKA_BROKER_URL"] == ",".join(v["kafka"]["brokers"])
    assert cm["ALLOWED_ORIGINS"] == ",".join(v["gateway"]["allowedOrigins"])
    assert cm["JWT_ALGORITHMS"] == "HS256,ES256"
    assert cm["JWT_PUBLIC_KEY"].startswith("-----BEGIN PUBLIC KEY-----\n")
    assert cm["ROOM_ACCESS"] == "hook"
    assert cm["JOIN_HOOK_URL"] == v["hooks"]["joinUrl"] and cm["HOOK_FORWARD_HEADERS"] == "Cookie,User-Agent"
    assert (cm["HOOK_TIMEOUT"], cm["HOOK_CONCURRENCY"], cm["JOIN_HOOK_CACHE_TTL"]) == ("2", "500", "30")
    assert secret_ref(all_options, "HOOK_SECRET") == {"name": "gateway-hooks", "key": "hook-secret"}
    assert cm["DEMO"] == "true"
    assert cm["PORT"] == "8080"
    # Large numbers must not come out in float notation (1.048576e+06).
    assert cm["MAX_MESSAGE_BYTES"] == "1048576"
    assert cm["DEDUPE_TTL"] == "86400"
    assert (cm["HISTORY_SIZE"], cm["HISTORY_TTL"]) == ("5000", "1800")
    assert (cm["HISTORY_ROOM_BYTES"], cm["HISTORY_MEMORY_BYTES"], cm["REPLAY_BYTES"]) == (
        "2097152",
        "134217728",
        "2097152",
    )
    assert (cm["REQUEST_BODY_BYTES"], cm["API_BODY_BYTES"], cm["HTTP_IDLE_TIMEOUT"]) == ("32768", "4194304", "3")
    assert cm["SSE_SEND_BYTES"] == "131072"
    assert cm["DEDUPE_MEMORY_BYTES"] == "33554432"
    assert (cm["PRESENCE_PAGE"], cm["PRESENCE_BROADCAST_LIMIT"], cm["PRESENCE_COUNT_INTERVAL"]) == ("50", "500", "5")
    assert cm["TRUSTED_PROXIES"] == ",".join(v["gateway"]["trustedProxies"])
    assert cm["MAX_CONNECTIONS"] == "20000"
    assert cm["MAX_CONNECTIONS_PER_IP"] == "50"
    assert secret_ref(all_options, "JWT_SECRET") == {"name": "gateway-jwt", "key": "hs256-secret"}
    assert secret_ref(all_options, "REDIS_PASSWORD") == {"name": "redis-auth", "key": "redis-password"}
    assert secret_ref(all_options, "API_KEY") == {"name": "gateway-api", "key": "api-key"}
    assert (cm["REVOCATION_TTL"], cm["OFFLINE_GRACE"]) == ("86400", "15")
    assert (cm["KAFKA_TOPIC_USER_EVENTS"], cm["KAFKA_TOPIC_PRESENCE_EVENTS"]) == (
        "prod.chat.users.events",
        "prod.chat.presence.events",
    )
    assert env_entries(all_options)["OTEL_SERVICE_NAME"]["value"] == "realtime-gateway"


def test_chart_managed_redis_password(render: Render) -> None:
    docs = render("--set", "redis.host=redis", "--set", "redis.password=s3cret").manifests
    ref = secret_ref(docs, "REDIS_PASSWORD")
    secret = named(docs, "Secret", ref["name"])
    assert secret is not None
    assert base64.b64decode(secret["data"][ref["key"]]).decode() == "s3cret"
    assert "s3cret" not in yaml.safe_dump(one(docs, "ConfigMap"))


def test_chart_managed_api_key(render: Render) -> None:
    assert "API_KEY" not in env_entries(render().manifests)  # no key: the control API is off
    docs = render("--set", "controlApi.apiKey=k3y-for-the-api").manifests
    ref = secret_ref(docs, "API_KEY")
    secret = named(docs, "Secret", ref["name"])
    assert secret is not None
    assert base64.b64decode(secret["data"][ref["key"]]).decode() == "k3y-for-the-api"
    assert "k3y-for-the-api" not in yaml.safe_dump(one(docs, "ConfigMap"))


def test_grace_period_covers_drain(manifests: list[Manifest]) -> None:
    cm = config_env(manifests)
    spec = pod_spec(manifests)
    grace = spec["terminationGracePeriodSeconds"]
    drain = int(cm["DRAIN_DELAY"]) + int(cm["DRAIN_WINDOW"])
    pre_stop = container(manifests).get("lifecycle", {}).get("preStop")
    pre_stop_sleep = int(pre_stop["exec"]["command"][-1]) if pre_stop else 0
    assert grace >= pre_stop_sleep + drain + 10, (grace, pre_stop_sleep, drain)


def test_grace_period_is_derived(render: Render) -> None:
    docs = render("--set", "gateway.drainDelay=7", "--set", "gateway.drainWindow=50").manifests
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == 7 + 50 + 10
    assert "lifecycle" not in container(docs)


def test_grace_period_leaves_room_for_kafkas_flush(render: Render) -> None:
    """After the drain the producer flushes for up to KAFKA_FLUSH_TIMEOUT: a longer flush lengthens
    the derived grace period (5 s of shutdown after it), and a shorter one keeps the 10 s floor."""
    docs = render("--set", "kafka.flushTimeout=30").manifests
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == 5 + 20 + 30 + 5
    docs = render("--set", "kafka.flushTimeout=2").manifests
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == 5 + 20 + 10


def test_a_numeric_setting_that_is_not_a_number_is_refused_at_render(render: Render) -> None:
    """Otherwise the pod renders, exits 2 on the bad value and crash-loops."""
    for value in ("gateway.keepalive.pingInterval=abc", "gateway.limits.rateLimit=20/s", "kafka.flushTimeout=-1"):
        result = render("--set", value)
        assert result.returncode != 0 and value.split("=")[0].rsplit(".", 1)[1] in result.stderr, value
    assert pod_spec(render("--set", "gateway.keepalive.pingInterval=2.5").manifests)


def test_grace_period_too_low_fails(render: Render) -> None:
    result = render("--set", "terminationGracePeriodSeconds=30")
    assert result.returncode != 0
    assert "terminationGracePeriodSeconds=30 is too low" in result.stderr
    assert ">= " in result.stderr and "= 35" in result.stderr
    # The preStop sleep counts too.
    result = render("--set", "terminationGracePeriodSeconds=35", "--set", "preStopSleepSeconds=5")
    assert result.returncode != 0
    assert "terminationGracePeriodSeconds" in result.stderr
    # Exactly the minimum is accepted.
    docs = render("--set", "terminationGracePeriodSeconds=35").manifests
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == 35


def test_security_context(manifests: list[Manifest]) -> None:
    spec = pod_spec(manifests)
    c = container(manifests)
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == 10001
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # The only writable path is an emptyDir at /tmp.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "/tmp" in mounts
    volume = next(v for v in spec["volumes"] if v["name"] == mounts["/tmp"])
    assert "emptyDir" in volume
    assert spec["automountServiceAccountToken"] is False
    resources = c["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]


def test_image_from_values(defaults: list[Manifest], all_options: list[Manifest]) -> None:
    assert container(defaults)["image"] == "registry.example.com/chat/realtime-gateway:0.1.0"  # IMAGE
    assert container(defaults)["imagePullPolicy"] == "IfNotPresent"
    assert container(all_options)["image"] == "registry.example.com/chat/realtime-gateway:0.1.0-rc1"
    assert container(all_options)["imagePullPolicy"] == "Always"


def test_selectors_match_pods(manifests: list[Manifest]) -> None:
    labels = pod_labels(manifests)
    deployment = one(manifests, "Deployment")
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    service = one(manifests, "Service")
    assert selects(service["spec"]["selector"], labels)
    container_ports = {p["name"] for p in container(manifests)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    assert selects(one(manifests, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    spread = pod_spec(manifests)["topologySpreadConstraints"]
    by_host = [t for t in spread if t["topologyKey"] == "kubernetes.io/hostname"]
    assert len(by_host) == 1
    assert by_host[0]["whenUnsatisfiable"] == "ScheduleAnyway"
    assert selects(by_host[0]["labelSelector"]["matchLabels"], labels)


def test_config_checksum_rolls_pods(render: Render) -> None:
    def checksum(*extra: str) -> str:
        annotations = one(render(*extra).manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        value: str = annotations["checksum/config"]
        return value

    base = checksum()
    assert len(base) == 64
    assert checksum() == base  # deterministic despite the generated secret
    assert checksum("--set", "gateway.logLevel=debug") != base
    assert checksum("--set", "gateway.limits.rateLimit=50") != base


def test_pod_anti_affinity(render: Render) -> None:
    soft = render("--set", "podAntiAffinity.type=soft").manifests
    terms = pod_spec(soft)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    hard = render("--set", "podAntiAffinity.type=hard").manifests
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pod_spec(hard)["affinity"]["podAntiAffinity"]
    assert "affinity" not in pod_spec(render().manifests)


# --------------------------------------------------------------------------------------------------
# Optional objects
# --------------------------------------------------------------------------------------------------


def test_ingress_websocket_annotations(all_options: list[Manifest]) -> None:
    ingress = one(all_options, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": ["chat.example.com"], "secretName": "chat-example-com-tls"}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "chat.example.com"
    service = one(all_options, "Service")
    http = service_port(service, "http")
    assert http is not None
    for path in rule["http"]["paths"]:
        backend = path["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        # The gateway port, never the internal one.
        assert backend["port"]["number"] == http["port"]


def test_ingress_routes_only_public_paths(all_options: list[Manifest], render: Render) -> None:
    hosts = (
        "--set",
        "ingress.enabled=true",
        "--set",
        "ingress.hosts[0].host=a.example",
        "--set",
        "ingress.hosts[1].host=b.example",
    )
    for docs in (all_options, render(*hosts).manifests):
        ingress = one(docs, "Ingress")
        for rule in ingress["spec"]["rules"]:
            assert [(p["path"], p["pathType"]) for p in rule["http"]["paths"]] == PUBLIC_PATHS, rule
        paths = [path for path, _ in ingress_paths(ingress)]
        assert not [p for p in paths if p.startswith(("/metrics", "/api"))]
    assert len(one(render(*hosts).manifests, "Ingress")["spec"]["rules"]) == 2


def test_ingress_paths_are_not_values(render: Render) -> None:
    # hosts[].paths is gone: a catch-all or /metrics route can no longer be configured.
    result = render("--set", "ingress.enabled=true", "--set", "ingress.hosts[0].paths[0].path=/metrics")
    assert result.returncode != 0
    assert "paths" in result.stderr


def test_ingress_user_annotations_win(render: Render) -> None:
    docs = render(
        "--set",
        "ingress.enabled=true",
        "--set-string",
        "ingress.annotations.nginx\\.ingress\\.kubernetes\\.io/proxy-read-timeout=7200",
    ).manifests
    annotations = one(docs, "Ingress")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "7200"
    assert annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"


def test_hpa(all_options: list[Manifest], all_options_values: dict[str, Any]) -> None:
    hpa = one(all_options, "HorizontalPodAutoscaler")
    deployment = one(all_options, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    scaling = all_options_values["autoscaling"]
    assert hpa["spec"]["minReplicas"] == scaling["minReplicas"]
    assert hpa["spec"]["maxReplicas"] == scaling["maxReplicas"]
    targets = {
        m["resource"]["name"]: m["resource"]["target"]["averageUtilization"]
        for m in hpa["spec"]["metrics"]
        if m["type"] == "Resource" and m["resource"]["target"]["type"] == "Utilization"
    }
    assert targets == {
        "cpu": scaling["targetCPUUtilizationPercentage"],
        "memory": scaling["targetMemoryUtilizationPercentage"],
    }
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    # The HPA owns the replica count.
    assert "replicas" not in deployment["spec"]


def test_hpa_ignores_replica_count(render: Render) -> None:
    docs = render("--set", "autoscaling.enabled=true", "--set", "redis.host=redis", "--set", "replicaCount=5").manifests
    assert "replicas" not in one(docs, "Deployment")["spec"]
    assert one(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 2


def test_network_policy(all_options: list[Manifest]) -> None:
    policy = one(all_options, "NetworkPolicy")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(all_options))
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    c = container(all_options)
    gateway, internal = policy["spec"]["ingress"]
    assert [port_number(c, p["port"]) for p in gateway["ports"]] == [8080]
    assert [port_number(c, p["port"]) for p in internal["ports"]] == [9100]
    # The ingress controller reaches the gateway port, Prometheus the internal one.
    assert [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in gateway["from"]] == [
        "ingress-nginx"
    ]
    assert [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in internal["from"]] == [
        "monitoring"
    ]
    dns_ports = {(p["port"], p["protocol"]) for p in policy["spec"]["egress"][0]["ports"]}
    assert dns_ports == {(53, "UDP"), (53, "TCP")}


# --------------------------------------------------------------------------------------------------
# Guards
# --------------------------------------------------------------------------------------------------


def test_replicas_without_redis_fail(render: Render) -> None:
    result = render("--set", "replicaCount=2")
    assert result.returncode != 0
    assert "replicaCount=2 requires redis.host" in result.stderr


def test_replicas_with_redis_render(render: Render) -> None:
    docs = render("--set", "replicaCount=2", "--set", "redis.host=redis.data.svc").manifests
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    assert config_env(docs)["REDIS_HOST"] == "redis.data.svc"


def test_redis_cluster_acl_user_and_tls_with_a_ca_from_a_secret(render: Render) -> None:
    docs = render(
        "--set", "replicaCount=3",
        "--set", "redis.clusterNodes={redis-0.redis:6379,redis-1.redis:6379}",
        "--set", "redis.username=gateway", "--set", "redis.existingSecret=redis-auth",
        "--set", "redis.tls.enabled=true", "--set", "redis.tls.caSecret=redis-ca",
        "--set", "redis.tls.caSecretKey=ca.pem",
    ).manifests  # fmt: skip
    env = config_env(docs)
    assert env["REDIS_CLUSTER_NODES"] == "redis-0.redis:6379,redis-1.redis:6379" and "REDIS_HOST" not in env
    assert env["REDIS_USERNAME"] == "gateway" and env["REDIS_TLS"] == "true"
    assert env["REDIS_TLS_CA"] == "/etc/realtime-gateway/redis-ca/ca.pem"
    assert secret_ref(docs, "REDIS_PASSWORD")["name"] == "redis-auth"
    mounts = {m["name"]: m for m in container(docs)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert mounts["redis-ca"]["mountPath"] == "/etc/realtime-gateway/redis-ca" and mounts["redis-ca"]["readOnly"]
    assert volumes["redis-ca"]["secret"] == {"secretName": "redis-ca", "items": [{"key": "ca.pem", "path": "ca.pem"}]}
    # TLS without a CA Secret: the image's system CAs, nothing mounted.
    plain = render("--set", "redis.host=redis", "--set", "redis.tls.enabled=true").manifests
    assert config_env(plain)["REDIS_TLS"] == "true" and "REDIS_TLS_CA" not in config_env(plain)
    assert "redis-ca" not in {v["name"] for v in pod_spec(plain)["volumes"]}
    assert "REDIS_TLS" not in config_env(render("--set", "redis.host=redis").manifests)


def test_redis_host_and_cluster_nodes_together_fail(render: Render) -> None:
    result = render("--set", "redis.host=redis", "--set", "redis.clusterNodes={a:1}")
    assert result.returncode != 0
    assert "redis.host and redis.clusterNodes are exclusive" in result.stderr


def test_hpa_without_redis_fails(render: Render) -> None:
    result = render("--set", "autoscaling.enabled=true")
    assert result.returncode != 0
    assert "autoscaling.enabled=true requires redis.host" in result.stderr
    docs = render("--set", "autoscaling.enabled=true", "--set", "redis.host=redis").manifests
    assert one(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2


def test_defaults_without_jwt_secret_fail(render: Render) -> None:
    # No silent random secret: it would differ on every `helm template` and rotate every token.
    result = render(base=False)
    assert result.returncode != 0
    (line,) = [ln for ln in result.stderr.splitlines() if "no JWT secret" in ln]
    assert "auth.existingSecret" in line and "auth.jwtSecret" in line and "auth.generateSecret=true" in line


def test_explicit_jwt_secret_renders(render: Render) -> None:
    given = "given-secret-given-secret-given-secret"
    docs = render("--set", f"auth.jwtSecret={given}", base=False).manifests
    ref = secret_ref(docs, "JWT_SECRET")
    secret = named(docs, "Secret", ref["name"])
    assert secret is not None
    assert base64.b64decode(secret["data"][ref["key"]]).decode() == given
    assert "annotations" not in secret["metadata"]
    # Deterministic: the same values render the same Secret.
    again = named(
        render("--set", f"auth.jwtSecret={given}", "--set", "gateway.logLevel=info", base=False).manifests,
        "Secret",
        ref["name"],
    )
    assert again == secret


def test_existing_jwt_secret_renders(render: Render) -> None:
    docs = render("--set", "auth.existingSecret=gateway-jwt", base=False).manifests
    assert secret_ref(docs, "JWT_SECRET") == {"name": "gateway-jwt", "key": "JWT_SECRET"}
    assert not of_kind(docs, "Secret")


def test_network_policy_is_on_and_keeps_the_internal_port_for_monitoring_and_api_callers(render: Render) -> None:
    """By default only the `monitoring` namespace reaches /metrics and /api/*; the gateway port stays
    open to any source. Named API callers are added; with no peer at all the internal port is closed
    (a rule without `from` would open it to every pod in the cluster)."""
    policy = one(render().manifests, "NetworkPolicy")
    gateway, internal = policy["spec"]["ingress"]
    assert [p["port"] for p in gateway["ports"]] == ["http"] and "from" not in gateway
    assert [p["port"] for p in internal["ports"]] == ["internal"]
    assert internal["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    caller = "networkPolicy.apiCallersFrom[0].podSelector.matchLabels.app=chat-backend"
    with_api = one(render("--set", caller).manifests, "NetworkPolicy")
    assert with_api["spec"]["ingress"][1]["from"][1] == {"podSelector": {"matchLabels": {"app": "chat-backend"}}}
    closed = one(render("--set", "networkPolicy.internalFrom=null").manifests, "NetworkPolicy")
    assert [[p["port"] for p in r["ports"]] for r in closed["spec"]["ingress"]] == [["http"]]
    assert not of_kind(render("--set", "networkPolicy.enabled=false").manifests, "NetworkPolicy")


def test_image_repository_is_required(render: Render) -> None:
    result = render(image=False)
    assert result.returncode != 0
    assert "image.repository is required" in result.stderr


def test_chart_metadata_names_no_placeholder() -> None:
    chart = (CHART / "Chart.yaml").read_text()
    assert "example" not in chart


def test_short_jwt_secret_fails(render: Render) -> None:
    result = render("--set", "auth.jwtSecret=too-short")
    assert result.returncode != 0
    assert "auth.jwtSecret must be at least 32 characters" in result.stderr


def test_room_access_hook_needs_the_join_hook(render: Render) -> None:
    result = render("--set", "auth.roomAccess=hook")
    assert result.returncode != 0
    assert "hooks.joinUrl" in result.stderr
    assert render("--set", "auth.roomAccess=hook", "--set", "hooks.joinUrl=http://backend/join").returncode == 0


def test_a_hook_secret_goes_in_the_chart_secret_not_the_configmap(render: Render) -> None:
    result = render("--set", "hooks.secret=s3cret-hook-key", "--set", "hooks.rpcUrl=http://backend/rpc")
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert "HOOK_SECRET" not in config_env(docs) and config_env(docs)["RPC_HOOK_URL"] == "http://backend/rpc"
    assert secret_ref(docs, "HOOK_SECRET")["key"] == "HOOK_SECRET"


def test_values_schema_rejects_bad_types(render: Render) -> None:
    result = render("--set", "auth.roomAccess=everyone")
    assert result.returncode != 0
    assert "roomAccess" in result.stderr


# --------------------------------------------------------------------------------------------------
# NOTES.txt (helm template does not render it: render a copy through a probe template)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def notes_chart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    chart = tmp_path_factory.mktemp("notes") / "realtime-gateway"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes-source.txt")
    (chart / "templates" / "zz-notes-probe.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-probe\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes-source.txt") . | quote }}\n'
    )
    yield chart
    shutil.rmtree(chart, ignore_errors=True)


def render_notes(helm_bin: str, chart: Path, *extra: str) -> str:
    result = run_helm(
        helm_bin,
        "template",
        RELEASE,
        str(chart),
        "--namespace",
        NAMESPACE,
        "--show-only",
        "templates/zz-notes-probe.yaml",
        *IMAGE,
        *THROWAWAY,
        *extra,
    )
    notes: str = one(result.manifests, "ConfigMap")["data"]["notes"]
    return notes


def test_notes_say_how_to_connect(helm: str, notes_chart: Path) -> None:
    notes = render_notes(helm, notes_chart)
    assert "port-forward service/rtg-realtime-gateway" in notes
    assert "ws://127.0.0.1:3000/" in notes
    assert "?token=" in notes and "Authorization: Bearer" in notes
    assert "/demo is disabled" in notes
    assert "get secret rtg-realtime-gateway" in notes and "{.data.JWT_SECRET}" in notes
    assert "internal port 9090" in notes
    assert "replicaCount" not in notes

    notes = render_notes(helm, notes_chart, "--values", str(ALL_OPTIONS))
    assert "wss://chat.example.com/" in notes
    assert "https://chat.example.com/demo" in notes
    assert "Secret gateway-jwt" in notes
    assert "Replicas come from the HPA" in notes and "replicaCount (1) is ignored" in notes
    assert "trustedProxies is empty" not in notes

    notes = render_notes(helm, notes_chart, "--set", "ingress.enabled=true")
    assert "gateway.trustedProxies is empty" in notes
