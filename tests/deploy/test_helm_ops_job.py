"""The chart's ``tollgate`` Job (templates/ops-job.yaml), rendered offline with Helm's SDK: off by default; when on,
a valid batch/v1 Job that runs the ops command from the values, never retried (exit 1 is a finding), with the
databases from the services' own Secrets and the service addresses the command reads; NOTES say how to run it.
"""

from __future__ import annotations

from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from .test_helm_chart import CHART, FULL_VALUES, KUBE_VERSIONS, RELEASE, merged, render

JOB = f"{RELEASE}-tollgate-ops-audit-2026-11"
ON = {"ops": {"job": {"enabled": True, "name": "audit-2026-11", "workClaim": "audit-exports",
                      "args": ["audit", "export", "--account", "acct_42", "--from", "2026-11-01", "--to",
                               "2026-12-01", "--out", "/work/acct_42-2026-11"]}}}


@pytest.fixture(scope="module")
def chart() -> Any:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def test_no_job_unless_asked(chart: helm.Chart) -> None:
    rendered = render(chart, FULL_VALUES)
    assert rendered.kind("Job") == {}
    assert "ops.job.enabled=true" in rendered.notes


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_the_job_runs_tollgate_with_the_services_secrets(chart: helm.Chart, kube_version: str) -> None:
    rendered = render(chart, merged(FULL_VALUES, ON))
    job = rendered.get("Job", JOB)
    kubernetes_validate.validate(job, kube_version, strict=True)
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == ["tollgate"] and container["args"] == ON["ops"]["job"]["args"]
    billing_image = rendered.container("billing")["image"]
    assert container["image"] == billing_image
    env = {e["name"]: e for e in container["env"]}
    for service in ("billing", "metering"):
        # The very Secret reference the service's own Deployment uses.
        name = f"{service.upper()}_DATABASE_URL"
        assert env[name] == rendered.environment(service)[name] and "secretKeyRef" in env[name]["valueFrom"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"]["value"] == FULL_VALUES["kafka"]["bootstrapServers"]
    assert env["BILLING_ADDR"]["value"] == f"{RELEASE}-tollgate-billing:50053"
    assert env["TOLLGATE_INGRESS_URL"]["value"].startswith(f"http://{RELEASE}-tollgate-ingress:")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["work"]["persistentVolumeClaim"]["claimName"] == "audit-exports"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert JOB in rendered.notes


def test_the_job_reads_kafka_as_the_services_do(chart: helm.Chart) -> None:
    """The ops command checks producer signatures with the internal secret and connects with the same Kafka
    TLS/SASL settings as the services: the Job gets both, from the same Secrets."""
    secure = {"kafka": {"security": {"protocol": "SASL_SSL", "saslMechanism": "SCRAM-SHA-512",
                                     "sasl": {"existingSecret": "kafka-user"},
                                     "tls": {"existingSecret": "kafka-ca", "caKey": "ca.crt"}}}}
    rendered = render(chart, merged(merged(FULL_VALUES, ON), secure))
    job = rendered.get("Job", JOB)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    billing = rendered.environment("billing")
    assert env["TOLLGATE_INTERNAL_SECRET"] == billing["TOLLGATE_INTERNAL_SECRET"]
    assert env["TOLLGATE_ENV"]["value"] == billing["TOLLGATE_ENV"]["value"]
    assert env["TOLLGATE_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert env["TOLLGATE_KAFKA_SASL_MECHANISM"]["value"] == "SCRAM-SHA-512"
    assert env["TOLLGATE_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "kafka-user",
                                                                                "key": "password"}
    assert env["TOLLGATE_KAFKA_SSL_CA_FILE"]["value"] == "/etc/tollgate/kafka-tls/ca.crt"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["kafka-tls"] == "/etc/tollgate/kafka-tls"
    assert {v["name"]: v for v in pod["volumes"]}["kafka-tls"]["secret"]["secretName"] == "kafka-ca"


def test_bad_job_values_are_refused(chart: helm.Chart) -> None:
    with pytest.raises(Exception, match="ops"):
        render(chart, merged(FULL_VALUES, {"ops": {"job": {"enabled": True, "name": "Not_A_Name"}}}))
    with pytest.raises(Exception, match="ops"):
        render(chart, merged(FULL_VALUES, {"ops": {"job": {"args": []}}}))
