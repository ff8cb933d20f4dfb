"""The Helm chart, rendered and linted offline with Helm's own Go SDK and validated against Kubernetes schemas.

What an operator would notice is asserted, not the template text: five Deployments and Services wired to each
other, gRPC health probes, pods that roll when (and only when) their config changes, credentials that only ever
appear as Secret references, HPA/PDB that follow their switches, and values the schema refuses.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import importlib
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from tollgate_common.config import ConfigError
from tollgate_common.events import Topics
from tollgate_common.grpc import GrpcServer

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "tollgate"
FULL_VALUES = yaml.safe_load((Path(__file__).parent / "values-full.yaml").read_text())
RELEASE = "demo"
NAMESPACE = "gateway"
#: Oldest release the chart declares (kubeVersion) and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())

SERVICES = ("billing", "ingress", "metering", "policy", "router")
GRPC_PORTS = {"router": 50051, "policy": 50052, "billing": 50053, "metering": 50054}
SECRET_ENV_SUFFIXES = ("DATABASE_URL", "ADMIN_TOKEN", "API_KEY", "INTERNAL_SECRET", "INTERNAL_SECRET_PREVIOUS",
                       "HASH_KEY", "SASL_USERNAME", "SASL_PASSWORD")
#: Custom resources kubernetes-validate has no schema for; their shape is asserted by their own tests.
CUSTOM_KINDS = {"KafkaTopic"}


@dataclass
class Rendered:
    """The manifests of one render, parsed, plus NOTES.txt."""

    objects: list[dict[str, Any]]
    notes: str
    #: "<release>-tollgate" (or the release name alone when it already says tollgate).
    fullname: str = f"{RELEASE}-tollgate"

    def kind(self, kind: str) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in self.objects if o["kind"] == kind}

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = self.kind(kind)
        assert name in found, f"no {kind} {name}; have {sorted(found)}"
        return found[name]

    def deployment(self, service: str) -> dict[str, Any]:
        return self.get("Deployment", f"{self.fullname}-{service}")

    def container(self, service: str) -> dict[str, Any]:
        (container,) = self.deployment(service)["spec"]["template"]["spec"]["containers"]
        return container

    def environment(self, service: str) -> dict[str, dict[str, Any]]:
        """What the process sees: envFrom ConfigMaps first, then `env` entries (which win), as EnvVar dicts."""
        container = self.container(service)
        seen: dict[str, dict[str, Any]] = {}
        for source in container.get("envFrom", []):
            data = self.get("ConfigMap", source["configMapRef"]["name"]).get("data", {})
            seen.update({name: {"name": name, "value": value} for name, value in data.items()})
        seen.update({entry["name"]: entry for entry in container.get("env", [])})
        return seen

    def env_value(self, service: str, name: str) -> str | None:
        entry = self.environment(service).get(name)
        return None if entry is None else entry.get("value")

    def checksums(self) -> dict[str, str]:
        return {
            service: self.deployment(service)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for service in SERVICES
        }


def render(chart: helm.Chart, values: dict[str, Any] | None = None, *, name: str = RELEASE) -> Rendered:
    manifests = chart.render(values, name=name, namespace=NAMESPACE, is_install=True)
    objects = [
        doc
        for path, text in sorted(manifests.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    notes = next((text for path, text in manifests.items() if path.endswith("NOTES.txt")), "")
    return Rendered(objects, notes, name if "tollgate" in name else f"{name}-tollgate")


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` deep-merged over a copy of ``base``, like a second ``-f`` file."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def default(chart: helm.Chart) -> Rendered:
    return render(chart)


@pytest.fixture(scope="module")
def full(chart: helm.Chart) -> Rendered:
    return render(chart, FULL_VALUES)


#: Everything optional switched off, and the SQLite fallback everywhere (a throwaway demo install).
MINIMAL_VALUES: dict[str, Any] = {
    "metrics": {"enabled": False},
    "serviceAccount": {"create": False},
    "preStopSleepSeconds": 0,
    "helmTest": {"enabled": False},
    "networkPolicy": {"enabled": False},
    "services": {
        name: {"databaseUrl": {"existingSecret": "", "key": ""}, "replicas": 1}
        for name in ("ingress", "policy", "billing", "metering")
    },
}


@pytest.fixture(scope="module")
def minimal(chart: helm.Chart) -> Rendered:
    return render(chart, MINIMAL_VALUES)


# --- lint and Kubernetes schemas -----------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["defaults", "everything-on"])
def test_chart_lints_without_warnings(values: dict[str, Any] | None) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSIONS[-1]}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("which", ["default", "full", "minimal"])
def test_every_manifest_is_valid_kubernetes(which: str, kube_version: str, request: pytest.FixtureRequest) -> None:
    rendered: Rendered = request.getfixturevalue(which)
    assert rendered.objects
    for obj in rendered.objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        # strict: unknown fields are errors too; a kind without a schema raises instead of passing silently.
        kubernetes_validate.validate(obj, kube_version, strict=True)


def test_everything_on_renders_every_kind(full: Rendered) -> None:
    counts = {kind: len(full.kind(kind)) for kind in {o["kind"] for o in full.objects}}
    assert counts == {
        "ConfigMap": 7,  # five env ConfigMaps + router providers file + metering price book
        "Deployment": 5,
        "Service": 5,
        "ServiceAccount": 1,
        "HorizontalPodAutoscaler": 4,  # billing turns it off
        "PodDisruptionBudget": 5,
        "NetworkPolicy": 5,
        "Ingress": 2,  # the public one and the admin host
        "KafkaTopic": 5,
        "Pod": 1,  # the `helm test` hook
    }


# --- the five services and their wiring ----------------------------------------------------------------------------


def test_five_deployments_and_services_select_each_other(default: Rendered) -> None:
    deployments, services = default.kind("Deployment"), default.kind("Service")
    assert sorted(deployments) == [f"{RELEASE}-tollgate-{s}" for s in SERVICES]
    assert sorted(services) == sorted(deployments)
    for name, deployment in deployments.items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = services[name]["spec"]["selector"]
        assert selector.items() <= pod_labels.items()
        assert deployment["spec"]["selector"]["matchLabels"] == selector
        port_names = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert {p["targetPort"] for p in services[name]["spec"]["ports"]} <= port_names
    # Every component's selector is distinct: no Service picks up another service's pods.
    assert len({tuple(sorted(s["spec"]["selector"].items())) for s in services.values()}) == 5


def test_each_service_runs_its_own_module_from_its_own_image(default: Rendered, full: Rendered) -> None:
    for service in SERVICES:
        assert default.container(service)["image"] == f"ghcr.io/tollgate/tollgate-{service}:0.1.0"
    assert full.container("billing")["image"] == "registry.example.com/tollgate/tollgate-billing:1.2.3"
    assert full.container("router")["image"] == "registry.example.com/tollgate/router-custom:1.2.4-hotfix"
    assert full.container("router")["imagePullPolicy"] == "Always"


def test_peers_are_dialled_at_their_services(default: Rendered) -> None:
    expected = {
        ("ingress", "INGRESS_BILLING_ADDR"): "billing",
        ("ingress", "INGRESS_POLICY_ADDR"): "policy",
        ("ingress", "INGRESS_ROUTER_ADDR"): "router",
        ("billing", "BILLING_METERING_ADDR"): "metering",
    }
    services = default.kind("Service")
    for (service, variable), peer in expected.items():
        host, port = default.env_value(service, variable).rsplit(":", 1)  # type: ignore[union-attr]
        assert host == f"{RELEASE}-tollgate-{peer}"
        assert int(port) == GRPC_PORTS[peer]
        assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}


def test_release_named_tollgate_is_not_stuttered(chart: helm.Chart) -> None:
    rendered = render(chart, name="tollgate")
    assert sorted(rendered.kind("Deployment")) == [f"tollgate-{s}" for s in SERVICES]
    env = {e: v["value"] for e, v in rendered.environment("ingress").items() if "value" in v}
    assert env["INGRESS_ROUTER_ADDR"] == "tollgate-router:50051"


def test_each_service_listens_where_its_service_points(default: Rendered) -> None:
    for service, port in {**GRPC_PORTS, "ingress": 8080}.items():
        prefix = service.upper()
        port_var = f"{prefix}_PORT" if service == "ingress" else f"{prefix}_GRPC_PORT"
        host_var = f"{prefix}_HOST" if service == "ingress" else f"{prefix}_GRPC_HOST"
        assert default.env_value(service, port_var) == str(port)
        # Loopback would be unreachable for probes and peers.
        assert default.env_value(service, host_var) == "0.0.0.0"
        container_ports = {p["name"]: p["containerPort"] for p in default.container(service)["ports"]}
        assert container_ports["http" if service == "ingress" else "grpc"] == port


def test_kafka_and_telemetry_reach_the_services_that_use_them(full: Rendered, default: Rendered) -> None:
    bootstrap = FULL_VALUES["kafka"]["bootstrapServers"]
    for service in SERVICES:
        assert full.env_value(service, f"{service.upper()}_KAFKA_BOOTSTRAP_SERVERS") == bootstrap
    for service in SERVICES:
        assert full.env_value(service, "OTEL_EXPORTER_OTLP_ENDPOINT") == FULL_VALUES["otel"]["endpoint"]
        assert full.env_value(service, "OTEL_SERVICE_NAME") == f"tollgate-{service}"
        attributes = full.env_value(service, "OTEL_RESOURCE_ATTRIBUTES") or ""
        assert "deployment.environment=production" in attributes.split(",")
        # No endpoint: nothing is exported, but the SDK is not switched off either.
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in default.environment(service)


def test_service_settings_become_prefixed_variables(full: Rendered) -> None:
    assert full.env_value("billing", "BILLING_HOLD_TTL_SECONDS") == "900"
    assert full.env_value("billing", "BILLING_KEY_CACHE_SECONDS") == "2"
    assert full.env_value("ingress", "INGRESS_RPC_TIMEOUT_SECONDS") == "5"
    assert full.env_value("ingress", "INGRESS_LOG_LEVEL") == "WARNING"
    assert full.env_value("router", "ROUTER_UPSTREAM_TIMEOUT_SECONDS") == "120"
    assert full.env_value("router", "HTTPS_PROXY") == "http://egress-proxy.network.svc:3128"


def test_settings_cannot_override_the_wiring(chart: helm.Chart) -> None:
    rendered = render(chart, {"services": {"billing": {"settings": {"GRPC_PORT": "1", "METERING_ADDR": "x:1"}}}})
    assert rendered.env_value("billing", "BILLING_GRPC_PORT") == "50053"
    assert rendered.env_value("billing", "BILLING_METERING_ADDR") == f"{RELEASE}-tollgate-metering:50054"


def test_event_topics_are_declared_for_strimzi_and_kept(full: Rendered, default: Rendered) -> None:
    assert default.kind("KafkaTopic") == {}
    topics = full.kind("KafkaTopic")
    assert sorted(t["spec"]["topicName"] for t in topics.values()) == sorted(Topics.ALL)
    for topic in topics.values():
        assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert topic["metadata"]["namespace"] == "kafka"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "tollgate"
        assert topic["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert (topic["spec"]["partitions"], topic["spec"]["replicas"]) == (12, 3)
        assert topic["spec"]["config"] == {"min.insync.replicas": "2", "retention.ms": "-1"}


def process_environment(rendered: Rendered, service: str, files_root: Path) -> dict[str, str]:
    """The environment the container would get, with Secrets filled by stand-ins and config files written out
    under ``files_root`` (their paths rewritten to match)."""
    env: dict[str, str] = {}
    for name, entry in rendered.environment(service).items():
        if "value" in entry:
            env[name] = entry["value"]
        elif "secretKeyRef" in entry["valueFrom"]:
            ref = entry["valueFrom"]["secretKeyRef"]
            made = rendered.kind("Secret").get(ref["name"])  # the chart's own Secret: its real value
            if made is not None:
                env[name] = base64.b64decode(made["data"][ref["key"]]).decode()
            elif name.endswith("DATABASE_URL"):
                env[name] = "postgresql://tollgate:pw@db/tollgate"
            elif name == "INGRESS_OPERATORS":  # JSON: named operator tokens (their SHA-256 only)
                env[name] = '[{"name": "auditor", "role": "read-only", "token_sha256": "' + "0" * 64 + '"}]'
            else:
                env[name] = "stand-in-secret-" + "x" * 32
        else:
            env[name] = "downward-api"
    pod = rendered.deployment(service)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in pod["containers"][0]["volumeMounts"]:
        source = volumes[mount["name"]].get("configMap")
        if source is None:
            continue
        local = files_root / mount["mountPath"].lstrip("/")
        local.mkdir(parents=True, exist_ok=True)
        for key, text in rendered.get("ConfigMap", source["name"])["data"].items():
            (local / key).write_text(text)
        env = {k: v.replace(mount["mountPath"], str(local)) for k, v in env.items()}
    return env


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("which", ["default", "full", "minimal"])
def test_services_accept_the_environment_the_chart_gives_them(
    which: str, service: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Each service's own ``Settings.from_env`` reads the rendered environment (price book and providers file
    included) without a configuration error, and listens where the Service points."""
    rendered: Rendered = request.getfixturevalue(which)
    config = importlib.import_module(f"tollgate_{service}.config")
    environ = process_environment(rendered, service, tmp_path)
    if service == "router" and which != "full":
        # No provider configured: the router refuses to start, as NOTES.txt warns.
        with pytest.raises(ConfigError, match="no upstream provider"):
            config.Settings.from_env(environ)
        return
    settings = config.Settings.from_env(environ)
    port = settings.port if service == "ingress" else settings.grpc_port
    assert port == rendered.container(service)["ports"][0]["containerPort"]


