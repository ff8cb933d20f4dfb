"""Metering's pure core: price books, rating arithmetic and the audit hash chain. No I/O here.

Money is integer nano-units (1 USD = 10**9) end to end; prices are per token in nano-units. Every division rounds
UP (``ceil``), so the resale price of a request is never below its upstream cost and a hold computed from the
rounded-up per-token resale prices is never below the rated price of the same request.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple

from .errors import InvalidPriceBook, InvalidUsage

__all__ = [
    "BPS_DENOMINATOR",
    "DEMO_PRICE_BOOK",
    "GENESIS_HASH",
    "INT64_MAX",
    "ArchivedEvent",
    "ChainProblem",
    "ModelPrice",
    "PriceBook",
    "RatedUsage",
    "Rating",
    "UsageFacts",
    "UsageRecord",
    "apply_markup",
    "canonical_bytes",
    "chain_from",
    "chain_hash",
    "effective_book",
    "parse_price_book",
    "rate",
    "unix_ms_to_iso",
    "utc_day",
    "verify_chain",
]

BPS_DENOMINATOR = 10_000
INT64_MAX = 2**63 - 1
#: No price above $1,000 per token: a larger number is a typo (e.g. a per-million price entered as per-token).
MAX_PRICE_NANOS = 10**12
#: A markup above 100x is a typo too; negative markups would sell below cost.
MAX_MARKUP_BPS = 1_000_000
GENESIS_HASH = "0" * 64

_CURRENCY = re.compile(r"^[A-Z]{3}$")
_BOOK_KEYS = {"version", "currency", "markup_bps", "effective_from", "models"}
_MODEL_KEYS = {"input_price_nanos", "output_price_nanos", "max_output_tokens"}
#: Optional per model: absent = the input price (cache reads and writes) or the output price (reasoning).
_OPTIONAL_PRICE_KEYS = ("cached_input_price_nanos", "cache_write_price_nanos", "reasoning_price_nanos")
#: Optional per model: this model's own resale markup; absent = the book's ``markup_bps``.
_MODEL_MARKUP_KEY = "markup_bps"


def apply_markup(amount_nanos: int, markup_bps: int) -> int:
    """``ceil(amount × (10000 + markup_bps) / 10000)`` in integers (floats would lose nanos on large amounts)."""
    return -(-amount_nanos * (BPS_DENOMINATOR + markup_bps) // BPS_DENOMINATOR)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Upstream per-token prices for one model; the resale prices follow from its markup (its own or the book's).

    Providers bill prompt-cache reads and writes apart from ordinary input (Anthropic: reads ≈ 0.1×, writes
    ≈ 1.25× the input price; OpenAI and Gemini: cached input ≈ 0.25–0.5×), and some bill reasoning apart from
    output. Those three prices are optional: ``None`` (not in the book) means "the input price" for the cache and
    "the output price" for reasoning, and is kept as ``None`` so a book written before they existed keeps its
    content (and its content hash) unchanged.
    """

    model: str
    input_price_nanos: int
    output_price_nanos: int
    max_output_tokens: int
    cached_input_price_nanos: int | None = None
    cache_write_price_nanos: int | None = None
    reasoning_price_nanos: int | None = None
    #: This model's own markup (a reseller sells a cheap model at +50 % and a dear one at +10 %); ``None`` = the
    #: book's. Kept as ``None`` when absent for the same reason as the optional prices: unchanged content hashes.
    markup_bps: int | None = None

    @property
    def cache_read_price(self) -> int:
        """Per cached prompt token read from the provider's cache."""
        return self.input_price_nanos if self.cached_input_price_nanos is None else self.cached_input_price_nanos

    @property
    def cache_write_price(self) -> int:
        """Per prompt token written to the provider's cache."""
        return self.input_price_nanos if self.cache_write_price_nanos is None else self.cache_write_price_nanos

    @property
    def reasoning_price(self) -> int:
        """Per reasoning token (they are part of ``completion_tokens``)."""
        return self.output_price_nanos if self.reasoning_price_nanos is None else self.reasoning_price_nanos

    def content(self) -> dict[str, int]:
        out = {
            "input_price_nanos": self.input_price_nanos,
            "output_price_nanos": self.output_price_nanos,
            "max_output_tokens": self.max_output_tokens,
        }
        for key in _OPTIONAL_PRICE_KEYS:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.markup_bps is not None:
            out[_MODEL_MARKUP_KEY] = self.markup_bps
        return out


