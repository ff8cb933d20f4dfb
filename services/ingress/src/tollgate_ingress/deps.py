"""What the HTTP layer needs, built once per process: the gRPC channels, the usage publisher, the metrics, and the
application services on top of them. Tests build :class:`Deps` against their own servers and inject it."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from .application import Admin, ChatCompletions, Keys
from .clients import Upstreams
from .config import Settings
from .metrics import Metrics
from .publisher import UsagePublisher
from .tokens import PromptTokenCounter

__all__ = ["Deps", "Services", "services"]


@dataclass(slots=True)
class Deps:
    upstreams: Upstreams
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
        )
        await publisher.start()
        return cls(upstreams=Upstreams.connect(settings), publisher=publisher, metrics=metrics)

    def ready(self) -> dict[str, bool]:
        return {"grpc_channels": self.upstreams.ready(), "kafka_producer": self.publisher.started}

    async def close(self) -> None:
        """Flush usage events (to Kafka or the outbox), then close the channels."""
        await self.publisher.close()
        await self.upstreams.close()


@dataclass(slots=True)
class Services:
    settings: Settings
    deps: Deps
    chat: ChatCompletions
    keys: Keys
    admin: Admin

    @classmethod
    def build(cls, settings: Settings, deps: Deps) -> Services:
        return cls(
            settings=settings,
            deps=deps,
            chat=ChatCompletions(deps.upstreams, deps.publisher, PromptTokenCounter(), deps.metrics, settings),
            keys=Keys(deps.upstreams, settings),
            admin=Admin(deps.upstreams, settings),
        )

    async def shutdown(self, grace: float | None = None) -> None:
        """After the HTTP server stopped taking requests: let streams finish and bill, flush, close."""
        await self.chat.drain(self.settings.shutdown_grace_seconds if grace is None else grace)
        await self.deps.close()


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