# --- probes ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", sorted(GRPC_PORTS))
def test_grpc_services_are_probed_on_grpc_health(default: Rendered, service: str) -> None:
    container = default.container(service)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == GRPC_PORTS[service], probe
        assert "httpGet" not in container[probe] and "tcpSocket" not in container[probe]


def test_ingress_is_probed_over_http(default: Rendered, full: Rendered) -> None:
    container = default.container("ingress")
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert "grpc" not in container["readinessProbe"]
    # A per-service timing override changes that probe only, and keeps the other timings.
    readiness = full.container("ingress")["readinessProbe"]
    assert readiness["periodSeconds"] == 3 and readiness["failureThreshold"] == 2
    assert full.container("router")["readinessProbe"]["periodSeconds"] == 5


# --- config files and the checksum that rolls pods -------------------------------------------------------------------


def test_config_files_are_mounted_where_the_variables_point(full: Rendered) -> None:
    for service, variable, key, value in (
        ("router", "ROUTER_PROVIDERS_FILE", "providers.yaml", "providers"),
        ("metering", "METERING_PRICE_BOOK_FILE", "price-book.yaml", "priceBook"),
    ):
        path = Path(full.env_value(service, variable) or "")
        pod = full.deployment(service)["spec"]["template"]["spec"]
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == str(path.parent)]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        files = full.get("ConfigMap", volume["configMap"]["name"])["data"]
        assert path.name == key
        assert yaml.safe_load(files[key]) == yaml.safe_load(FULL_VALUES["services"][service][value])