@dataclass(frozen=True, slots=True)
class PriceBook:
    """One version of the price book. A version string names exactly one content, forever, so a rated row's
    ``price_book_version`` is enough to re-derive its amounts."""

    version: str
    currency: str
    markup_bps: int
    effective_from_unix_ms: int
    models: Mapping[str, ModelPrice] = field(hash=False)

    def price_of(self, model: str) -> ModelPrice | None:
        return self.models.get(model)

    def markup_of(self, model: ModelPrice) -> int:
        """The markup that applies to ``model``: its own when the book gives one, else the book's."""
        return self.markup_bps if model.markup_bps is None else model.markup_bps

    def resale_input_price(self, model: ModelPrice) -> int:
        return apply_markup(model.input_price_nanos, self.markup_of(model))

    def resale_output_price(self, model: ModelPrice) -> int:
        return apply_markup(model.output_price_nanos, self.markup_of(model))

    def resale_cache_read_price(self, model: ModelPrice) -> int:
        return apply_markup(model.cache_read_price, self.markup_of(model))

    def resale_cache_write_price(self, model: ModelPrice) -> int:
        return apply_markup(model.cache_write_price, self.markup_of(model))

    def resale_reasoning_price(self, model: ModelPrice) -> int:
        return apply_markup(model.reasoning_price, self.markup_of(model))

    def content(self) -> dict[str, Any]:
        """A plain, ordered form of everything that affects rating: what is stored and hashed per version."""
        return {
            "version": self.version,
            "currency": self.currency,
            "markup_bps": self.markup_bps,
            "effective_from_unix_ms": self.effective_from_unix_ms,
            "models": {name: m.content() for name, m in sorted(self.models.items())},
        }

    def canonical_json(self) -> str:
        return json.dumps(self.content(), sort_keys=True, separators=(",", ":"))

    def content_sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @classmethod
    def from_content(cls, content: Mapping[str, Any]) -> PriceBook:
        """Inverse of :meth:`content` (for versions read back from the database)."""
        return cls(
            version=content["version"],
            currency=content["currency"],
            markup_bps=int(content["markup_bps"]),
            effective_from_unix_ms=int(content["effective_from_unix_ms"]),
            models={
                name: ModelPrice(
                    model=name,
                    input_price_nanos=int(m["input_price_nanos"]),
                    output_price_nanos=int(m["output_price_nanos"]),
                    max_output_tokens=int(m["max_output_tokens"]),
                    **{key: int(m[key]) for key in _OPTIONAL_PRICE_KEYS if m.get(key) is not None},
                    markup_bps=None if m.get(_MODEL_MARKUP_KEY) is None else int(m[_MODEL_MARKUP_KEY]),
                )
                for name, m in content["models"].items()
            },
        )


# --- price book validation -------------------------------------------------------------------------------------


def _int_field(problems: list[str], where: str, value: Any, *, minimum: int, maximum: int) -> int:
    # bool is an int subclass and float prices would be ambiguous about rounding: both are refused.
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{where} must be an integer, got {value!r}")
        return 0
    if not minimum <= value <= maximum:
        problems.append(f"{where}={value} is outside [{minimum}, {maximum}]")
        return 0
    return value


def _effective_from(problems: list[str], value: Any) -> int:
    if value is None:
        return 0  # effective for every event, also those that happened before it was loaded
    when: datetime | None = None
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
    if when is None or when.tzinfo is None:
        problems.append(
            f"effective_from={value!r} must be an ISO time with a timezone, e.g. 2026-11-01T00:00:00Z"
        )
        return 0
    return int(when.timestamp() * 1000)


