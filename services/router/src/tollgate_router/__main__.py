"""``python -m tollgate_router``: settings → logging and telemetry → server; SIGTERM drains and stops."""

from __future__ import annotations

import sys

from tollgate_common.config import load_or_exit
from tollgate_common.internal_auth import InternalAuth
from tollgate_common.logs import configure_logging
from tollgate_common.runtime import run, stop_event
from tollgate_common.telemetry import configure_telemetry, start_metrics_server

from .config import Settings
from .price_check import PriceCheckFailed, check_prices
from .server import serve


def main() -> None:
    settings = load_or_exit(Settings.from_env, "router")
    configure_logging("router", settings.log_level)

    async def _main() -> None:
        try:
            await check_prices(
                settings.catalogue, settings.metering_addr, InternalAuth("router", settings.internal_keys),
                mode=settings.price_check, timeout_seconds=settings.price_check_timeout_seconds,
            )
        except PriceCheckFailed as exc:
            lines = "\n".join(f"  - {p}" for p in exc.problems)
            print(f"tollgate-router: the catalogue does not match metering's price book:\n{lines}", file=sys.stderr)
            raise SystemExit(2) from None
        shutdown_telemetry = configure_telemetry("router")
        start_metrics_server(settings.metrics_port)
        try:
            await serve(settings, stop_event())
        finally:
            shutdown_telemetry()

    run(_main)


if __name__ == "__main__":
    main()
