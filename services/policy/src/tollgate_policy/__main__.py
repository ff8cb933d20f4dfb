"""``python -m tollgate_policy`` runs the DLP service.

Composition root: settings (exit 2 on a bad value) → logging/telemetry/metrics → the app (database, gRPC) → wait
for SIGTERM or SIGINT → graceful stop.
"""

from __future__ import annotations

import logging

from tollgate_common.config import load_or_exit
from tollgate_common.logs import configure_logging
from tollgate_common.runtime import run, stop_event
from tollgate_common.telemetry import configure_telemetry, start_metrics_server
from tollgate_dlp.errors import StorageUnavailable

from .app import serve
from .config import Settings


def main() -> None:
    settings = load_or_exit(Settings.from_env, "policy")
    configure_logging("policy", settings.log_level)
    # At DEBUG these two narrate every SQLite call and event-loop detail; policy's own debug lines are the point.
    for chatty in ("aiosqlite", "grpc._cython.cygrpc"):
        logging.getLogger(chatty).setLevel(max(logging.INFO, logging.getLogger().level))
    shutdown_telemetry = configure_telemetry("policy")
    start_metrics_server(settings.metrics_port)

    async def _main() -> None:
        await serve(settings, stop_event())

    try:
        run(_main)
    except StorageUnavailable as exc:
        logging.getLogger("tollgate_policy").error("cannot start: %s", exc)
        raise SystemExit(1) from None
    finally:
        shutdown_telemetry()


if __name__ == "__main__":
    main()
