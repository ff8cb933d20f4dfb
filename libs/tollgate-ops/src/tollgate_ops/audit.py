"""``tollgate audit export``: one account's events over a period, as hash-chained files an auditor checks offline.

Where the events come from (the durable copies the services keep, read read-only; Kafka may have expired them):

- billing's outbox, topic ``tollgate.billing.v1``: the account, its keys and groups, credits, and every hold
  placed, captured, expired or reconciled (billing keeps published rows: they are its event log);
- metering's hash-chained archive (``event_archive``): every ``UsageRecorded`` it consumed for the account;
- metering's ``rated_usage``: every ``UsageRated`` (the price charged and the price book it came from). Metering
  deletes its outbox rows once published, but each ``rated_usage`` row holds every field of the event it
  published, so the event is rebuilt from it (id = request id, time = when it was rated).

Producer identity: these stores keep no Kafka signature (billing signs when it publishes; metering's archive holds
what its consumer accepted after checking the signature), so what the export can still check is that each event
comes from the one service allowed to produce its type (``event_auth.wrong_producer``). An event that does not is
left out of the chain and listed in the report as refused: never exported as genuine. ``audit verify`` applies the
same rule to every line, offline.

The three are merged in event-time order (then billing, usage, rated; then each store's own order), which is the
order of the export's chain. ``--from`` is inclusive, ``--to`` exclusive, on each event's CloudEvents time.
"""

from __future__ import annotations

import base64
import json
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from tollgate.events.v1 import usage_pb2
from tollgate_common.event_auth import wrong_producer
from tollgate_common.events import EVENT_TYPES, Topics
from tollgate_metering.tables import rated_usage

from .audit_files import MANIFEST, ChainWriter, no_gc
from .progress import Bars
from .signing import fingerprint, load_private_key, sign_manifest
from .store_rows import read_rows
from .targets import Location

__all__ = ["ExportReport", "export", "message_json"]

#: (store name, rank among events of the same millisecond)
BILLING_OUTBOX, USAGE_ARCHIVE, RATED_USAGE = ("billing.outbox", 0), ("metering.event_archive", 1), (
    "metering.rated_usage", 2)
USAGE_RATED_TYPE = "tollgate.usage.v1.usage.rated"


def message_json(message: Message) -> dict[str, Any]:
    """The set fields of an event as JSON-able values: ints stay ints (money is exact), enums by name, bytes in
    base64, maps as objects. Faster than ``json_format.MessageToDict`` (which spells int64 as strings).

    Each field's conversion is worked out once per field descriptor (:func:`_plan`) and kept: the export calls this
    for every event, and deciding per value what kind of field it is was a third of the export's CPU."""
    out: dict[str, Any] = {}
    plans = _PLANS
    for fd, value in message.ListFields():
        plan = plans.get(fd)
        if plan is None:
            plan = plans[fd] = _plan(fd)
        name, convert = plan
        out[name] = value if convert is None else convert(value)
    return out


#: field descriptor → (JSON name, conversion of its value; None: the value as it is).
_PLANS: dict[FieldDescriptor, tuple[str, Callable[[Any], Any] | None]] = {}


def _plan(fd: FieldDescriptor) -> tuple[str, Callable[[Any], Any] | None]:
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        value_of = _scalar_conversion(fd.message_type.fields_by_name["value"])
        if value_of is None:
            return fd.name, lambda m: {str(k): v for k, v in m.items()}
        return fd.name, lambda m: {str(k): value_of(v) for k, v in m.items()}
    one = _scalar_conversion(fd)
    if fd.is_repeated:
        return fd.name, (list if one is None else (lambda values: [one(v) for v in values]))
    return fd.name, one


def _scalar_conversion(fd: FieldDescriptor) -> Callable[[Any], Any] | None:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return message_json
    if fd.type == FieldDescriptor.TYPE_ENUM:
        names = {v.number: v.name for v in fd.enum_type.values}
        return lambda number: names.get(number, number)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return lambda data: base64.b64encode(data).decode()
    if fd.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return repr  # no floats in the hashed JSON: their spelling is not portable
    return None


def event_time_ms(ce_time: str) -> int:
    return int(datetime.fromisoformat(ce_time.replace("Z", "+00:00")).timestamp() * 1000)


def _data(ce_type: str, data: bytes | dict[str, Any]) -> dict[str, Any]:
    if type(data) is dict:  # rebuilt from a row (rated_usage): already the event's JSON
        return data
    assert isinstance(data, bytes)
    cls = EVENT_TYPES.get(ce_type)
    if cls is None:
        return {"protobuf_base64": base64.b64encode(data).decode()}
    msg = cls()
    try:
        msg.ParseFromString(data)
    except DecodeError:
        return {"protobuf_base64": base64.b64encode(data).decode(), "undecodable": True}
    return message_json(msg)


class _Event(NamedTuple):
    """One event to chain. A tuple whose order is the chain's: time, then store rank, then the store's own order
    (``position`` is unique within a store, so sorting never compares further)."""

    at_ms: int
    rank: int
    position: int
    store: str
    id: str
    type: str
    source: str
    subject: str
    time: str
    data: bytes | dict[str, Any]


