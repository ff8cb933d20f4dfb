"""``python -m tollgate_billing [serve]`` runs the service; ``python -m tollgate_billing rebuild …`` rebuilds.

Composition root: settings → logging/telemetry → the app (database, gRPC, Kafka) → wait for SIGTERM → graceful stop.
"""

from __future__ import annotations

import argparse
import os
import sys

from tollgate_common.config import load_or_exit
from tollgate_common.logs import configure_logging
from tollgate_common.runtime import run, stop_event
from tollgate_common.telemetry import configure_telemetry, start_metrics_server

from . import rebuild
from .app import serve
from .config import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tollgate_billing", description="Tollgate billing service")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the gRPC service (the default)")
    rebuild_cmd = commands.add_parser(
        "rebuild", help="rebuild billing's tables from tollgate.billing.v1 and reconcile them with the live ones"
    )
    rebuild.add_arguments(rebuild_cmd, os.environ.get("BILLING_KAFKA_BOOTSTRAP_SERVERS") or "127.0.0.1:9092")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "rebuild":
        configure_logging("billing", os.environ.get("BILLING_LOG_LEVEL") or "WARNING")
        sys.exit(rebuild.main(args))
    settings = load_or_exit(Settings.from_env, "billing")
    configure_logging("billing", settings.log_level)
    shutdown_telemetry = configure_telemetry("billing")
    start_metrics_server(settings.metrics_port)

    async def _main() -> None:
        await serve(settings, stop_event())

    try:
        run(_main)
    finally:
        shutdown_telemetry()


if __name__ == "__main__":
    main()