def parse_price_book(data: Any) -> PriceBook:
    """Validate a price book given as plain data (parsed YAML); every problem is reported at once."""
    if not isinstance(data, Mapping):
        raise InvalidPriceBook(["the price book must be a mapping with version, currency, markup_bps and models"])
    problems: list[str] = []
    unknown = sorted(set(map(str, data)) - _BOOK_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_BOOK_KEYS))})")
    version = data.get("version")
    if isinstance(version, int | float) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not version.strip() or len(version) > 100:
        problems.append(f"version must be a non-empty string of at most 100 characters, got {version!r}")
        version = ""
    currency = data.get("currency")
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        problems.append(f"currency must be an ISO 4217 code such as USD, got {currency!r}")
        currency = ""
    markup = _int_field(problems, "markup_bps", data.get("markup_bps"), minimum=0, maximum=MAX_MARKUP_BPS)
    effective = _effective_from(problems, data.get("effective_from"))
    models_data = data.get("models")
    models: dict[str, ModelPrice] = {}
    if not isinstance(models_data, Mapping) or not models_data:
        problems.append("models must be a non-empty mapping of model name to prices")
    else:
        for name, prices in models_data.items():
            where = f"models.{name}"
            if not isinstance(name, str) or not name.strip():
                problems.append(f"model names must be non-empty strings, got {name!r}")
                continue
            if not isinstance(prices, Mapping):
                problems.append(f"{where} must be a mapping with {', '.join(sorted(_MODEL_KEYS))}")
                continue
            extra = sorted(set(map(str, prices)) - _MODEL_KEYS - set(_OPTIONAL_PRICE_KEYS) - {_MODEL_MARKUP_KEY})
            if extra:
                problems.append(f"{where}: unknown key(s) {', '.join(extra)}")
            missing = sorted(_MODEL_KEYS - set(prices))
            if missing:
                problems.append(f"{where}: missing {', '.join(missing)}")
                continue
            models[name] = ModelPrice(
                model=name,
                input_price_nanos=_int_field(
                    problems, f"{where}.input_price_nanos", prices["input_price_nanos"],
                    minimum=0, maximum=MAX_PRICE_NANOS,
                ),
                output_price_nanos=_int_field(
                    problems, f"{where}.output_price_nanos", prices["output_price_nanos"],
                    minimum=0, maximum=MAX_PRICE_NANOS,
                ),
                max_output_tokens=_int_field(
                    problems, f"{where}.max_output_tokens", prices["max_output_tokens"],
                    minimum=1, maximum=2**31 - 1,
                ),
                **{
                    key: _int_field(problems, f"{where}.{key}", prices[key], minimum=0, maximum=MAX_PRICE_NANOS)
                    for key in _OPTIONAL_PRICE_KEYS
                    if prices.get(key) is not None
                },
                markup_bps=None if prices.get(_MODEL_MARKUP_KEY) is None else _int_field(
                    problems, f"{where}.{_MODEL_MARKUP_KEY}", prices[_MODEL_MARKUP_KEY],
                    minimum=0, maximum=MAX_MARKUP_BPS,
                ),
            )
    if problems:
        raise InvalidPriceBook(problems)
    return PriceBook(
        version=version, currency=currency, markup_bps=markup, effective_from_unix_ms=effective, models=models
    )


#: The book used when METERING_PRICE_BOOK_FILE is unset: list prices of late 2026, +20 % resale markup, with the
#: providers' prompt-cache prices (OpenAI cached input 0.5×, DeepSeek cache hits $0.07/M, Anthropic reads 0.1× and
#: writes 1.25×, Gemini cached 0.25×) and Google's gemini-embedding-001 at $0.15/M input. Earlier versions stay
#: in the databases that recorded them and keep rating the events of their time: ``demo-2026-11`` (no cache
#: prices), ``demo-cache-2026-12`` (no Gemini embedding model).
DEMO_PRICE_BOOK = parse_price_book(
    {
        "version": "demo-embed-2026-12",
        "currency": "USD",
        "markup_bps": 2000,
        "models": {
            "gpt-4o-mini": {"input_price_nanos": 150, "output_price_nanos": 600, "max_output_tokens": 16384,
                            "cached_input_price_nanos": 75},
            "gpt-4o": {"input_price_nanos": 2500, "output_price_nanos": 10000, "max_output_tokens": 16384,
                       "cached_input_price_nanos": 1250},
            "deepseek-chat": {"input_price_nanos": 270, "output_price_nanos": 1100, "max_output_tokens": 8192,
                              "cached_input_price_nanos": 70},
            "claude-3-5-haiku": {"input_price_nanos": 800, "output_price_nanos": 4000, "max_output_tokens": 8192,
                                 "cached_input_price_nanos": 80, "cache_write_price_nanos": 1000},
            "gemini-2.0-flash": {"input_price_nanos": 100, "output_price_nanos": 400, "max_output_tokens": 8192,
                                 "cached_input_price_nanos": 25},
            # Embeddings bill their input only: no output tokens, so an output price of 0 and a cap of 1.
            "text-embedding-3-small": {"input_price_nanos": 20, "output_price_nanos": 0, "max_output_tokens": 1},
            "text-embedding-3-large": {"input_price_nanos": 130, "output_price_nanos": 0, "max_output_tokens": 1},
            "gemini-embedding-001": {"input_price_nanos": 150, "output_price_nanos": 0, "max_output_tokens": 1},
        },
    }
)


