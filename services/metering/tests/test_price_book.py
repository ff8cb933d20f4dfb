"""Price book validation: the demo book, YAML files, every problem reported at once, exit 2 on a bad file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tollgate_common.config import ConfigError
from tollgate_metering.config import Settings, load_price_book_file
from tollgate_metering.domain import DEMO_PRICE_BOOK, parse_price_book
from tollgate_metering.errors import InvalidPriceBook

GOOD = """\
version: acme-2026-12
currency: EUR
markup_bps: 1500
effective_from: 2026-12-01T00:00:00Z
models:
  gpt-4o-mini: {input_price_nanos: 140, output_price_nanos: 560, max_output_tokens: 16384}
  local-llama: {input_price_nanos: 0, output_price_nanos: 0, max_output_tokens: 4096}
"""


def test_the_demo_book_is_the_documented_one() -> None:
    book = DEMO_PRICE_BOOK
    assert (book.version, book.currency, book.markup_bps, book.effective_from_unix_ms) == (
        "demo-embed-2026-12", "USD", 2000, 0
    )
    assert {name: (m.input_price_nanos, m.output_price_nanos, m.max_output_tokens)
            for name, m in book.models.items()} == {
        "gpt-4o-mini": (150, 600, 16384),
        "gpt-4o": (2500, 10000, 16384),
        "deepseek-chat": (270, 1100, 8192),
        "claude-3-5-haiku": (800, 4000, 8192),
        "gemini-2.0-flash": (100, 400, 8192),
        "text-embedding-3-small": (20, 0, 1),
        "text-embedding-3-large": (130, 0, 1),
        "gemini-embedding-001": (150, 0, 1),
    }
    gpt = book.models["gpt-4o-mini"]
    assert (book.resale_input_price(gpt), book.resale_output_price(gpt)) == (180, 720)
    ds = book.models["deepseek-chat"]
    assert (book.resale_input_price(ds), book.resale_output_price(ds)) == (324, 1320)


def test_a_good_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "book.yaml"
    path.write_text(GOOD)
    book = load_price_book_file(path)
    assert (book.version, book.currency, book.markup_bps) == ("acme-2026-12", "EUR", 1500)
    assert book.effective_from_unix_ms == 1_796_083_200_000  # 2026-12-01T00:00:00Z
    assert book.models["local-llama"].input_price_nanos == 0


def test_effective_from_accepts_an_offset_string() -> None:
    book = parse_price_book({"version": "v", "currency": "USD", "markup_bps": 0,
                             "effective_from": "2026-12-01T01:00:00+01:00",
                             "models": {"m": {"input_price_nanos": 1, "output_price_nanos": 1,
                                              "max_output_tokens": 1}}})
    assert book.effective_from_unix_ms == 1_796_083_200_000


def test_the_same_content_has_the_same_fingerprint_whatever_the_key_order() -> None:
    a = parse_price_book({"version": "v", "currency": "USD", "markup_bps": 1, "models": {
        "a": {"input_price_nanos": 1, "output_price_nanos": 2, "max_output_tokens": 3},
        "b": {"input_price_nanos": 4, "output_price_nanos": 5, "max_output_tokens": 6}}})
    b = parse_price_book({"models": {
        "b": {"max_output_tokens": 6, "output_price_nanos": 5, "input_price_nanos": 4},
        "a": {"input_price_nanos": 1, "output_price_nanos": 2, "max_output_tokens": 3}},
        "markup_bps": 1, "currency": "USD", "version": "v"})
    assert a.content_sha256() == b.content_sha256()


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidPriceBook) as err:
        parse_price_book({
            "version": "",
            "currency": "usd",
            "markup_bps": -5,
            "effective_from": "2026-12-01T00:00:00",
            "discount": 3,
            "models": {
                "a": {"input_price_nanos": 0.15, "output_price_nanos": -1, "max_output_tokens": 0},
                "b": {"input_price_nanos": True, "output_price_nanos": 1},
                "c": {"input_price": 1, "input_price_nanos": 1, "output_price_nanos": 1, "max_output_tokens": 1},
            },
        })
    text = "\n".join(err.value.problems)
    for expected in (
        "version must be a non-empty string",
        "currency must be an ISO 4217 code",
        "markup_bps=-5 is outside",
        "effective_from='2026-12-01T00:00:00' must be an ISO time with a timezone",
        "unknown key(s) discount",
        "models.a.input_price_nanos must be an integer, got 0.15",
        "models.a.output_price_nanos=-1 is outside",
        "models.a.max_output_tokens=0 is outside",
        "models.b: missing max_output_tokens",
        "models.c: unknown key(s) input_price",
    ):
        assert expected in text


@pytest.mark.parametrize(
    "content, problem",
    [
        ("[1, 2]", "must be a mapping"),
        ("version: v\ncurrency: USD\nmarkup_bps: 0\nmodels: {}\n", "models must be a non-empty mapping"),
        ("version: v\ncurrency: USD\nmarkup_bps: 0\n  bad: [indent\n", "not valid YAML"),
        ("version: v\ncurrency: USD\nmarkup_bps: 0\neffective_from: 2026-12-01\nmodels: {m: {input_price_nanos: 1,"
         " output_price_nanos: 1, max_output_tokens: 1}}\n", "with a timezone"),
        ("version: v\ncurrency: USD\nmarkup_bps: 0\nmodels: {m: {input_price_nanos: 10000000000000,"
         " output_price_nanos: 1, max_output_tokens: 1}}\n", "is outside [0, 1000000000000]"),
    ],
)
def test_bad_files_are_refused_with_the_reason(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "book.yaml"
    path.write_text(content)
    with pytest.raises(InvalidPriceBook) as err:
        load_price_book_file(path)
    assert problem in str(err.value)
    assert str(path) in str(err.value)


def test_settings_report_a_bad_book_as_a_configuration_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"METERING_PRICE_BOOK_FILE": str(tmp_path / "missing.yaml"), "METERING_GRPC_PORT": "x"})
    problems = "\n".join(err.value.problems)
    assert "METERING_PRICE_BOOK_FILE" in problems and "cannot read" in problems
    assert "METERING_GRPC_PORT='x' is not an integer" in problems


def test_settings_refuse_an_unknown_database_and_log_level() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"METERING_DATABASE_URL": "mysql://x", "METERING_LOG_LEVEL": "loud"})
    problems = "\n".join(err.value.problems)
    assert "must be sqlite:///… or postgresql://…" in problems
    assert "METERING_LOG_LEVEL='LOUD' must be one of" in problems


def test_settings_defaults() -> None:
    s = Settings.from_env({})
    assert (s.grpc_port, s.database_url, s.kafka_bootstrap_servers, s.database_schema) == (
        50054, "sqlite:///var/metering.db", "127.0.0.1:9092", "metering"
    )
    assert s.price_book is DEMO_PRICE_BOOK and s.price_book_file is None


def test_the_service_exits_2_with_every_problem_in_one_clear_message(tmp_path: Path) -> None:
    book = tmp_path / "book.yaml"
    book.write_text(GOOD.replace("markup_bps: 1500", "markup_bps: -1"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERING_")} | {
        "METERING_PRICE_BOOK_FILE": str(book),
        "METERING_GRPC_PORT": "70000",
        "METERING_DATABASE_URL": f"sqlite:///{tmp_path}/m.db",
    }
    done = subprocess.run([sys.executable, "-m", "tollgate_metering"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "tollgate-metering: invalid configuration" in done.stderr
    assert f"METERING_PRICE_BOOK_FILE: {book}: markup_bps=-1 is outside" in done.stderr
    assert "METERING_GRPC_PORT=70000 is outside" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "m.db").exists()  # refused before touching anything
