"""What the HTTP layer needs, built once per process: the gRPC channels, the usage publisher, the metrics, the
typed clients of billing, policy and router, and the application services on top of them.
Tests build :class:`Deps` against their own servers and inject it."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from starlette.requests import Request
from tollgate_common.event_auth import EventSigner
from tollgate_dlp.decisions import DEV_HASH_KEY

from .admission import ConcurrencyLimits, FailureThrottle, KeyGate
from .billing_client import BillingClient
from .channels import Channels
from .chat import ChatCompletions
from .config import Settings
from .keys import Keys
from .local_policy import LocalPolicy
from .metering_client import MeteringClient
from .metrics import Metrics
from .operators import OperatorBook
from .policy_client import PolicyClient
from .policy_state import PolicyStates
from .publisher import UsagePublisher
from .router_client import RouterClient
from .tokens import PromptTokenCounter

__all__ = ["Deps", "Services", "services"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Deps:
    channels: Channels
    publisher: UsagePublisher
    metrics: Metrics

    @classmethod
    async def start(cls, settings: Settings, metrics: Metrics | None = None) -> Deps:
        """Open the channels and start the publisher. Neither waits for its peer: ingress starts (and reports
        not-ready) while billing, policy, router or Kafka are still coming up."""
        metrics = metrics or Metrics()
        publisher = UsagePublisher(
            bootstrap=settings.kafka_bootstrap_servers,
            outbox_url=settings.outbox_database_url,
            metrics=metrics,
            send_timeout=settings.kafka_send_timeout_seconds,
            signer=EventSigner("ingress", settings.internal_keys),
            security=settings.kafka_security,
        )
        await publisher.start()
        return cls(channels=Channels.connect(settings), publisher=publisher, metrics=metrics)

    def ready(self) -> dict[str, bool]:
        return {"grpc_channels": self.channels.ready(), "kafka_producer": self.publisher.started}

    async def close(self) -> None:
        """Flush usage events (to Kafka or the outbox), then close the channels."""
        await self.publisher.close()
        await self.channels.close()


@dataclass(slots=True)
class Services:
    settings: Settings
    deps: Deps
    billing: BillingClient
    policy: PolicyClient
    router: RouterClient
    chat: ChatCompletions
    keys: Keys
    #: Usage analytics (None when the channels were built without metering, as some tests do).
    metering: MeteringClient | None
    #: API keys checked (and failures throttled) before a body is read.
    gate: KeyGate
    #: Admin token and named operator tokens → who is calling the admin API (tollgate_ingress.operators).
    operators: OperatorBook

    @classmethod
    def build(cls, settings: Settings, deps: Deps) -> Services:
        channels, metrics = deps.channels, deps.metrics
        timeout = settings.rpc_timeout_seconds
        billing = BillingClient(channels.billing, channels.metadata, timeout, metrics)
        policy = PolicyClient(channels.policy, channels.metadata, timeout, metrics)
        if settings.policy_in_process:
            in_process(policy, settings, deps)
        router = RouterClient(
            channels.router, channels.metadata, timeout=settings.router_timeout_seconds, catalogue_timeout=timeout,
            metrics=metrics,
        )
        gate = KeyGate(billing.key_info, FailureThrottle(settings.auth_failures_per_minute))
        limits = ConcurrencyLimits(settings.max_concurrent_requests_per_key, settings.max_concurrent_streams_per_key)
        return cls(
            settings=settings,
            deps=deps,
            billing=billing,
            policy=policy,
            router=router,
            chat=ChatCompletions(billing, policy, router, deps.publisher, PromptTokenCounter(), metrics, gate, limits),
            keys=Keys(billing, policy, router),
            metering=MeteringClient(channels.metering, channels.metadata, timeout)
            if channels.metering is not None else None,
            gate=gate,
            operators=OperatorBook(settings.admin_token, settings.operators),
        )

    async def shutdown(self, grace: float | None = None) -> None:
        """After the HTTP server stopped taking requests: let streams finish and bill, flush, close."""
        await self.chat.drain(self.settings.shutdown_grace_seconds if grace is None else grace)
        self.chat.counter.close()
        if self.policy.states is not None:
            await self.policy.states.close()
        if self.policy.local is not None:
            await self.policy.local.close()  # its last decisions reach Kafka or the outbox before the publisher closes
        await self.deps.close()


def in_process(policy: PolicyClient, settings: Settings, deps: Deps) -> None:
    """Let ``policy`` decide in this process (local_policy.py) with the states policy pushes (policy_state.py)."""
    if not settings.policy_hash_key:
        log.warning("INGRESS_POLICY_HASH_KEY is not set: match hashes use the public development key")
    hash_key = settings.policy_hash_key.encode() if settings.policy_hash_key else DEV_HASH_KEY
    policy.states = PolicyStates(
        deps.channels.policy, deps.channels.metadata, timeout=settings.rpc_timeout_seconds,
        max_age=settings.policy_max_age_seconds,
    )
    policy.local = LocalPolicy(deps.publisher, hash_key=hash_key)
    with contextlib.suppress(RuntimeError):  # no running loop (a synchronous test): the first request starts it
        policy.states.start()


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