def test_no_config_file_no_variable(default: Rendered) -> None:
    assert "ROUTER_PROVIDERS_FILE" not in default.environment("router")
    assert "METERING_PRICE_BOOK_FILE" not in default.environment("metering")


def test_checksum_rolls_exactly_the_services_whose_config_changed(chart: helm.Chart, default: Rendered) -> None:
    before = default.checksums()
    assert render(chart).checksums() == before  # stable across renders

    book = FULL_VALUES["services"]["metering"]["priceBook"]
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({"services": {"metering": {"priceBook": book}}}, {"metering"}),
        ({"services": {"router": {"providers": FULL_VALUES["services"]["router"]["providers"]}}}, {"router"}),
        ({"services": {"billing": {"holdTtlSeconds": 601}}}, {"billing"}),
        ({"services": {"policy": {"logLevel": "DEBUG"}}}, {"policy"}),
        ({"kafka": {"bootstrapServers": "other-kafka-bootstrap:9092"}}, set(SERVICES)),
        ({"otel": {"endpoint": "http://collector:4317"}}, set(SERVICES)),
        # A port change moves the peers that dial it too.
        ({"services": {"metering": {"port": 50064}}}, {"metering", "billing", "router", "ingress"}),
        # Not configuration: scaling must not restart anything.
        ({"services": {"billing": {"replicas": 5}}}, set()),
    ]
    for values, expected in cases:
        after = render(chart, values).checksums()
        changed = {s for s in SERVICES if after[s] != before[s]}
        assert changed == expected, values


