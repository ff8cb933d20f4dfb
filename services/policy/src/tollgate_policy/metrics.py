"""Prometheus metrics for policy (served when POLICY_METRICS_PORT is set). Counts and sizes only, never text."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["FINDINGS", "INSPECTIONS", "INSPECT_SECONDS", "SCANNED_CHARACTERS"]

INSPECTIONS = Counter("tollgate_policy_inspections_total", "Inspect calls by verdict", ["verdict"])
FINDINGS = Counter("tollgate_policy_findings_total", "Findings by detector and action", ["detector", "action"])
SCANNED_CHARACTERS = Counter("tollgate_policy_scanned_characters_total", "Characters of prompt text scanned")
INSPECT_SECONDS = Histogram(
    "tollgate_policy_inspect_seconds",
    "Time to scan, decide and redact one request (excluding the policy lookup)",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25),
)
