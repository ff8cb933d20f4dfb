"""The audit path's fast paths give the verdicts and bytes of the slow ones they stand in for.

- writing: orjson spells ``data`` exactly as ``json.dumps(sort_keys=True, separators=(",", ":"),
  ensure_ascii=False)`` (the format's definition), and a rated_usage row becomes the JSON of the ``UsageRated``
  message metering published without building that message;
- verifying: a line is read with orjson only when writing its value back gives its very bytes; a line spelled any
  other valid way (spaces, escapes) verifies as before, a duplicate key is still refused, and an edit to such a line
  is still named.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from tollgate_ops.audit import _RatedRow, message_json, rated_json, usage_rated
from tollgate_ops.audit_files import (
    CSV_COLUMNS,
    GENESIS,
    HEAD_FIELDS,
    MANIFEST,
    ChainWriter,
    canonical_json,
    merkle_root,
    verify_dir,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values)
def test_canonical_json_is_the_formats_json_dumps_spelling(value: Any) -> None:
    assert canonical_json(value) == json.dumps(value, sort_keys=True, separators=(",", ":"),
                                               ensure_ascii=False).encode()


def test_integers_beyond_64_bits_take_the_standard_encoder() -> None:
    assert canonical_json({"b": 2**80, "a": -(2**70)}) == b'{"a":-1180591620717411303424,"b":1208925819614629174706176}'


small = st.integers(min_value=0, max_value=2**40)
names = st.sampled_from(["", "gpt-4o", "acct_1", "é ü", "x,\"y\""])


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_a_rated_row_becomes_the_json_of_the_usage_rated_message(data: st.DataObject) -> None:
    values: list[Any] = []
    for column in _RatedRow._fields:
        if column == "tags":
            tags = data.draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3))
            values.append(json.dumps(tags, sort_keys=True))
        elif column == "outcome":
            values.append(data.draw(st.integers(min_value=0, max_value=6)))
        elif column in ("streamed", "priced"):
            values.append(data.draw(st.booleans()))
        elif column in ("markup_bps",):
            values.append(data.draw(st.integers(min_value=0, max_value=2**31 - 1)))
        elif column.endswith(("_nanos", "_tokens", "_ms")):
            values.append(data.draw(small))
        else:
            values.append(data.draw(names))
    row = tuple(values)
    assert rated_json(row) == message_json(usage_rated(_RatedRow._make(row)))


# --- verification of lines the exporter would not have spelled that way --------------------------------------------


def _rechain(directory: Path, bodies: list[str]) -> None:
    """Rewrite ``directory`` as a consistent export whose lines are ``bodies`` (each a line without its ``hash``
    member, ``prev_hash`` given as ``{PREV}``): every hash, the CSV, the manifest's head, days and digests."""
    manifest = json.loads((directory / MANIFEST).read_text())
    prev, lines, hashes = GENESIS, [], []
    rows = io.StringIO(newline="")
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for template in bodies:
        body = template.replace("{PREV}", prev)
        digest = hashlib.sha256(bytes.fromhex(prev) + body.encode()).hexdigest()
        lines.append(f'{body[:-1]},"hash":"{digest}"}}\n')
        record = json.loads(body)
        data_json = body[body.index(',"data":') + 8: body.rindex(',"prev_hash":"')]
        writer.writerow([*(record[k] for k in HEAD_FIELDS), data_json, prev, digest])
        hashes.append(digest)
        prev = digest
    (directory / "events.jsonl").write_text("".join(lines), encoding="utf-8")
    (directory / "events.csv").write_text(rows.getvalue(), encoding="utf-8")
    manifest["chain"]["head_hash"] = prev
    for day in manifest["days"]:
        day["merkle_root"] = merkle_root(hashes[day["first_seq"] - 1: day["last_seq"]])
    for name in ("events.jsonl", "events.csv"):
        manifest["files"][name]["sha256"] = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    (directory / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def _export(directory: Path, n: int = 6) -> list[str]:
    writer = ChainWriter(directory)
    for i in range(n):
        writer.append({"time": f"2026-11-01T00:00:0{i}.000Z", "day": "2026-11-01", "id": f"ev_{i}",
                       "type": "tollgate.billing.v1.credits.added", "source": "//tollgate/billing",
                       "subject": "acct", "account_id": "acct", "store": "s",
                       "data": {"amount_nanos": 100 + i, "note": "café"}})
    writer.finish({"account_id": "acct"})
    bodies = []
    for line in (directory / "events.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        bodies.append(line[: line.index(',"prev_hash":"')] + ',"prev_hash":"{PREV}"}')
        assert record["prev_hash"] in line
    return bodies


def _findings(directory: Path) -> set[tuple[str, int | None, int | None]]:
    return {(f.kind, f.seq, f.line) for f in verify_dir(directory).findings}


def test_a_valid_line_spelled_otherwise_verifies_and_an_edit_to_it_is_still_found(tmp_path: Path) -> None:
    bodies = _export(tmp_path / "x")
    # Spaces inside data, an escaped é, data's keys unsorted: valid JSON, not the exporter's bytes.
    respelled = '{ "note" : "caf\\u00e9", "amount_nanos" : 102 }'
    bodies[2] = bodies[2].replace('{"amount_nanos":102,"note":"café"}', respelled)
    assert '\\u00e9' in bodies[2]
    _rechain(tmp_path / "x", bodies)
    assert verify_dir(tmp_path / "x").intact

    lines = (tmp_path / "x" / "events.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = lines[2].replace('"amount_nanos" : 102', '"amount_nanos" : 103')
    (tmp_path / "x" / "events.jsonl").write_text("".join(lines), encoding="utf-8")
    assert ("edited", 3, 3) in _findings(tmp_path / "x")


def test_a_duplicate_key_is_refused_even_in_a_consistently_hashed_chain(tmp_path: Path) -> None:
    """orjson keeps the last of two equal keys silently; an auditor's parser may keep the first. The line is not a
    valid record, whatever its hashes say."""
    bodies = _export(tmp_path / "x")
    bodies[3] = bodies[3].replace('{"amount_nanos":103,', '{"amount_nanos":1,"amount_nanos":103,')
    _rechain(tmp_path / "x", bodies)
    report = verify_dir(tmp_path / "x")
    edited = [f for f in report.findings if f.kind == "edited"]
    assert [(f.line, "a key appears twice" in f.detail) for f in edited] == [(4, True)]


def test_a_last_line_without_its_newline_is_still_read(tmp_path: Path) -> None:
    _export(tmp_path / "x")
    path = tmp_path / "x" / "events.jsonl"
    path.write_bytes(path.read_bytes().rstrip(b"\n"))  # no newline after the last line: same events, file digest
    assert {k for k, _, _ in _findings(tmp_path / "x")} == {"file"}
    assert verify_dir(tmp_path / "x").events_read == 6