def effective_book(books: Sequence[PriceBook], at_unix_ms: int) -> PriceBook:
    """The version in force at ``at_unix_ms``: the latest ``effective_from`` not after it.

    ``books`` is in load order; among equal ``effective_from`` the later-loaded version wins. An event older than
    every version is rated with the earliest one rather than at zero (charging nothing would be the worse error).
    """
    if not books:
        raise LookupError("no price book loaded")
    best: PriceBook | None = None
    for book in books:
        if book.effective_from_unix_ms <= at_unix_ms and (
            best is None or book.effective_from_unix_ms >= best.effective_from_unix_ms
        ):
            best = book
    if best is None:
        best = min(books, key=lambda b: b.effective_from_unix_ms)
    return best


# --- rating -----------------------------------------------------------------------------------------------------


# Records, ratings and archived events are NamedTuples rather than frozen dataclasses: just as immutable, and built
# several times faster (a frozen dataclass sets each field through object.__setattr__), which counts at tens of
# thousands of events per second.


class UsageFacts(NamedTuple):
    """The token counts of one request, as the upstream reported them (OpenAI's convention: cache reads and
    writes are part of ``prompt_tokens``, reasoning is part of ``completion_tokens``)."""

    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0


class Rating(NamedTuple):
    """What one request cost us and what we charge for it, with the prices that produced the numbers."""

    price_book_version: str
    currency: str
    markup_bps: int
    input_price_nanos: int
    output_price_nanos: int
    upstream_cost_nanos: int
    resale_price_nanos: int
    priced: bool
    cached_input_price_nanos: int = 0
    cache_write_price_nanos: int = 0
    reasoning_price_nanos: int = 0


def rate(book: PriceBook, model: str, usage: UsageFacts) -> Rating:
    """Rate one request with ``book``.

    ``upstream_cost = uncached × input + cache reads × cached input + cache writes × cache write + (completion −
    reasoning) × output + reasoning × reasoning price``, each price falling back as :class:`ModelPrice` says (so a
    book without cache prices rates exactly as before). Cache reads and writes are part of ``prompt_tokens``: a
    provider reporting more of them than prompt tokens is read as "every prompt token was a cache read, then a
    write", never as a negative uncached count (the charge stays within the prompt). Likewise reasoning is capped
    at ``completion_tokens``. The markup is the model's own when the book gives one, else the book's (the
    rating's ``markup_bps`` says which was applied). A model missing from the book is rated at zero and marked
    unpriced: the caller logs it, billing still closes the hold (billing refuses such models at Authorize, so this
    is a safety net).
    """
    if min(usage) < 0:
        raise InvalidUsage(
            f"negative token counts (prompt={usage.prompt_tokens}, completion={usage.completion_tokens}, "
            f"cached={usage.cached_prompt_tokens}, cache_write={usage.cache_write_tokens}, "
            f"reasoning={usage.reasoning_tokens})"
        )
    price = book.price_of(model)
    if price is None:
        return Rating(book.version, book.currency, book.markup_bps, 0, 0, 0, 0, priced=False)
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    cache_read = min(usage.cached_prompt_tokens, prompt)
    cache_write = min(usage.cache_write_tokens, prompt - cache_read)
    reasoning = min(usage.reasoning_tokens, completion)
    read_price, write_price, reasoning_price = price.cache_read_price, price.cache_write_price, price.reasoning_price
    cost = (
        (prompt - cache_read - cache_write) * price.input_price_nanos
        + cache_read * read_price
        + cache_write * write_price
        + (completion - reasoning) * price.output_price_nanos
        + reasoning * reasoning_price
    )
    markup = book.markup_of(price)
    resale = apply_markup(cost, markup)
    if resale > INT64_MAX:
        raise InvalidUsage(f"rated amount {resale} does not fit a 64-bit integer")
    return Rating(book.version, book.currency, markup, price.input_price_nanos, price.output_price_nanos,
                  cost, resale, True, read_price, write_price, reasoning_price)


class UsageRecord(NamedTuple):
    """One request's usage as ingress recorded it (``UsageRecorded``), in domain terms."""

    request_id: str
    account_id: str
    key_id: str
    hold_id: str
    model: str
    provider: str
    upstream_model: str
    upstream_request_id: str
    usage: UsageFacts
    total_tokens: int
    outcome: int
    streamed: bool
    occurred_at_unix_ms: int
    team: str
    project: str
    tags: Mapping[str, str]
    #: The provider may have billed more than ``usage`` (an estimate): passed on to billing, which decides.
    usage_unknown: bool = False


class RatedUsage(NamedTuple):
    """A usage record with its rating: the row metering stores and the ``UsageRated`` it publishes."""

    record: UsageRecord
    rating: Rating
    rated_at_unix_ms: int

    @property
    def day(self) -> str:
        return utc_day(self.record.occurred_at_unix_ms)