def test_price_book_edit_rolls_metering_again(chart: helm.Chart) -> None:
    book = FULL_VALUES["services"]["metering"]["priceBook"]
    first = render(chart, {"services": {"metering": {"priceBook": book}}}).checksums()["metering"]
    second = render(
        chart, {"services": {"metering": {"priceBook": book.replace("markup_bps: 1500", "markup_bps: 1600")}}}
    ).checksums()["metering"]
    assert first != second


# --- secrets -------------------------------------------------------------------------------------------------------


def test_credentials_only_ever_appear_as_secret_references(full: Rendered, default: Rendered) -> None:
    assert full.kind("Secret") == {}
    # The one Secret the chart makes holds random internal secrets, never a value from the values files.
    assert list(default.kind("Secret")) == [f"{RELEASE}-tollgate-internal"]
    for rendered in (default, full):
        for service in SERVICES:
            for name, entry in rendered.environment(service).items():
                if name.endswith(SECRET_ENV_SUFFIXES) and not name.endswith("_FILE"):
                    assert "value" not in entry, f"{service}: {name} has a plaintext value"
                    assert entry["valueFrom"]["secretKeyRef"]["name"], (service, name)
    ref = full.environment("router")["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "tollgate-providers", "key": "openai"}
    assert full.environment("router")["DEEPSEEK_API_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert full.environment("ingress")["INGRESS_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "tollgate-admin",
        "key": "admin-token",
    }
    assert full.environment("ingress")["INGRESS_OPERATORS"]["valueFrom"]["secretKeyRef"] == {
        "name": "tollgate-ingress-operators", "key": "operators", "optional": True}
    assert full.environment("billing")["BILLING_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "tollgate-postgres-urls",
        "key": "billing",
    }
    assert "tollgate-admin" in full.notes and "tollgate-postgres-urls" in full.notes


@pytest.mark.parametrize(
    "values",
    [
        {"services": {"billing": {"databaseUrl": "postgresql://tollgate:hunter2@db/tollgate"}}},
        {"services": {"billing": {"databaseUrl": {"value": "postgresql://tollgate:hunter2@db/tollgate"}}}},
        {"services": {"ingress": {"adminToken": "s3cret"}}},
        {"services": {"ingress": {"adminToken": {"existingSecret": "", "key": "token"}}}},
        {"services": {"router": {"providerKeys": {"OPENAI_API_KEY": "sk-live-123"}}}},
        {"services": {"router": {"providerKeys": {"OPENAI_API_KEY": {"value": "sk-live-123"}}}}},
    ],
    ids=["db-url-string", "db-url-value", "admin-token-string", "admin-token-no-secret", "key-string", "key-value"],
)
def test_plaintext_secrets_are_refused(chart: helm.Chart, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(chart, values)


def test_minimal_install_switches_the_extras_off(minimal: Rendered) -> None:
    assert {o["kind"] for o in minimal.objects} == {"ConfigMap", "Deployment", "Service", "Secret"}
    for service in SERVICES:
        pod = minimal.deployment(service)["spec"]["template"]
        assert not any(k.startswith("prometheus.io/") for k in pod["metadata"]["annotations"])
        assert pod["spec"]["serviceAccountName"] == "default"
        assert "lifecycle" not in pod["spec"]["containers"][0]
    assert minimal.env_value("router", "ROUTER_METRICS_PORT") == "0"
    assert minimal.env_value("ingress", "INGRESS_METRICS_PORT") == "0"
    assert [p["name"] for p in minimal.container("billing")["ports"]] == ["grpc"]
    assert minimal.env_value("billing", "BILLING_DATABASE_URL") == "sqlite:////app/var/billing.db"
    assert minimal.env_value("ingress", "INGRESS_OUTBOX_DATABASE_URL") == "sqlite:////app/var/ingress-outbox.db"


def test_sqlite_fallback_uses_a_writable_volume(chart: helm.Chart) -> None:
    rendered = render(chart, {"services": {"policy": {"databaseUrl": {"existingSecret": ""}}}})
    assert rendered.env_value("policy", "POLICY_DATABASE_URL") == "sqlite:////app/var/policy.db"
    pod = rendered.deployment("policy")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/app/var"]]
    assert "WARNING: policy" in rendered.notes
    # The others still read their URL from the Secret.
    assert "valueFrom" in rendered.environment("billing")["BILLING_DATABASE_URL"]


# --- scaling and disruption ----------------------------------------------------------------------------------------


def test_hpa_and_pdb_absent_by_default(default: Rendered) -> None:
    assert default.kind("HorizontalPodAutoscaler") == {}
    assert default.kind("PodDisruptionBudget") == {}
    assert default.deployment("ingress")["spec"]["replicas"] == 2
    assert default.deployment("metering")["spec"]["replicas"] == 1


def test_hpa_and_pdb_follow_their_switches(full: Rendered) -> None:
    hpas = full.kind("HorizontalPodAutoscaler")
    assert sorted(hpas) == [f"{RELEASE}-tollgate-{s}" for s in SERVICES if s != "billing"]
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        # The HPA owns the replica count: the Deployment must not fight it on every upgrade.
        assert "replicas" not in full.get("Deployment", name)["spec"]
    ingress = hpas[f"{RELEASE}-tollgate-ingress"]["spec"]
    assert (ingress["minReplicas"], ingress["maxReplicas"]) == (2, 20)
    assert ingress["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    router = hpas[f"{RELEASE}-tollgate-router"]["spec"]
    assert (router["maxReplicas"], router["metrics"][0]["resource"]["target"]["averageUtilization"]) == (10, 65)
    assert full.deployment("billing")["spec"]["replicas"] == 3

    pdbs = full.kind("PodDisruptionBudget")
    assert sorted(pdbs) == [f"{RELEASE}-tollgate-{s}" for s in SERVICES]
    assert pdbs[f"{RELEASE}-tollgate-ingress"]["spec"]["maxUnavailable"] == "25%"
    assert "minAvailable" not in pdbs[f"{RELEASE}-tollgate-ingress"]["spec"]
    assert pdbs[f"{RELEASE}-tollgate-billing"]["spec"]["minAvailable"] == 1
    for name, pdb in pdbs.items():
        labels = full.get("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_one_service_can_opt_in_alone(chart: helm.Chart) -> None:
    rendered = render(
        chart,
        {"services": {"ingress": {"autoscaling": {"enabled": True}, "podDisruptionBudget": {"enabled": True}}}},
    )
    assert list(rendered.kind("HorizontalPodAutoscaler")) == [f"{RELEASE}-tollgate-ingress"]
    assert list(rendered.kind("PodDisruptionBudget")) == [f"{RELEASE}-tollgate-ingress"]


# --- hardening -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "full"])
def test_pods_run_non_root_on_a_read_only_root(which: str, request: pytest.FixtureRequest) -> None:
    rendered: Rendered = request.getfixturevalue(which)
    for service in SERVICES:
        pod = rendered.deployment(service)["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
        assert pod["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"] == (f"{RELEASE}-tollgate" if which == "default" else "tollgate-runtime")
    assert rendered.kind("ServiceAccount")


def _component(selector: dict[str, Any]) -> str:
    labels = selector["podSelector"]["matchLabels"]
    assert (labels["app.kubernetes.io/name"], labels["app.kubernetes.io/instance"]) == ("tollgate", RELEASE)
    return str(labels["app.kubernetes.io/component"])


def test_network_policies_admit_only_each_services_callers(default: Rendered, full: Rendered) -> None:
    """Per service pair: who may connect to each gRPC service is exactly who calls it (docs/architecture.md's
    caller tables, and the helm test pod); ingress's HTTP port takes the configured controller's pods."""
    expected = {"billing": {"ingress"}, "policy": {"ingress"}, "router": {"ingress"},
                "metering": {"billing", "ingress", "router", "ops"}}
    for rendered in (default, full):
        policies = rendered.kind("NetworkPolicy")
        assert len(policies) == 5
        for service, callers in expected.items():
            spec = policies[f"{RELEASE}-tollgate-{service}"]["spec"]
            assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == service
            (grpc_rule,) = [r for r in spec["ingress"] if r["ports"][0]["port"] == "grpc"]
            assert {_component(peer) for peer in grpc_rule["from"]} == callers | {"helm-test"}
    spec = full.kind("NetworkPolicy")[f"{RELEASE}-tollgate-billing"]["spec"]
    (metrics_rule,) = [r for r in spec["ingress"] if r["ports"][0]["port"] == "metrics"]
    assert metrics_rule["from"] == FULL_VALUES["networkPolicy"]["metricsFrom"]
    ingress = full.kind("NetworkPolicy")[f"{RELEASE}-tollgate-ingress"]["spec"]
    assert ingress["ingress"][0]["from"] == FULL_VALUES["networkPolicy"]["ingressFrom"]


def _egress(rendered: Rendered, service: str) -> tuple[dict[str, set[int]], set[int]]:
    """(peer component → ports, ports open to any or configured address) of a service's egress rules."""
    spec = rendered.kind("NetworkPolicy")[f"{RELEASE}-tollgate-{service}"]["spec"]
    assert "Egress" in spec["policyTypes"]
    peers: dict[str, set[int]] = {}
    elsewhere: set[int] = set()
    for rule in spec["egress"]:
        ports = {p["port"] for p in rule["ports"]}
        components = [_component(t) for t in rule.get("to", []) if list(t) == ["podSelector"]]
        if components:
            for component in components:
                peers.setdefault(component, set()).update(ports)
        else:
            elsewhere |= ports
    return peers, elsewhere


def test_each_service_may_connect_only_to_its_peers_kafka_and_its_database(default: Rendered, full: Rendered) -> None:
    peers, elsewhere = _egress(default, "ingress")
    assert peers == {"billing": {50053}, "policy": {50052}, "router": {50051}, "metering": {50054}}
    assert elsewhere == {53, 9092, 9093, 5432}  # DNS, Kafka, the outbox database
    assert _egress(default, "billing") == ({"metering": {50054}}, {53, 9092, 9093, 5432})
    assert _egress(default, "metering") == ({}, {53, 9092, 9093, 5432})
    # the providers and metering (the start-up price check); no database
    assert _egress(default, "router") == ({"metering": {50054}}, {53, 9092, 9093, 443})
    # Only the router reaches the providers; the collector only when one is configured.
    assert 443 not in _egress(full, "billing")[1]
    assert {4317, 4318} <= _egress(full, "billing")[1]
    assert {4317, 4318}.isdisjoint(_egress(default, "billing")[1])
    kafka = next(r for r in full.kind("NetworkPolicy")[f"{RELEASE}-tollgate-policy"]["spec"]["egress"]
                 if {p["port"] for p in r["ports"]} == {9092, 9093})
    assert kafka["to"] == FULL_VALUES["networkPolicy"]["egress"]["kafka"]["to"]


def test_kubernetes_ingress_routes_to_the_ingress_service(full: Rendered) -> None:
    public = full.get("Ingress", f"{RELEASE}-tollgate-ingress")
    backends = {p["backend"]["service"]["name"] for r in public["spec"]["rules"] for p in r["http"]["paths"]}
    assert backends == {f"{RELEASE}-tollgate-ingress"}
    assert public["spec"]["ingressClassName"] == "nginx"
    assert "https://api.tollgate.example.com/v1" in full.notes


def _routes(ingress: dict[str, Any]) -> set[tuple[str, str]]:
    return {(r["host"], p["path"]) for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}


def test_metrics_have_a_port_of_their_own_on_every_service_ingress_included(default: Rendered, full: Rendered) -> None:
    """Issue 12: ingress served /metrics on its public HTTP port. Every service now serves it on `metrics.port`
    (listening on all interfaces in the pod: TOLLGATE_METRICS_ADDR), scraped there, reachable only from
    `metricsFrom`; the Ingress routes to the HTTP port alone."""
    services = default.kind("Service")
    for service in SERVICES:
        ports = {p["name"]: p["containerPort"] for p in default.container(service)["ports"]}
        assert ports["metrics"] == 9464 and ports["metrics"] not in {v for k, v in ports.items() if k != "metrics"}
        env = default.environment(service)
        assert env[f"{service.upper()}_METRICS_PORT"]["value"] == "9464"
        assert env["TOLLGATE_METRICS_ADDR"]["value"] == "0.0.0.0"
        pod = default.deployment(service)["spec"]["template"]["metadata"]["annotations"]
        assert pod["prometheus.io/port"] == "9464"
        svc_ports = {p["name"] for p in services[f"{RELEASE}-tollgate-{service}"]["spec"]["ports"]}
        assert "metrics" in svc_ports
    spec = full.kind("NetworkPolicy")[f"{RELEASE}-tollgate-ingress"]["spec"]
    (metrics_rule,) = [r for r in spec["ingress"] if r["ports"][0]["port"] == "metrics"]
    assert metrics_rule["from"] == FULL_VALUES["networkPolicy"]["metricsFrom"]
    for ingress in full.kind("Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["port"] != {"name": "metrics"}
                assert path["backend"]["service"]["port"].get("number") != 9464


def test_the_public_ingress_routes_only_v1_and_admin_gets_its_own_host(chart: helm.Chart, full: Rendered) -> None:
    """`/admin/v1` shares ingress's port: a default install must not publish it."""
    rendered = render(chart, {"kubernetesIngress": {"enabled": True}})
    (public,) = rendered.kind("Ingress").values()
    assert _routes(public) == {("tollgate.example.com", "/v1")}
    admin = full.get("Ingress", f"{RELEASE}-tollgate-ingress-admin")
    assert _routes(admin) == {("admin.tollgate.internal", "/admin/v1")}
    assert admin["spec"]["ingressClassName"] == "nginx-internal"
    assert _routes(full.get("Ingress", f"{RELEASE}-tollgate-ingress")) == {("api.tollgate.example.com", "/v1")}


# --- internal authentication and Kafka security ---------------------------------------------------------------------


def test_internal_secrets_are_generated_and_every_service_is_production(default: Rendered) -> None:
    secret = default.get("Secret", f"{RELEASE}-tollgate-internal")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(values) == {"internal-secret", "policy-hash-key"}
    assert all(len(v) >= 32 for v in values.values()) and values["internal-secret"] != values["policy-hash-key"]
    for service in SERVICES:
        env = default.environment(service)
        assert env["TOLLGATE_ENV"]["value"] == "production"
        assert env["TOLLGATE_INTERNAL_SECRET"]["valueFrom"]["secretKeyRef"] == {
            "name": f"{RELEASE}-tollgate-internal", "key": "internal-secret"}
        assert "TOLLGATE_INTERNAL_SECRET_PREVIOUS" not in env
        assert ("POLICY_HASH_KEY" in env) == (service == "policy")
        assert ("INGRESS_POLICY_HASH_KEY" in env) == (service == "ingress")  # ingress decides DLP in process too
    for service, name in (("policy", "POLICY_HASH_KEY"), ("ingress", "INGRESS_POLICY_HASH_KEY")):
        assert default.environment(service)[name]["valueFrom"]["secretKeyRef"] == {
            "name": f"{RELEASE}-tollgate-internal", "key": "policy-hash-key"}


def test_an_existing_secret_is_used_as_is_with_the_previous_secret_while_rotating(full: Rendered) -> None:
    for service in SERVICES:
        env = full.environment(service)
        assert env["TOLLGATE_INTERNAL_SECRET"]["valueFrom"]["secretKeyRef"] == {
            "name": "tollgate-internal", "key": "current"}
        assert env["TOLLGATE_INTERNAL_SECRET_PREVIOUS"]["valueFrom"]["secretKeyRef"] == {
            "name": "tollgate-internal", "key": "previous"}
    assert full.environment("policy")["POLICY_HASH_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "tollgate-internal", "key": "dlp-hash-key"}
    assert full.environment("ingress")["INGRESS_POLICY_HASH_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "tollgate-internal", "key": "dlp-hash-key"}


def test_kafka_security_reaches_every_service(full: Rendered, default: Rendered) -> None:
    for service in SERVICES:
        prefix = service.upper()
        env = full.environment(service)
        assert env[f"{prefix}_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
        assert env[f"{prefix}_KAFKA_SASL_MECHANISM"]["value"] == "SCRAM-SHA-512"
        assert env[f"{prefix}_KAFKA_SASL_USERNAME"]["valueFrom"]["secretKeyRef"] == {
            "name": "tollgate-kafka-user", "key": "user"}
        assert env[f"{prefix}_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "tollgate-kafka-user", "key": "password"}
        assert default.env_value(service, f"{prefix}_KAFKA_SECURITY_PROTOCOL") == "PLAINTEXT"
        assert f"{prefix}_KAFKA_SASL_PASSWORD" not in default.environment(service)


def test_kafka_tls_files_are_mounted_where_the_variables_point(chart: helm.Chart) -> None:
    rendered = render(chart, {"kafka": {"security": {"protocol": "SSL", "tls": {
        "existingSecret": "kafka-client-tls", "caKey": "ca.pem", "certKey": "tls.crt", "keyKey": "tls.key"}}}})
    for service in SERVICES:
        prefix = service.upper()
        pod = rendered.deployment(service)["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if "secret" in v]
        assert volume["secret"]["secretName"] == "kafka-client-tls"
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
        for variable, key in (("CA_FILE", "ca.pem"), ("CERT_FILE", "tls.crt"), ("KEY_FILE", "tls.key")):
            assert rendered.env_value(service, f"{prefix}_KAFKA_SSL_{variable}") == f"{mount['mountPath']}/{key}"


# --- helm test ------------------------------------------------------------------------------------------------------


class _Readyz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("ingress_status", [200, 503])
async def test_helm_test_pod_checks_every_service(default: Rendered, ingress_status: int) -> None:
    """Runs the hook's script for real, against live grpc.health.v1 servers and an HTTP /readyz."""
    (pod,) = default.kind("Pod").values()
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert sorted(env["GRPC_TARGETS"].split(",")) == sorted(
        f"{RELEASE}-tollgate-{s}:{p}" for s, p in GRPC_PORTS.items()
    )
    assert env["INGRESS_READYZ"] == f"http://{RELEASE}-tollgate-ingress:8080/readyz"
    assert container["command"][:2] == ["python", "-c"]

    servers = [GrpcServer("127.0.0.1", 0) for _ in range(2)]
    handler = type("Readyz", (_Readyz,), {"status": ingress_status})
    http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        ports = [await server.start() for server in servers]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            container["command"][2],
            env={
                **os.environ,
                "GRPC_TARGETS": ",".join(f"127.0.0.1:{p}" for p in ports),
                "INGRESS_READYZ": f"http://127.0.0.1:{http.server_address[1]}/readyz",
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
    finally:
        http.shutdown()
        for server in servers:
            await server.stop(0)
    if ingress_status == 200:
        assert proc.returncode == 0, err.decode()
        assert out.decode().count("SERVING") == 2 and "READY" in out.decode()
    else:
        assert proc.returncode != 0
        assert "503" in err.decode()


# --- the schema ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"services": {"billing": {"replicas": "two"}}}, "/services/billing/replicas"),
        ({"services": {"billing": {"port": 70000}}}, "/services/billing/port"),
        ({"services": {"policy": {"logLevel": "LOUD"}}}, "/services/policy/logLevel"),
        ({"services": {"gateway": {"replicas": 1}}}, "/services"),
        ({"kafka": {"bootstrapServers": ""}}, "/kafka/bootstrapServers"),
        ({"kafka": {"bootstrapServers": "kafka"}}, "/kafka/bootstrapServers"),
        ({"autoscaling": {"enabled": "yes"}}, "/autoscaling/enabled"),
        ({"podDisruptionBudget": {"minAvailable": "half"}}, "/podDisruptionBudget/minAvailable"),
        ({"services": {"router": {"providerKeys": {"openai key": {"existingSecret": "s", "key": "k"}}}}}, "openai key"),
        ({"replicas": 2}, "replicas"),
        ({"environment": "staging"}, "/environment"),
        ({"kafka": {"security": {"protocol": "TLS"}}}, "/kafka/security/protocol"),
        ({"kafka": {"security": {"saslMechanism": "GSSAPI"}}}, "/kafka/security/saslMechanism"),
        ({"internalSecrets": {"secret": "hunter2hunter2hunter2hunter2hunter2"}}, "secret"),
        ({"networkPolicy": {"egress": {"kafka": {"ports": ["9092"]}}}}, "/networkPolicy/egress/kafka/ports/0"),
    ],
    ids=[
        "replicas-two",
        "port-range",
        "log-level",
        "unknown-service",
        "empty-bootstrap",
        "bootstrap-no-port",
        "bool-as-string",
        "pdb-garbage",
        "bad-env-name",
        "misplaced-key",
        "environment",
        "kafka-protocol",
        "sasl-mechanism",
        "internal-secret-as-value",
        "egress-port-string",
    ],
)
def test_schema_rejects_bad_values(chart: helm.Chart, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(chart.merge_values(values))
    assert where in str(caught.value)
    with pytest.raises(helm.HelmValuesError):
        render(chart, values)
    report = helm.lint(CHART, values)
    assert report["errors"], report


def test_schema_rejects_a_bad_values_file(chart: helm.Chart, tmp_path: Path) -> None:
    bad = tmp_path / "values.yaml"
    bad.write_text("services:\n  billing:\n    replicas: two\n")
    with pytest.raises(helm.HelmValuesError, match="replicas"):
        render(chart, helm.values_from_yaml(bad.read_text()))


def test_shipped_values_pass_the_schema(chart: helm.Chart) -> None:
    chart.validate_schema(chart.merge_values(None))
    chart.validate_schema(chart.merge_values(FULL_VALUES))


def test_readme_install_example_renders(chart: helm.Chart) -> None:
    """The values file the README walks an operator through must install as written."""
    readme = (CHART / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```yaml\n")[1:]]
    (example,) = [b for b in blocks if b.startswith("# my-values.yaml")]
    rendered = render(chart, yaml.safe_load(example), name="tollgate")
    for obj in rendered.objects:
        if obj["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(obj, KUBE_VERSIONS[-1], strict=True)
    assert rendered.environment("billing")["BILLING_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "tollgate-pg-app",
        "key": "uri",
    }
    assert rendered.env_value("billing", "BILLING_KAFKA_BOOTSTRAP_SERVERS") == "tollgate-kafka-bootstrap:9092"
    assert len(rendered.kind("KafkaTopic")) == len(Topics.ALL)
