"""What the HTTP layer needs, built once per process: the gRPC channels, the usage publisher, the metrics, the
typed clients of billing, policy and router, and the application services on top of them.
Tests build :class:`Deps` against their own servers and inject it."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from tollgate_common.event_auth import EventSigner

from .admission import ConcurrencyLimits, FailureThrottle, KeyGate
from .billing_client import BillingClient
from .channels import Channels
from .chat import ChatCompletions
from .config import Settings
from .keys import Keys
from .metering_client import MeteringClient
from .metrics import Metrics
from .operators import OperatorBook
from .policy_client import PolicyClient
from .publisher import UsagePublisher
from .router_client import RouterClient
from .tokens import PromptTokenCounter

__all__ = ["Deps", "Services", "services"]


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
        await self.deps.close()


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