@dataclass
class ExportReport:
    account_id: str
    directory: str
    events: int
    by_store: dict[str, int]
    days: int
    head_hash: str
    signed_by: str | None
    #: Events left out because their source may not produce their type: (store, event id, reason).
    refused: list[tuple[str, str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"result": "exported", "account_id": self.account_id, "directory": self.directory,
                "events": self.events, "by_store": self.by_store, "days": self.days,
                "chain_head": self.head_hash, "signed_by": self.signed_by,
                "refused": [{"store": s, "event_id": i, "reason": r} for s, i, r in self.refused]}

    def render(self) -> str:
        stores = ", ".join(f"{k} {v}" for k, v in self.by_store.items())
        return "\n".join([
            f"audit export of account {self.account_id} → {self.directory}",
            f"  {self.events} events ({stores}) over {self.days} day(s)",
            f"  chain head {self.head_hash}",
            f"  signed by {self.signed_by}" if self.signed_by else "  not signed (--sign-key to sign the manifest)",
            *([f"  {len(self.refused)} event(s) left out, not from their type's producer:"]
              + [f"    {s} {i}: {r}" for s, i, r in self.refused[:50]] if self.refused else []),
            f"check it anywhere with: tollgate audit verify {self.directory}",
        ])


async def _outbox_events(location: Location, account: str, window: tuple[int, int], bars: Bars) -> list[_Event]:
    out: list[_Event] = []
    name, rank = BILLING_OUTBOX
    step = bars.task(f"reading {name}", None)
    sql = "SELECT id, event_id, headers, value FROM outbox WHERE key = ? AND topic = ? ORDER BY id"
    async for rows in read_rows(location, sql, (account, Topics.BILLING)):
        for row_id, event_id, headers, value in rows:
            h = dict(orjson.loads(headers))
            ce_time = h.get("ce_time", "")
            at = event_time_ms(ce_time)
            if window[0] <= at < window[1]:
                out.append(_Event(at, rank, int(row_id), name, event_id, h.get("ce_type", ""), h.get("ce_source", ""),
                                  h.get("ce_subject", ""), ce_time, bytes(value)))
        step(len(rows))
    return out


async def _archive_events(location: Location, account: str, window: tuple[int, int], bars: Bars) -> list[_Event]:
    out: list[_Event] = []
    name, rank = USAGE_ARCHIVE
    step = bars.task(f"reading {name}", None)
    sql = ("SELECT seq, event_id, event_type, source, subject, event_time, data FROM event_archive "
           "WHERE account_id = ? ORDER BY seq")
    async for rows in read_rows(location, sql, (account,)):
        for seq, event_id, event_type, source, subject, event_time, data in rows:
            at = event_time_ms(event_time)
            if window[0] <= at < window[1]:
                out.append(_Event(at, rank, int(seq), name, event_id, event_type, source, subject, event_time,
                                  bytes(data)))
        step(len(rows))
    return out


def usage_rated(row: Any) -> usage_pb2.UsageRated:
    """The ``UsageRated`` metering published for this row (``tollgate_metering.messages.usage_rated_message``)."""
    return usage_pb2.UsageRated(
        request_id=row.request_id, account_id=row.account_id, key_id=row.key_id, hold_id=row.hold_id,
        model=row.model, provider=row.provider,
        usage=usage_pb2.TokenUsage(prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
                                   total_tokens=row.total_tokens, cached_prompt_tokens=row.cached_prompt_tokens,
                                   reasoning_tokens=row.reasoning_tokens,
                                   cache_write_tokens=row.cache_write_tokens),
        outcome=row.outcome, currency=row.currency, upstream_cost_nanos=row.upstream_cost_nanos,
        resale_price_nanos=row.resale_price_nanos, price_book_version=row.price_book_version,
        markup_bps=row.markup_bps, input_price_nanos=row.input_price_nanos, output_price_nanos=row.output_price_nanos,
        cached_input_price_nanos=row.cached_input_price_nanos, cache_write_price_nanos=row.cache_write_price_nanos,
        reasoning_price_nanos=row.reasoning_price_nanos,
        exchange_rate=row.exchange_rate, occurred_at_unix_ms=row.occurred_at_unix_ms,
        rated_at_unix_ms=row.rated_at_unix_ms, team=row.team, project=row.project, tags=json.loads(row.tags),
    )


#: rated_usage's columns, by name (the table's definition is the service's; the query names them all).
_RATED_COLUMNS: list[str] = [c.name for c in rated_usage.columns]
_RatedRow = namedtuple("_RatedRow", _RATED_COLUMNS)  # type: ignore[misc]
_COLUMN = {column: i for i, column in enumerate(_RATED_COLUMNS)}
#: The ``UsageRated`` fields that are a column as it is (proto3 scalars: present unless zero or empty).
_RATED_SCALARS = [(name, _COLUMN[name]) for name in (
    "request_id", "account_id", "key_id", "hold_id", "model", "provider", "currency", "upstream_cost_nanos",
    "resale_price_nanos", "price_book_version", "markup_bps", "input_price_nanos", "output_price_nanos",
    "cached_input_price_nanos", "cache_write_price_nanos", "reasoning_price_nanos", "exchange_rate",
    "occurred_at_unix_ms", "rated_at_unix_ms", "team", "project")]
_USAGE_SCALARS = [(name, _COLUMN[name]) for name in (
    "prompt_tokens", "completion_tokens", "total_tokens", "cached_prompt_tokens", "reasoning_tokens",
    "cache_write_tokens")]
_OUTCOME, _TAGS = _COLUMN["outcome"], _COLUMN["tags"]
_OUTCOME_NAMES = {v.number: v.name for v in usage_pb2.RequestOutcome.DESCRIPTOR.values}


def rated_json(values: tuple[Any, ...]) -> dict[str, Any]:
    """``message_json(usage_rated(row))`` for a rated_usage row, built straight from its columns: building the
    message to read it back cost half the export's time on rated rows. A property test holds the two equal."""
    out = {name: v for name, i in _RATED_SCALARS if (v := values[i])}
    out["usage"] = {name: v for name, i in _USAGE_SCALARS if (v := values[i])}
    if outcome := values[_OUTCOME]:
        out["outcome"] = _OUTCOME_NAMES.get(outcome, outcome)
    if tags := orjson.loads(values[_TAGS]):
        out["tags"] = {str(k): v for k, v in tags.items()}
    return out


async def _rated_events(location: Location, account: str, window: tuple[int, int], bars: Bars) -> list[_Event]:
    out: list[_Event] = []
    name, rank = RATED_USAGE
    step = bars.task(f"reading {name}", None)
    sql = (f"SELECT {', '.join(_RATED_COLUMNS)} FROM rated_usage WHERE account_id = ? "
           "AND rated_at_unix_ms >= ? AND rated_at_unix_ms < ? ORDER BY rated_at_unix_ms, request_id")
    position = 0
    request_id, rated_at = _COLUMN["request_id"], _COLUMN["rated_at_unix_ms"]
    async for rows in read_rows(location, sql, (account, window[0], window[1])):
        for values in rows:
            position += 1
            at = int(values[rated_at])
            out.append(_Event(at, rank, position, name, values[request_id], USAGE_RATED_TYPE, "//tollgate/metering",
                              account, _iso(at), rated_json(values)))
        step(len(rows))
    return out


def _day(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def export(
    account: str, window: tuple[int, int], stores: dict[str, Location], out: Path, *,
    sign_key: Path | None = None, bars: Bars | None = None,
) -> ExportReport:
    """Write ``account``'s events in ``window`` to ``out`` (see the module's docstring)."""
    with no_gc():
        return await _export(account, window, stores, out, sign_key=sign_key, bars=bars)


async def _export(
    account: str, window: tuple[int, int], stores: dict[str, Location], out: Path, *,
    sign_key: Path | None, bars: Bars | None,
) -> ExportReport:
    bars = bars or Bars(enabled=False)
    key = load_private_key(sign_key) if sign_key is not None else None  # a bad key fails before any work
    events = await _outbox_events(stores["billing"], account, window, bars)
    events += await _archive_events(stores["metering"], account, window, bars)
    events += await _rated_events(stores["metering"], account, window, bars)
    verdicts: dict[tuple[str, str], str | None] = {}  # a few (type, source) pairs among a million events
    for e in events:
        if (e.type, e.source) not in verdicts:
            verdicts[e.type, e.source] = wrong_producer(e.type, e.source)
    refused = [(e.store, e.id, wrong) for e in events if (wrong := verdicts[e.type, e.source]) is not None]
    if refused:
        events = [e for e in events if verdicts[e.type, e.source] is None]
    events.sort()

    writer = ChainWriter(out)
    by_store: dict[str, int] = {}
    step = bars.task("writing the chain", len(events))
    for n, e in enumerate(events, 1):
        day = e.time[:10] if e.time.endswith("Z") else _day(e.at_ms)  # the services stamp UTC "…Z"
        writer.append_event(e.time, day, e.id, e.type, e.source, e.subject, account, e.store, _data(e.type, e.data))
        by_store[e.store] = by_store.get(e.store, 0) + 1
        if n % 10_000 == 0:
            step(10_000)
    step(len(events) % 10_000)
    manifest = writer.finish({
        "account_id": account,
        "from": _iso(window[0]), "to": _iso(window[1]), "from_unix_ms": window[0], "to_unix_ms": window[1],
        "generated_at": _iso(int(datetime.now(tz=UTC).timestamp() * 1000)),
        "sources": {"billing.outbox": f"topic {Topics.BILLING}", "metering.event_archive": "UsageRecorded",
                    "metering.rated_usage": "UsageRated"},
        "events_by_store": dict(sorted(by_store.items())),
    })
    signed_by = None
    if key is not None:
        sign_manifest(out / MANIFEST, key)
        signed_by = fingerprint(key.public_key())
    return ExportReport(account, str(out), writer.seq, dict(sorted(by_store.items())), len(manifest["days"]),
                        writer.head, signed_by, refused)
