"""Billing's webhook settings (``BILLING_WEBHOOK_*``), one typed object read with the rest of config.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from tollgate_common.config import EnvReader

from .webhook_rules import IpNetwork, RetryPolicy, parse_networks

__all__ = ["WebhookSettings", "webhook_settings_from_env"]


@dataclass(frozen=True)
class WebhookSettings:
    #: Off: no deliveries are made (the queue still fills, so turning it on delivers what is due).
    enabled: bool = True
    #: CIDRs billing may call although they are not public (webhook_rules.py); http:// only to these.
    allowed_networks: tuple[IpNetwork, ...] = ()
    #: One attempt's whole time (connect, send, answer), so a slow receiver never holds a worker long.
    timeout_seconds: float = 5.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: How often the worker looks for new alert events and due retries.
    poll_seconds: float = 1.0
    #: Deliveries in flight at once.
    concurrency: int = 8
    #: How long a gap in the outbox's ids is waited for (a transaction still committing) before it is passed.
    gap_grace_seconds: float = 10.0


def webhook_settings_from_env(env: EnvReader) -> WebhookSettings:
    d = WebhookSettings()
    try:
        networks = parse_networks(env.str("WEBHOOK_ALLOWED_NETWORKS", ""))
    except ValueError as exc:
        env.problems.append(f"BILLING_WEBHOOK_ALLOWED_NETWORKS: {exc}")
        networks = ()
    retry = RetryPolicy(
        max_attempts=env.int("WEBHOOK_MAX_ATTEMPTS", d.retry.max_attempts, minimum=1),
        max_age_seconds=env.float("WEBHOOK_MAX_AGE_SECONDS", d.retry.max_age_seconds, minimum=1.0),
        base_seconds=env.float("WEBHOOK_RETRY_BASE_SECONDS", d.retry.base_seconds, minimum=0.01),
        max_delay_seconds=env.float("WEBHOOK_RETRY_MAX_DELAY_SECONDS", d.retry.max_delay_seconds, minimum=0.01),
    )
    return WebhookSettings(
        enabled=env.bool("WEBHOOK_ENABLED", d.enabled),
        allowed_networks=networks,
        timeout_seconds=env.float("WEBHOOK_TIMEOUT_SECONDS", d.timeout_seconds, minimum=0.1),
        retry=retry,
        poll_seconds=env.float("WEBHOOK_POLL_SECONDS", d.poll_seconds, minimum=0.05),
        concurrency=env.int("WEBHOOK_CONCURRENCY", d.concurrency, minimum=1),
        gap_grace_seconds=env.float("WEBHOOK_GAP_GRACE_SECONDS", d.gap_grace_seconds, minimum=0.0),
    )