_DAY_MS = 86_400_000


@functools.lru_cache(maxsize=4096)
def _day_name(day_number: int) -> str:
    return (date(1970, 1, 1) + timedelta(days=day_number)).isoformat()


def utc_day(unix_ms: int) -> str:
    """The UTC calendar day (``YYYY-MM-DD``) an event happened on: the aggregates' time bucket."""
    if unix_ms <= 0:
        return "1970-01-01"
    return _day_name(unix_ms // _DAY_MS)


def unix_ms_to_iso(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the audit hash chain ---------------------------------------------------------------------------------------


class ArchivedEvent(NamedTuple):
    """One archived event of one account. ``hash`` covers every field but itself, plus the previous hash, so an
    edit anywhere, a removed event or a reordering breaks the chain from that point on."""

    account_id: str
    seq: int
    event_id: str
    event_type: str
    source: str
    subject: str
    event_time: str
    data: bytes
    prev_hash: str
    hash: str

    def canonical_bytes(self) -> bytes:
        return canonical_bytes(
            self.account_id, self.seq, self.event_id, self.event_type, self.source, self.subject,
            self.event_time, self.data,
        )


def canonical_bytes(
    account_id: str, seq: int, event_id: str, event_type: str, source: str, subject: str, event_time: str,
    data: bytes,
) -> bytes:
    """Length-prefixed fields: unambiguous (no separator can be smuggled into a field) and stable forever."""
    parts = (
        account_id.encode(), str(seq).encode(), event_id.encode(), event_type.encode(), source.encode(),
        subject.encode(), event_time.encode(), data,
    )
    return b"".join([piece for p in parts for piece in (len(p).to_bytes(8, "big"), p)])


def chain_hash(prev_hash: str, canonical: bytes) -> str:
    """``sha256(prev_hash + canonical bytes)``, hex; ``prev_hash`` is the previous event's hash in raw bytes."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainProblem:
    account_id: str
    seq: int
    kind: str  # "gap", "broken_link", "edited", "truncated"
    detail: str

    def __str__(self) -> str:
        return f"{self.account_id} seq {self.seq}: {self.kind}: {self.detail}"


def verify_chain(
    account_id: str, events: Iterable[ArchivedEvent], head: tuple[int, str] | None = None
) -> list[ChainProblem]:
    """Check one account's events (in seq order). ``head`` is the recorded (last seq, last hash), when known,
    which reveals events cut from the end (the chain alone cannot)."""
    problems: list[ChainProblem] = []
    expected_seq = 1
    prev = GENESIS_HASH
    for ev in events:
        if ev.seq != expected_seq:
            problems.append(ChainProblem(account_id, ev.seq, "gap", f"expected seq {expected_seq}, found {ev.seq}"))
        if ev.prev_hash != prev:
            problems.append(ChainProblem(account_id, ev.seq, "broken_link", "prev_hash is not the previous hash"))
        if chain_hash(ev.prev_hash, ev.canonical_bytes()) != ev.hash:
            problems.append(ChainProblem(account_id, ev.seq, "edited", "content does not match its hash"))
        expected_seq = ev.seq + 1
        prev = ev.hash
    if head is not None:
        last_seq, last_hash = head
        if last_seq != expected_seq - 1 or last_hash != prev:
            problems.append(
                ChainProblem(account_id, last_seq, "truncated",
                             f"recorded head is seq {last_seq}, the archive ends at seq {expected_seq - 1}")
            )
    return problems


def chain_from(
    account_id: str, head: tuple[int, str] | None, items: Sequence[tuple[str, str, str, str, str, bytes]]
) -> list[ArchivedEvent]:
    """Append ``items`` (event_id, type, source, subject, time, data) after ``head``: the archive's write path.
    (:func:`chain_hash` per event, with the previous digest kept in raw bytes between events.)"""
    seq, prev = head if head is not None else (0, GENESIS_HASH)
    prev_raw = bytes.fromhex(prev)
    out: list[ArchivedEvent] = []
    for event_id, event_type, source, subject, event_time, data in items:
        seq += 1
        raw = hashlib.sha256(
            prev_raw + canonical_bytes(account_id, seq, event_id, event_type, source, subject, event_time, data)
        ).digest()
        digest = raw.hex()
        out.append(ArchivedEvent(account_id, seq, event_id, event_type, source, subject, event_time, data,
                                 prev, digest))
        prev, prev_raw = digest, raw
    return out
