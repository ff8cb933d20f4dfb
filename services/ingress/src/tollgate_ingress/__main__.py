"""Composition root: settings → logging/telemetry → channels and publisher → the HTTP server; graceful stop.

On SIGTERM (or SIGINT): stop accepting connections, let in-flight requests finish (streams included, up to
INGRESS_SHUTDOWN_GRACE_SECONDS), let router streams whose client left finish and bill, flush the Kafka producer
(what it cannot take goes to the outbox), close the gRPC channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn
from tollgate_common.config import load_or_exit
from tollgate_common.logs import configure_logging
from tollgate_common.runtime import run, stop_event
from tollgate_common.telemetry import configure_telemetry, start_metrics_server

from .api import create_app
from .config import Settings
from .deps import Deps
from .tokens import PromptTokenCounter

log = logging.getLogger("tollgate_ingress")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the composition root owns signals (via ``stop_event``) and must
    still flush and close after the server stops, which uvicorn's re-raised signal would prevent."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run ingress until ``stop`` is set; usable in-process (tests) as well as from :func:`main`."""
    shutdown_telemetry = configure_telemetry("ingress")
    PromptTokenCounter()  # loads the tokenizer now rather than on the first request
    deps = await Deps.start(settings)
    app = create_app(settings, deps)
    app.instrument()  # full spans with a collector, else only the traceparent (tollgate_common.telemetry)
    stop_metrics = start_metrics_server(settings.metrics_port, deps.metrics.registry)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="none",  # already on uvloop (tollgate_common.runtime.run)
        http="httptools",
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_seconds)),
    )
    server = _Server(config)
    serving = asyncio.create_task(server.serve())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if serving.done():
            serving.result()  # surfaces a failure to start (port taken…)
            return
        log.info("stopping: no new connections; finishing in-flight requests")
        server.should_exit = True
        await serving
    finally:
        stopping.cancel()
        await app.state.services.shutdown()
        stop_metrics()
        shutdown_telemetry()
        log.info("stopped")


def main() -> None:
    settings = load_or_exit(Settings.from_env, "ingress")
    configure_logging("ingress", settings.log_level)

    async def _main() -> None:
        await serve(settings, stop_event())

    run(_main)


if __name__ == "__main__":
    main()
