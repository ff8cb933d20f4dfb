"""The ``tollgate`` command: one entry point for the operators' work on the event log.

Exit statuses (every subcommand): 0 all is well / equal / intact; 1 a difference, a gap or a broken chain was
found (the report says which); 2 bad usage, or the command could not run (a database or broker that does not
answer, a live database given as a replay target). ``--json`` prints one JSON document on stdout instead of the
text report; progress bars go to stderr, on a terminal only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from tollgate_common.config import ConfigError
from tollgate_common.log_access import LogAccess, log_access_from_env

from .progress import Bars
from .targets import BadUsage, live_locations, parse_locations

PROG = "tollgate"
EXIT_OK, EXIT_DIFFERENT, EXIT_USAGE = 0, 1, 2

DESCRIPTION = """\
Tollgate's operator command: replay the event log into fresh databases and reconcile them with the live ones,
check that every request was rated and settled, re-rate a period under another price book, export and verify an
account's audit trail, and look at the platform's health.

Databases are given as URLs (sqlite:///path or postgresql://user@host/db). Billing and metering keep separate
databases; name each with billing=URL and metering=URL, or give one PostgreSQL URL for both (each service in its
own schema). Where a live database is needed and none is given, BILLING_DATABASE_URL and METERING_DATABASE_URL
are used, as the services themselves read them.

Kafka is read as the services read it: TLS/SASL from TOLLGATE_KAFKA_SECURITY_PROTOCOL, TOLLGATE_KAFKA_SASL_MECHANISM,
TOLLGATE_KAFKA_SASL_USERNAME, TOLLGATE_KAFKA_SASL_PASSWORD, TOLLGATE_KAFKA_SSL_CA_FILE, TOLLGATE_KAFKA_SSL_CERT_FILE,
TOLLGATE_KAFKA_SSL_KEY_FILE; and every record's producer signature is checked with TOLLGATE_INTERNAL_SECRET (and
TOLLGATE_INTERNAL_SECRET_PREVIOUS while rotating), required outside development (TOLLGATE_ENV). A record the live
consumers would park (unsigned, foreign-signed, from a service that may not produce its type) is skipped and
listed as refused, never applied or counted.

exit status: 0 ok / equal / intact, 1 difference or gap found, 2 bad usage or could not run.
"""

REPLAY_EPILOG = """\
examples:
  tollgate replay --into sqlite:///var/rebuild.db \\
      --compare-with billing=sqlite:///var/billing.db --compare-with metering=sqlite:///var/metering.db
  tollgate replay --from-time 2026-11-20T00:00:00Z --into postgresql://postgres@db/rebuild
  tollgate replay --archive billing=sqlite:///var/billing.db --archive metering=sqlite:///var/metering.db \\
      --into sqlite:///var/rebuild.db --compare-with …

