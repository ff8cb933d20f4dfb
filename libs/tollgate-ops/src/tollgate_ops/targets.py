"""Which database each service's state lives in, from the operator's ``[service=]URL`` arguments.

On PostgreSQL billing and metering share one database, each in its own schema, so one URL names both. On SQLite
each service has its own file (their messaging tables have the same names), so a bare ``sqlite:///x.db`` for a
target the command creates becomes ``x-billing.db`` and ``x-metering.db``; for existing (live) databases the
operator names each file: ``billing=sqlite:///var/billing.db metering=sqlite:///var/metering.db``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from tollgate_common.db import normalize_url

__all__ = ["SERVICES", "BadUsage", "Location", "live_locations", "parse_locations", "read_only_engine"]

SERVICES = ("billing", "metering")
#: Where each service keeps its tables on PostgreSQL (the services' own defaults).
DEFAULT_SCHEMAS = {"billing": "billing", "metering": "metering"}


class BadUsage(Exception):
    """The command line cannot be carried out as given (exit status 2)."""


@dataclass(frozen=True)
class Location:
    url: str
    schema: str

    @property
    def is_sqlite(self) -> bool:
        return make_url(normalize_url(self.url)).drivername.startswith("sqlite")

    def sqlite_path(self) -> Path | None:
        if not self.is_sqlite:
            return None
        database = make_url(normalize_url(self.url)).database
        return Path(database) if database and database != ":memory:" else None

    def display(self) -> str:
        return make_url(normalize_url(self.url)).render_as_string(hide_password=True) + (
            "" if self.is_sqlite else f" (schema {self.schema})"
        )


def _split(value: str) -> tuple[str | None, str]:
    head, sep, rest = value.partition("=")
    if sep and head in SERVICES and "://" not in head:
        return head, rest
    return None, value


def parse_locations(
    values: Iterable[str] | None, what: str, *, schema_prefix: str = "", create: bool = False,
    needed: Iterable[str] = SERVICES,
) -> dict[str, Location]:
    """``[service=]URL`` arguments → a location per service in ``needed``.

    A bare URL stands for every service: on PostgreSQL as schemas, on SQLite (only when ``create``, i.e. a target
    this command makes) as one file per service next to the named one.
    """
    out: dict[str, Location] = {}
    bare: str | None = None
    for value in values or ():
        service, url = _split(value)
        _check_url(url, what)
        if service is None:
            if bare is not None:
                raise BadUsage(f"{what}: give one bare URL, or one service=URL per service")
            bare = url
        else:
            out[service] = Location(url, schema_prefix + DEFAULT_SCHEMAS[service])
    for service in needed:
        if service in out:
            continue
        if bare is None:
            raise BadUsage(f"{what}: no database for {service} (give {service}=URL)")
        loc = Location(bare, schema_prefix + DEFAULT_SCHEMAS[service])
        path = loc.sqlite_path()
        if path is not None:
            if not create:
                raise BadUsage(f"{what}: {bare} is one SQLite file, but billing and metering each have their own; "
                               f"give billing=sqlite:///… and metering=sqlite:///…")
            suffix = path.suffix or ".db"
            loc = Location(f"sqlite:///{path.with_name(f'{path.stem}-{service}{suffix}')}", loc.schema)
        out[service] = loc
    return out


def live_locations(values: Iterable[str] | None, what: str,
                   needed: Iterable[str] = SERVICES) -> dict[str, Location]:
    """Like :func:`parse_locations` for existing databases, falling back to the services' own environment
    variables (``BILLING_DATABASE_URL``, ``METERING_DATABASE_URL``): in a pod the operator's Job has them."""
    given = list(values or ())
    named = {_split(v)[0] for v in given}
    for service in needed:
        env = os.environ.get(f"{service.upper()}_DATABASE_URL", "").strip()
        if service not in named and None not in named and env:
            given.append(f"{service}={env}")
    return parse_locations(given, what, needed=needed)


def _check_url(url: str, what: str) -> None:
    try:
        parsed = make_url(normalize_url(url))
    except Exception as exc:  # sqlalchemy raises ArgumentError with a readable message
        raise BadUsage(f"{what}: not a database URL: {url!r} ({exc})") from None
    if not (parsed.drivername.startswith("sqlite") or parsed.drivername.startswith("postgresql")):
        raise BadUsage(f"{what}: only sqlite:/// and postgresql:// URLs are supported, not {parsed.drivername}")


def read_only_engine(location: Location) -> AsyncEngine:
    """An engine the database itself keeps from writing: SQLite opened with ``mode=ro``, PostgreSQL sessions with
    ``default_transaction_read_only``. What-if and audit commands use it, so "touches nothing" is enforced by the
    store, not only by our code."""
    path = location.sqlite_path()
    if location.is_sqlite:
        if path is None or not path.exists():
            raise BadUsage(f"no SQLite database at {location.url}")
        engine = create_async_engine(f"sqlite+aiosqlite:///file:{path.resolve()}?mode=ro&uri=true")

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: object, _record: object) -> None:
            cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
            cur.execute("PRAGMA query_only=ON")
            cur.close()

        return engine
    url = make_url(normalize_url(location.url))
    settings = {"default_transaction_read_only": "on", "search_path": location.schema}
    return create_async_engine(url, connect_args={"server_settings": settings})


def describe(locations: Mapping[str, Location]) -> dict[str, str]:
    return {service: loc.display() for service, loc in locations.items()}
