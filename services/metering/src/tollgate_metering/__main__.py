"""Composition root and command line.

    python -m tollgate_metering [serve]
    python -m tollgate_metering rebuild --kafka BOOTSTRAP --into DB_URL [--compare-with LIVE_DB_URL]
    python -m tollgate_metering rebuild --from-archive LIVE_DB_URL --into DB_URL [--compare-with LIVE_DB_URL]
    python -m tollgate_metering verify-archive --database-url URL [--account ACCOUNT]

Exit statuses: 0 fine / equal / chain intact; 1 the rebuild differs from live or the chain is broken; 2 bad
configuration or arguments (bad env, bad price book, a price-book version conflict, a non-empty rebuild target).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from tollgate_common.config import ConfigError, load_or_exit
from tollgate_common.db import session_maker
from tollgate_common.log_access import log_access_from_env
from tollgate_common.logs import configure_logging
from tollgate_common.runtime import run, stop_event
from tollgate_common.telemetry import configure_telemetry, start_metrics_server

from .app import serve
from .application import Metering
from .config import DEFAULT_SCHEMA, Settings, load_price_book_file
from .domain import DEMO_PRICE_BOOK, PriceBook
from .errors import InvalidPriceBook, MeteringError
from .rebuild import compare_databases, live_price_books, rebuild, rebuild_from_archive
from .repository import open_database

PROG = "tollgate-metering"


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def _serve() -> int:
    settings = load_or_exit(Settings.from_env, "metering")
    configure_logging("metering", settings.log_level)
    shutdown_telemetry = configure_telemetry("metering")
    start_metrics_server(settings.metrics_port)
    status = 0

    async def main() -> None:
        nonlocal status
        try:
            await serve(settings, stop_event())
        except MeteringError as exc:  # e.g. the configured book reuses a stored version with other content
            status = _fail(str(exc))

    try:
        run(main)
    finally:
        shutdown_telemetry()
    return status


def _configured_book(path: str | None) -> PriceBook:
    path = path or os.environ.get("METERING_PRICE_BOOK_FILE", "").strip() or None
    return load_price_book_file(Path(path)) if path else DEMO_PRICE_BOOK


def _rebuild(args: argparse.Namespace) -> int:
    try:
        book = _configured_book(args.price_book)
    except InvalidPriceBook as exc:
        return _fail("invalid price book: " + "; ".join(exc.problems))
    try:  # connect and check producers as the live consumer does (METERING_KAFKA_*, TOLLGATE_INTERNAL_SECRET)
        access = log_access_from_env("METERING")
    except ConfigError as exc:
        return _fail("invalid configuration: " + "; ".join(exc.problems))

    async def main() -> int:
        books: list[PriceBook] = []
        versions_from = args.compare_with or args.from_archive
        if versions_from:  # rate with the versions the live service recorded, as it did
            books = await live_price_books(versions_from, args.schema)
        into_schema = args.into_schema or args.schema
        if args.from_archive:
            result = await rebuild_from_archive(args.from_archive, args.into, [*books, book], schema=into_schema,
                                                archive_schema=args.schema)
        else:
            result = await rebuild(args.kafka, args.into, [*books, book], schema=into_schema,
                                   security=access.security, verify=access.verifier())
        print(f"rebuilt {args.into}: {result.events_read} events read, {result.rated} rated, "
              f"{len(result.refused)} refused (producer not verified)")
        for refused in result.refused[:20]:
            print(f"  refused: {refused.describe()}")
        if not args.compare_with:
            return 0
        report = await compare_databases(
            args.compare_with, args.into, live_schema=args.schema, rebuilt_schema=args.into_schema or args.schema
        )
        print(report.render())
        return 0 if report.equal else 1

    return _run_command(main)


def _verify_archive(args: argparse.Namespace) -> int:
    async def main() -> int:
        engine = await open_database(args.database_url, args.schema)
        try:
            problems = await Metering(session_maker(engine)).verify_archive(args.account)
        finally:
            await engine.dispose()
        for problem in problems:
            print(f"BROKEN {problem}")
        print("archive chain: " + ("BROKEN" if problems else "intact"))
        return 1 if problems else 0

    return _run_command(main)


def _run_command(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    configure_logging("metering", os.environ.get("METERING_LOG_LEVEL", "WARNING"))
    try:
        return asyncio.run(main())
    except MeteringError as exc:
        return _fail(str(exc))
    except SQLAlchemyError as exc:
        return _fail(f"database error: {exc.__class__.__name__}: {exc}")
    except (OSError, RuntimeError) as exc:  # e.g. Kafka not answering
        return _fail(f"{exc.__class__.__name__}: {exc}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tollgate_metering", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the gRPC server and the usage consumer (the default)")
    rb = sub.add_parser("rebuild", help="replay tollgate.usage.v1 into a fresh database and compare with live")
    source = rb.add_mutually_exclusive_group(required=True)
    source.add_argument("--kafka", metavar="BOOTSTRAP", help="replay tollgate.usage.v1 from these Kafka servers")
    source.add_argument("--from-archive", metavar="DB_URL",
                        help="replay the event archive of this metering database instead of Kafka")
    rb.add_argument("--into", required=True, metavar="DB_URL", help="an empty database for the rebuilt state")
    rb.add_argument("--compare-with", metavar="LIVE_DB_URL", help="the live database to reconcile with")
    rb.add_argument("--price-book", metavar="FILE",
                    help="price book YAML (default: METERING_PRICE_BOOK_FILE, else the built-in demo book)")
    rb.add_argument("--schema", default=DEFAULT_SCHEMA, help="PostgreSQL schema of the live database")
    rb.add_argument("--into-schema", help="PostgreSQL schema for the rebuilt state (default: --schema)")
    va = sub.add_parser("verify-archive", help="recompute the event archive's hash chains")
    va.add_argument("--database-url", required=True)
    va.add_argument("--account", help="only this account")
    va.add_argument("--schema", default=DEFAULT_SCHEMA)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "rebuild":
        return _rebuild(args)
    if args.command == "verify-archive":
        return _verify_archive(args)
    return _serve()


if __name__ == "__main__":
    sys.exit(main())