--into names a fresh target (a bare sqlite:///x.db becomes x-billing.db and x-metering.db). Replaying again into
the same target changes nothing (events are deduplicated); a live database (one with consumer offsets or outbox
rows) is refused. The report lists, per account, balance, held, charges, credits, refunds, holds and per-model
usage that differ, and the first differing event; exit 1 on any difference.
"""


_YEAR_9999_MS = 253_402_300_799_999


def parse_time(value: str) -> int:
    """Unix milliseconds, or an ISO 8601 time (``2026-11-20``, ``2026-11-20T12:00:00Z``; UTC when no zone)."""
    value = value.strip()
    if value.isdigit():
        if int(value) > _YEAR_9999_MS:
            raise argparse.ArgumentTypeError(f"not a time: {value!r} (after the year 9999)")
        return int(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {value!r} (ISO 8601 or unix milliseconds)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _nonnegative(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an offset: {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError("an offset is 0 or more")
    return n


def _kafka_default() -> str:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "BILLING_KAFKA_BOOTSTRAP_SERVERS", "METERING_KAFKA_BOOTSTRAP_SERVERS"):
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    return "127.0.0.1:9092"


def _log_access() -> LogAccess:
    """Kafka security settings and the producer check, from TOLLGATE_KAFKA_* and TOLLGATE_INTERNAL_SECRET."""
    try:
        return log_access_from_env("TOLLGATE")
    except ConfigError as exc:
        raise BadUsage("invalid configuration: " + "; ".join(exc.problems)) from None


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document instead of the text report")
    common.add_argument("--no-progress", action="store_true", help="no progress bars (they are off a terminal anyway)")

    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    rp = sub.add_parser("replay", parents=[common], help="rebuild billing and metering from the log; reconcile",
                        description="Rebuild billing's and metering's read models (accounts, wallets, holds, ledger, "
                                    "rated usage, usage aggregates) from the event log with the services' own "
                                    "projection code, into fresh databases, and reconcile them with the live ones.",
                        epilog=REPLAY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = rp.add_mutually_exclusive_group()
    src.add_argument("--from-offset", type=_nonnegative, metavar="N",
                     help="read Kafka from offset N of each partition (default: the beginning)")
    src.add_argument("--from-time", type=parse_time, metavar="TIME",
                     help="read Kafka from the first message at or after TIME (ISO 8601 or unix ms)")
    src.add_argument("--archive", action="append", metavar="[SERVICE=]URL",
                     help="read the durable copies instead of Kafka: billing's outbox and metering's hash-chained "
                          "archive (repeat per service)")
    rp.add_argument("--kafka", default=None, metavar="BOOTSTRAP",
                    help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS, BILLING_/METERING_… or "
                         "127.0.0.1:9092)")
    rp.add_argument("--into", action="append", required=True, metavar="[SERVICE=]URL",
                    help="where the rebuilt state goes (fresh, or an earlier replay's)")
    rp.add_argument("--into-schema-prefix", default="", metavar="PREFIX",
                    help="PostgreSQL: rebuild into schemas PREFIXbilling and PREFIXmetering")
    rp.add_argument("--compare-with", action="append", metavar="[SERVICE=]URL",
                    help="the live databases to reconcile with")
    rp.add_argument("--price-book", metavar="FILE",
                    help="price book YAML to rate with when the live metering database is not given "
                         "(default: METERING_PRICE_BOOK_FILE, else the built-in demo book)")
    rp.set_defaults(run=_replay)

    _add_audit(sub, common)
    _add_reconcile(sub, common)
    _add_rerate(sub, common)
    _add_status(sub, common)
    _add_usage(sub, common)
    return parser


def _window(args: argparse.Namespace) -> tuple[int, int]:
    to = args.to if args.to is not None else int(time.time() * 1000) + 1
    if to <= args.from_:
        raise BadUsage("--to must be after --from")
    return args.from_, to


AUDIT_EPILOG = """\
examples:
  tollgate audit export --account acct_42 --from 2026-11-01 --to 2026-12-01 --out audit-acct_42-2026-11 \\
      --db billing=sqlite:///var/billing.db --db metering=sqlite:///var/metering.db --sign-key ops-ed25519.pem
  tollgate audit verify audit-acct_42-2026-11 --public-key ops-ed25519.pub.pem

The export reads billing's outbox (account, keys, credits, holds placed / captured / expired / reconciled),
metering's hash-chained archive (UsageRecorded) and metering's outbox (UsageRated), read-only, and writes
events.jsonl, events.csv and manifest.json (event count, hash-chain head, a Merkle root per UTC day, each file's
SHA-256), plus manifest.sig when --sign-key names an Ed25519 PEM private key
(openssl genpkey -algorithm ed25519 -out ops-ed25519.pem; openssl pkey -in ops-ed25519.pem -pubout).

verify needs nothing but the directory: no database, no network, no Tollgate service. It names each event that
was edited, removed, reordered or inserted (seq, event id, line), exit 1 if anything is wrong.
"""


def _add_audit(sub: Any, common: argparse.ArgumentParser) -> None:
    audit = sub.add_parser("audit", help="export an account's audit trail; verify an export offline",
                           description="Verifiable audit exports: hash-chained, Merkle root per day, optionally "
                                       "signed.", epilog=AUDIT_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    asub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    ex = asub.add_parser("export", parents=[common], help="write one account's events, chained, to a directory",
                         epilog=AUDIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("--account", required=True, metavar="ACCOUNT_ID")
    ex.add_argument("--from", dest="from_", type=parse_time, default=0, metavar="TIME",
                    help="first instant included (ISO 8601 or unix ms; default: the beginning)")
    ex.add_argument("--to", type=parse_time, default=None, metavar="TIME",
                    help="first instant excluded (default: now)")
    ex.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
    ex.add_argument("--db", action="append", metavar="[SERVICE=]URL",
                    help="the live databases, read-only (default: BILLING_DATABASE_URL, METERING_DATABASE_URL)")
    ex.add_argument("--sign-key", type=Path, metavar="PEM", help="an Ed25519 private key: sign the manifest")
    ex.set_defaults(run=_audit_export)
    ve = asub.add_parser("verify", parents=[common], help="check an export using nothing but its files",
                         epilog=AUDIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ve.add_argument("directory", type=Path, metavar="DIR")
    ve.add_argument("--public-key", type=Path, metavar="PEM",
                    help="the operator's Ed25519 public key: the manifest must be signed by it")
    ve.set_defaults(run=_audit_verify)


def _audit_export(args: argparse.Namespace, bars: Bars) -> Coroutine[Any, Any, tuple[int, Any]]:
    from .audit import export

    stores = live_locations(args.db, "--db")
    window = _window(args)
    out: Path = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadUsage(f"--out {out}: not an empty directory (an export is never written over another)")

    async def run() -> tuple[int, Any]:
        return EXIT_OK, await export(args.account, window, stores, out, sign_key=args.sign_key, bars=bars)

    return run()


def _audit_verify(args: argparse.Namespace, bars: Bars) -> Coroutine[Any, Any, tuple[int, Any]]:
    from .audit_files import MANIFEST, verify_dir

    if not (args.directory / MANIFEST).is_file():
        raise BadUsage(f"{args.directory}: no {MANIFEST} here, so not an audit export")

    async def run() -> tuple[int, Any]:
        try:
            report = verify_dir(args.directory, public_key=args.public_key, step=bars.task("verifying", None))
        except (ValueError, KeyError, TypeError) as exc:
            raise BadUsage(f"{args.directory / MANIFEST} is not a readable manifest ({exc})") from None
        return (EXIT_OK if report.intact else EXIT_DIFFERENT), report

    return run()


RECONCILE_EPILOG = """\
examples:
  tollgate reconcile --kafka kafka:9092 --db billing=sqlite:///var/billing.db --db metering=sqlite:///var/metering.db
  tollgate reconcile --account acct_42 --grace 300 --json
  tollgate reconcile --provider-usage openai-usage-2026-11.json --provider openai --from 2026-11-01 --to 2026-12-01

gap kinds: usage_not_rated, rated_without_usage, usage_not_settled, settled_more_than_once,
attempt_without_usage, hold_expired_unreconciled, unbalanced_transaction, ledger_not_zero, wallet_balance,
wallet_held; with --provider-usage also provider_only, tollgate_only, provider_model_differs,
provider_tokens_differ, provider_requests_differ, provider_cost_differs.

--provider-usage FILE: CSV or JSON, one row per request (request_id = the id the provider answered with) or per
time bucket (OpenAI's organization usage API, Anthropic's usage report: start/end and results). Columns, any
case: request_id|id, timestamp|start_time|starting_at, end_time|ending_at (buckets), model, input_tokens|
prompt_tokens (or Anthropic's uncached_input_tokens + cache_read_input_tokens + cache_creation), output_tokens|
completion_tokens, input_cached_tokens|cached_tokens, num_model_requests, cost|amount (decimal). Missing columns
are not compared. The cost is compared in the decimals the file gives.
"""


def _add_reconcile(sub: Any, common: argparse.ArgumentParser) -> None:
    rc = sub.add_parser("reconcile", parents=[common], help="is every request rated once, settled once, billed?",
                        description="Completeness of the money trail: every UsageRecorded has exactly one rating "
                                    "and one capture or expiry, every successful upstream attempt has a usage event, "
                                    "every ledger transaction and the ledger net to zero, wallets agree with their "
                                    "postings and open holds. Gaps are listed by id; exit 1 if there is any.",
                        epilog=RECONCILE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    rc.add_argument("--db", action="append", metavar="[SERVICE=]URL",
                    help="the live databases, read-only (default: BILLING_DATABASE_URL, METERING_DATABASE_URL)")
    rc.add_argument("--kafka", default=None, metavar="BOOTSTRAP",
                    help="read tollgate.usage.v1 and tollgate.attempts.v1 here (default: KAFKA_BOOTSTRAP_SERVERS…)")
    rc.add_argument("--no-kafka", action="store_true",
                    help="only the databases (metering's archive stands for the usage topic; attempts unchecked)")
    rc.add_argument("--account", action="append", metavar="ACCOUNT_ID", help="only these accounts (repeat)")
    rc.add_argument("--grace", type=float, default=60.0, metavar="SECONDS",
                    help="what is younger may still be in the pipeline: in flight, not a gap (default 60)")
    rc.add_argument("--provider-usage", type=Path, metavar="FILE",
                    help="a provider's own usage export (CSV or JSON; per request id or per time bucket) to compare "
                         "with the router's attempts: tokens, model and cost, differences listed by id")
    rc.add_argument("--provider", metavar="NAME",
                    help="with --provider-usage: the file is this provider's (compare only our attempts on it)")
    rc.add_argument("--from", dest="from_", type=parse_time, default=None, metavar="TIME",
                    help="with --provider-usage: the period compared (default: the file's own span)")
    rc.add_argument("--to", type=parse_time, default=None, metavar="TIME", help="end of that period (excluded)")
    rc.add_argument("--price-book", metavar="FILE",
                    help="with --provider-usage: the price book for our cost when metering's recorded versions do "
                         "not cover it (default: METERING_PRICE_BOOK_FILE, else the built-in demo book)")
    rc.set_defaults(run=_reconcile)


def _reconcile(args: argparse.Namespace, bars: Bars) -> Coroutine[Any, Any, tuple[int, Any]]:
    from .provider_invoice import load_provider_usage
    from .reconcile import reconcile

    stores = live_locations(args.db, "--db")
    if args.grace < 0:
        raise BadUsage("--grace is 0 or more seconds")
    kafka = None if args.no_kafka else (args.kafka or _kafka_default())
    access = _log_access() if kafka else LogAccess()
    rows = None
    if args.provider_usage is not None:
        if kafka is None:
            raise BadUsage("--provider-usage compares with the router's attempts in Kafka: drop --no-kafka")
        rows = load_provider_usage(args.provider_usage)
    elif args.provider or args.from_ is not None or args.to is not None or args.price_book:
        raise BadUsage("--provider, --from, --to and --price-book go with --provider-usage")
    window = None
    if args.from_ is not None or args.to is not None:
        window = (args.from_ or 0, args.to if args.to is not None else int(time.time() * 1000) + 1)
        if window[1] <= window[0]:
            raise BadUsage("--to must be after --from")

    async def run() -> tuple[int, Any]:
        report = await reconcile(stores, kafka=kafka, accounts=args.account, grace_s=args.grace, bars=bars,
                                 access=access)
        if rows is not None and kafka is not None:
            await _compare_provider_usage(report, rows, args, stores["metering"], kafka, access, window, bars)
        return (EXIT_OK if report.complete else EXIT_DIFFERENT), report

    return run()


async def _compare_provider_usage(report: Any, rows: Any, args: argparse.Namespace, metering: Any, kafka: str,
                                  access: LogAccess, window: tuple[int, int] | None, bars: Bars) -> None:
    from tollgate_metering.rebuild import live_price_books

    from .provider_invoice import compare, read_attempts
    from .reconcile import Gap
    from .replay import configured_price_book

    books = await live_price_books(metering.url, metering.schema)
    if args.price_book or not books:
        books.append(configured_price_book(args.price_book))
    attempts = await read_attempts(kafka, books, access, bars, report.refused)
    comparison = compare(rows, attempts, file=str(args.provider_usage), window=window, provider=args.provider)
    report.provider_usage = comparison
    report.gaps += [Gap(d.kind, d.id, d.account_id, d.detail) for d in comparison.differences]


RERATE_EPILOG = """\
examples:
  tollgate rerate --price-book prices-2027.yaml --from 2026-11-01 --to 2026-12-01 --db sqlite:///var/metering.db
  tollgate rerate --price-book eur-book.yaml --fx fx.yaml --account acct_42 --json

exit status 0 once the report is printed (a what-if has no "difference" to fail on), 2 on bad usage.
"""


def _add_rerate(sub: Any, common: argparse.ArgumentParser) -> None:
    rr = sub.add_parser("rerate", parents=[common], help="what-if margins under another price book (read-only)",
                        description="Re-rate a period's rated usage under another price book (and exchange rates), "
                                    "per account, model and project, beside what was charged. Reads metering's "
                                    "rated_usage through a read-only connection; writes nothing anywhere.",
                        epilog=RERATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    rr.add_argument("--price-book", required=True, type=Path, metavar="FILE",
                    help="a price book YAML, as METERING_PRICE_BOOK_FILE takes")
    rr.add_argument("--from", dest="from_", type=parse_time, default=0, metavar="TIME",
                    help="first usage instant included (default: the beginning)")
    rr.add_argument("--to", type=parse_time, default=None, metavar="TIME", help="first excluded (default: now)")
    rr.add_argument("--account", action="append", metavar="ACCOUNT_ID", help="only these accounts (repeat)")
    rr.add_argument("--fx", type=Path, metavar="FILE", help='exchange rates, YAML/JSON: {"USD/EUR": "0.92"}')
    rr.add_argument("--db", action="append", metavar="[metering=]URL",
                    help="metering's database, read-only (default: METERING_DATABASE_URL)")
    rr.set_defaults(run=_rerate)


def _rerate(args: argparse.Namespace, bars: Bars) -> Coroutine[Any, Any, tuple[int, Any]]:
    from .rerate import rerate

    values = [v if "=" in v.split("://")[0] else f"metering={v}" for v in (args.db or [])]
    metering = live_locations(values, "--db", needed=("metering",))["metering"]
    window = _window(args)

    async def run() -> tuple[int, Any]:
        report = await rerate(metering, args.price_book, window, accounts=args.account, fx_path=args.fx, bars=bars)
        return EXIT_OK, report

    return run()


STATUS_EPILOG = """\
examples:
  tollgate status
  tollgate status --grpc billing=billing:50053 --ingress http://ingress:8080 --kafka kafka:9092 --json
"""


def _add_status(sub: Any, common: argparse.ArgumentParser) -> None:
    st = sub.add_parser("status", parents=[common], help="health, consumer lag, outbox backlogs, holds",
                        description="The platform at a glance: each service's health, consumer lag per group and "
                                    "topic, unpublished outbox rows, open holds and expired ones awaiting "
                                    "reconciliation. Exit 1 when a service is not serving.",
                        epilog=STATUS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    st.add_argument("--db", action="append", metavar="[SERVICE=]URL",
                    help="billing's and metering's databases, read-only (default: BILLING_/METERING_DATABASE_URL)")
    st.add_argument("--outbox", action="append", default=[], metavar="SERVICE=URL",
                    help="another service's outbox database, e.g. ingress=sqlite:///var/ingress-outbox.db")
    st.add_argument("--grpc", action="append", default=[], metavar="SERVICE=HOST:PORT",
                    help="where a gRPC service answers (default: ROUTER_ADDR, POLICY_ADDR, BILLING_ADDR, "
                         "METERING_ADDR, else 127.0.0.1:50051…50054)")
    st.add_argument("--ingress", default=None, metavar="URL",
                    help="ingress's base URL (default: TOLLGATE_INGRESS_URL, else http://127.0.0.1:8080)")
    st.add_argument("--kafka", default=None, metavar="BOOTSTRAP", help="the broker (default: KAFKA_BOOTSTRAP_SERVERS…)")
    st.set_defaults(run=_status)


GRPC_DEFAULTS = {"router": ("ROUTER_ADDR", 50051), "policy": ("POLICY_ADDR", 50052),
                 "billing": ("BILLING_ADDR", 50053), "metering": ("METERING_ADDR", 50054)}


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise BadUsage(f"{what}: give SERVICE=VALUE, not {value!r}")
        out[name] = rest
    return out


def _status(args: argparse.Namespace, bars: Bars) -> Coroutine[Any, Any, tuple[int, Any]]:
    from .status import status
    from .targets import DEFAULT_SCHEMAS, Location

    databases = dict(live_locations(args.db, "--db"))
    for name, url in _pairs(args.outbox, "--outbox").items():
        parse_locations([f"billing={url}"], "--outbox", needed=("billing",))  # the URL's checks and messages
        databases[name] = Location(url, DEFAULT_SCHEMAS.get(name, name))
    given = _pairs(args.grpc, "--grpc")
    unknown = sorted(set(given) - set(GRPC_DEFAULTS))
    if unknown:
        raise BadUsage(f"--grpc: no gRPC service {', '.join(unknown)} (one of {', '.join(GRPC_DEFAULTS)})")
    addresses = {name: given.get(name) or os.environ.get(env, "").strip() or f"127.0.0.1:{port}"
                 for name, (env, port) in GRPC_DEFAULTS.items()}
    ingress = args.ingress or os.environ.get("TOLLGATE_INGRESS_URL", "").strip() or "http://127.0.0.1:8080"
    security = _log_access().security

    async def run() -> tuple[int, Any]:
        report = await status(databases, grpc_addresses=addresses, ingress_url=ingress,
                              kafka=args.kafka or _kafka_default(), bars=bars, security=security)
        return (EXIT_OK if report.healthy else EXIT_DIFFERENT), report

    return run()


def _replay(args: argparse.Namespace, bars: Bars) -> Coroutine[Any, Any, tuple[int, Any]]:
    from .replay import ReplaySource, replay

    into = parse_locations(args.into, "--into", schema_prefix=args.into_schema_prefix, create=True)
    compare = live_locations(args.compare_with, "--compare-with") if args.compare_with else None
    archive = live_locations(args.archive, "--archive") if args.archive else None
    if compare:
        for service in into:
            if into[service] == compare[service]:
                raise BadUsage(f"--into and --compare-with name the same {service} database")
    source = ReplaySource(bootstrap=args.kafka or _kafka_default(), from_offset=args.from_offset,
                          from_time_ms=args.from_time, archive=archive,
                          access=LogAccess() if archive else _log_access())

    async def run() -> tuple[int, Any]:
        report = await replay(source, into, compare_with=compare, price_book=args.price_book, bars=bars)
        return (EXIT_OK if report.equal else EXIT_DIFFERENT), report

    return run()


USAGE_EPILOG = """\
examples:
  tollgate usage providers --from 2026-11-01 --to 2026-12-01 --format csv --out providers-2026-11.csv \\
      --db metering=sqlite:///var/metering.db
  tollgate usage providers --from 2026-11-01 --to 2026-12-01 --account acct_42 --format json

One line per provider, deployment, model and upstream model: attempts, succeeded, failed (by outcome), attempts
with unknown usage (timed out, cancelled, cut: the provider may have billed them), the tokens the provider
reported, and their upstream cost under the price book in force at each attempt (metering's recorded versions
from --db, else --price-book / METERING_PRICE_BOOK_FILE). Source: the router's attempt events on Kafka
(tollgate.attempts.v1), read-only; the window is on each attempt's start, --from included, --to excluded.
Money: integer nanos (upstream_cost_nanos) and the same as a decimal (upstream_cost).
"""


def _add_usage(sub: Any, common: argparse.ArgumentParser) -> None:
    usage = sub.add_parser("usage", help="usage exports: what each provider served (for invoice reconciliation)",
                           description="Usage exports from the event log.", epilog=USAGE_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    usub = usage.add_subparsers(dest="usage_command", metavar="EXPORT", required=True)
    pr = usub.add_parser("providers", parents=[common], epilog=USAGE_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         help="per provider / deployment / model: attempts, outcomes, tokens, upstream cost",
                         description="What each provider served over a period, from the router's attempt events: "
                                     "the figures a procurement team checks a provider's invoice against.")
    pr.add_argument("--from", dest="from_", type=parse_time, default=0, metavar="TIME",
                    help="first attempt start included (ISO 8601 or unix ms; default: the beginning)")
    pr.add_argument("--to", type=parse_time, default=None, metavar="TIME", help="first excluded (default: now)")
    pr.add_argument("--account", action="append", metavar="ACCOUNT_ID", help="only these accounts (repeat)")
    pr.add_argument("--format", choices=("text", "csv", "json"), default=None,
                    help="text (default), csv (one row per line, for spreadsheets) or json (--json is the same)")
    pr.add_argument("--out", type=Path, metavar="FILE", help="write the csv/json there (default: stdout)")
    pr.add_argument("--kafka", default=None, metavar="BOOTSTRAP",
                    help="the broker (default: KAFKA_BOOTSTRAP_SERVERS…)")
    pr.add_argument("--db", action="append", metavar="[metering=]URL",
                    help="metering's database, read-only, for the price-book versions it recorded "
                         "(default: METERING_DATABASE_URL; without one, --price-book)")
    pr.add_argument("--price-book", metavar="FILE",
                    help="price book YAML when metering's database is not given (default: METERING_PRICE_BOOK_FILE, "
                         "else the built-in demo book)")
    pr.set_defaults(run=_usage_providers)


def _usage_providers(args: argparse.Namespace, bars: Bars) -> Coroutine[Any, Any, tuple[int, Any]]:
    from tollgate_metering.domain import PriceBook
    from tollgate_metering.rebuild import live_price_books

    from .providers import provider_usage
    from .replay import configured_price_book

    fmt = "json" if args.json else (args.format or "text")
    if args.out is not None and fmt == "text":
        raise BadUsage("--out writes csv or json: add --format csv or --format json")
    if args.out is not None and args.out.exists():
        raise BadUsage(f"--out {args.out}: already exists (an export is never written over another)")
    values = [v if "=" in v.split("://")[0] else f"metering={v}" for v in (args.db or [])]
    metering = None
    if values or os.environ.get("METERING_DATABASE_URL", "").strip():
        metering = live_locations(values, "--db", needed=("metering",))["metering"]
    window = _window(args)
    access = _log_access()
    kafka = args.kafka or _kafka_default()

    async def run() -> tuple[int, Any]:
        books: list[PriceBook] = []
        if metering is not None:
            books = await live_price_books(metering.url, metering.schema)
        if args.price_book or not books:
            books.append(configured_price_book(args.price_book))
        report = await provider_usage(kafka, books, window, accounts=args.account, access=access, bars=bars,
                                      format=fmt)
        if args.out is not None:
            text = report.to_csv() if fmt == "csv" else json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n"
            args.out.write_text(text, encoding="utf-8")
            report.format = "text"
            args.json = False
        return EXIT_OK, report

    return run()


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)  # bad usage: argparse exits 2
    bars = Bars(enabled=not args.no_progress)
    command: Callable[[argparse.Namespace, Bars], Coroutine[Any, Any, tuple[int, Any]]] = args.run
    import logging

    logging.basicConfig(level=os.environ.get("TOLLGATE_LOG_LEVEL", "WARNING"), stream=sys.stderr)
    try:
        with bars.running():
            status, report = asyncio.run(command(args, bars))
    except BadUsage as exc:
        return _fail(str(exc))
    except SQLAlchemyError as exc:
        return _fail(f"database error: {exc.__class__.__name__}: {str(exc).splitlines()[0]}")
    except (OSError, RuntimeError) as exc:  # e.g. Kafka or a database not answering
        return _fail(f"{exc.__class__.__name__}: {exc}")
    except Exception as exc:  # the services' own errors (e.g. a bad price book) carry readable messages
        if exc.__class__.__module__.startswith(("tollgate_", "aiokafka")):
            return _fail(f"{exc.__class__.__name__}: {exc}")
        raise
    if args.json or getattr(report, "format", None) == "json":
        print(json.dumps(report.to_json(), indent=2, sort_keys=True, default=str))
    else:
        print(report.render())
    return status


if __name__ == "__main__":
    sys.exit(main())
