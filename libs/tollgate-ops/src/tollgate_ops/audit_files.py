"""The audit export's files, and their offline verification: nothing here reads a database or the network.

An export directory holds:

- ``events.jsonl``: one event per line, in chain order, each line a JSON object with the members ``seq, time,
  day, id, type, source, subject, account_id, store, data, prev_hash, hash`` in that order (no whitespace, UTF-8;
  inside ``data`` keys are sorted).
- ``events.csv``: the same events, one row each (``data`` as its JSON text), for spreadsheets. Verification checks
  it row by row against ``events.jsonl``.
- ``manifest.json``: the account and period, the event count, the hash-chain head, a Merkle root per UTC day and
  the SHA-256 of both event files.
- ``manifest.sig`` (optional): an Ed25519 signature of ``manifest.json``'s exact bytes (:mod:`tollgate_ops.signing`).

The chain: a line is ``BODY`` with ``,"hash":"<hex>"`` put before its closing brace, where ``BODY`` is the line
without that member, and ``hash = sha256(prev_hash as 32 raw bytes || BODY as UTF-8)``, starting from 64 zeros.
Hashing the bytes as written (rather than re-encoding parsed JSON) keeps verification to one parse and one hash
per line, and lets any language check it with string slicing. ``seq`` (1, 2, …) is inside the hashed bytes, so an
event moved, cut or added shows both in the numbering and in the links. A day's Merkle root is over its events'
hashes in seq order: leaf ``sha256(0x00 || hash)``, node ``sha256(0x01 || left || right)``, an odd node carried up
unchanged, so one day can be proven without the others.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from tollgate_common.event_auth import wrong_producer

__all__ = [
    "CSV_COLUMNS",
    "FORMAT",
    "GENESIS",
    "ChainWriter",
    "Finding",
    "VerifyReport",
    "merkle_root",
    "record_hash",
    "record_line",
    "verify_dir",
]

FORMAT = "tollgate-audit-export/1"
GENESIS = "0" * 64
EVENTS, CSV_FILE, MANIFEST, SIGNATURE = "events.jsonl", "events.csv", "manifest.json", "manifest.sig"
HEAD_FIELDS = ("seq", "time", "day", "id", "type", "source", "subject", "account_id", "store")
CSV_COLUMNS = (*HEAD_FIELDS, "data", "prev_hash", "hash")
_DATA_KEY, _PREV_KEY = ',"data":', ',"prev_hash":"'


#: The compact encoder of the format (``record_hash``'s, and the fallback for what orjson cannot encode).
_ENCODE_SORTED = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_SORTED = orjson.OPT_SORT_KEYS


def canonical_json(value: Any) -> bytes:
    """``value`` as the format spells it: compact, keys sorted, UTF-8 unescaped. orjson writes exactly the bytes of
    ``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` for what an export holds
    (strings, 64-bit integers, booleans, null, lists, objects: a property test checks it) ten times faster; what
    it refuses (an integer beyond 64 bits) goes through the standard encoder."""
    try:
        return orjson.dumps(value, option=_SORTED)
    except TypeError:
        return _ENCODE_SORTED(value).encode()


def _dumps(value: Any, sort_keys: bool) -> str:
    return (_ENCODE_SORTED if sort_keys else _ENCODE)(value)


def _body(record: dict[str, Any], data_json: str) -> str:
    head = _ENCODE({k: record[k] for k in HEAD_FIELDS})
    return f'{head[:-1]}{_DATA_KEY}{data_json}{_PREV_KEY}{record["prev_hash"]}"}}'


def _csv_line(seq: int, head: tuple[str, ...], data_json: bytes, prev_hash: str, digest: str) -> bytes | None:
    """The row as ``csv.writer`` (excel dialect, ``\\n`` line ends) writes it, when its head fields need no quoting
    (the usual case; None otherwise, and the caller uses the writer): ``csv.writer`` costs 18 µs a row here, most
    of it scanning the data JSON for characters to quote (it always has quotes, so it is always quoted). A comma
    inside a head field shows as one comma too many in the joined head."""
    joined = ",".join(head)
    if joined.count(",") != len(head) - 1 or '"' in joined or "\n" in joined or "\r" in joined:
        return None
    if b'"' in data_json or b"," in data_json or b"\n" in data_json or b"\r" in data_json:
        data_json = b'"' + data_json.replace(b'"', b'""') + b'"'
    return f"{seq},{joined},".encode() + data_json + f",{prev_hash},{digest}\n".encode()


@contextmanager
def no_gc() -> Iterator[None]:
    """No cyclic garbage collection while an export or a verification runs: they build a million small objects
    and no cycles, and the collector's passes over them cost a fifth of the CPU (more the longer the export)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _digest(prev_hash: str, body: str) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + body.encode()).hexdigest()


def record_hash(record: dict[str, Any]) -> str:
    """The hash a record's fields call for (its ``hash`` member aside)."""
    return _digest(record["prev_hash"], _body(record, _dumps(record["data"], sort_keys=True)))


def record_line(record: dict[str, Any]) -> str:
    """A record as its line (no newline), carrying whatever ``hash`` it holds."""
    body = _body(record, _dumps(record["data"], sort_keys=True))
    return f'{body[:-1]},"hash":"{record["hash"]}"}}'


def _merkle(leaves: list[bytes]) -> str:
    """The Merkle root over raw 32-byte hashes (see the module's docstring)."""
    sha = hashlib.sha256
    level = [sha(b"\x00" + h).digest() for h in leaves]
    if not level:
        return sha(b"").hexdigest()
    while len(level) > 1:
        nxt = [sha(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()


def merkle_root(hashes: Iterable[str]) -> str:
    return _merkle([bytes.fromhex(h) for h in hashes])


class _Hashing:
    """A file that hashes what it writes (the manifest names each file's SHA-256); ``path`` None: only the hash
    (what verification compares a file with). Text goes in as UTF-8."""

    def __init__(self, path: Path | None) -> None:
        self.file = path.open("wb") if path is not None else None
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, text: str | bytes) -> int:
        data = text.encode() if isinstance(text, str) else text
        self.sha.update(data)
        self.size += len(data)
        if self.file is not None:
            self.file.write(data)
        return len(text)

    def close(self) -> dict[str, Any]:
        if self.file is not None:
            self.file.close()
        return {"sha256": self.sha.hexdigest(), "bytes": self.size}


class _Lines:
    """Lines gathered and handed to a :class:`_Hashing` a few thousand at a time: one write and one hash update
    per chunk instead of per line."""

    def __init__(self, sink: _Hashing) -> None:
        self.sink = sink
        self.pending: list[bytes] = []

    def add(self, line: bytes) -> None:
        self.pending.append(line)
        if len(self.pending) >= 4096:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.sink.write(b"".join(self.pending))
            self.pending.clear()


@dataclass
class _Day:
    events: int = 0
    first_seq: int = 0
    last_seq: int = 0
    hashes: list[bytes] = field(default_factory=list)


class ChainWriter:
    """Appends events to the chain and both files; :meth:`finish` writes the manifest and returns it."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self._jsonl_file = _Hashing(out / EVENTS)
        self._csv_file = _Hashing(out / CSV_FILE)
        self._jsonl, self._csv_lines = _Lines(self._jsonl_file), _Lines(self._csv_file)
        self._csv = csv.writer(self._csv_file, lineterminator="\n")
        self._csv.writerow(CSV_COLUMNS)
        self.seq = 0
        self.head = GENESIS
        self._head_raw = bytes(32)
        self.days: dict[str, _Day] = {}

    def append(self, fields: dict[str, Any]) -> str:
        """``fields``: the :data:`HEAD_FIELDS` but ``seq``, and ``data`` (JSON-able, no floats). Returns the hash."""
        return self.append_event(fields["time"], fields["day"], fields["id"], fields["type"], fields["source"],
                                 fields["subject"], fields["account_id"], fields["store"], fields["data"])

    def append_event(self, time: str, day: str, event_id: str, ce_type: str, source: str, subject: str,
                     account_id: str, store: str, data: Any) -> str:
        """One event (the head fields but ``seq`` as strings, ``data`` JSON-able): the line, its row, its hash."""
        self.seq = seq = self.seq + 1
        prev = self.head
        data_json = canonical_json(data)
        head = orjson.dumps({"seq": seq, "time": time, "day": day, "id": event_id, "type": ce_type,
                             "source": source, "subject": subject, "account_id": account_id, "store": store})
        body = b'%b,"data":%b,"prev_hash":"%b"}' % (head[:-1], data_json, prev.encode())
        raw = hashlib.sha256(self._head_raw + body).digest()
        self._head_raw = raw
        self.head = digest = raw.hex()
        self._jsonl.add(b'%b,"hash":"%b"}\n' % (body[:-1], digest.encode()))
        head_fields = (time, day, event_id, ce_type, source, subject, account_id, store)
        line = _csv_line(seq, head_fields, data_json, prev, digest)
        if line is None:
            self._csv_lines.flush()
            self._csv.writerow((seq, *head_fields, data_json.decode(), prev, digest))
        else:
            self._csv_lines.add(line)
        d = self.days.get(day)
        if d is None:
            d = self.days[day] = _Day(first_seq=seq)
        d.events += 1
        d.last_seq = seq
        d.hashes.append(raw)
        return digest

    def finish(self, header: dict[str, Any]) -> dict[str, Any]:
        self._jsonl.flush()
        self._csv_lines.flush()
        files = {EVENTS: self._jsonl_file.close(), CSV_FILE: self._csv_file.close()}
        manifest = {
            "format": FORMAT,
            **header,
            "events": self.seq,
            "chain": {"genesis": GENESIS, "head_seq": self.seq, "head_hash": self.head},
            "days": [
                {"day": d, "events": v.events, "first_seq": v.first_seq, "last_seq": v.last_seq,
                 "merkle_root": _merkle(v.hashes)}
                for d, v in sorted(self.days.items())
            ],
            "files": files,
            "hashing": "line = BODY with ',\"hash\":\"<hex>\"' before its closing brace; hash = "
                       "sha256(bytes.fromhex(prev_hash) + BODY.encode('utf-8')); genesis 64 zeros; Merkle per day "
                       "over the hashes in seq order: leaf sha256(00||h), node sha256(01||l||r), odd node carried up",
        }
        (self.out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return manifest


# --- verification -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One thing wrong with an export. ``kind``: edited, removed, reordered, inserted, head, day, file, csv,
    signature, manifest, producer (an event whose source is not the one service allowed to produce its type)."""

    kind: str
    detail: str
    seq: int | None = None
    event_id: str | None = None
    line: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in (("kind", self.kind), ("seq", self.seq), ("event_id", self.event_id),
                                  ("line", self.line), ("detail", self.detail)) if v is not None}

    def __str__(self) -> str:
        where = " ".join(p for p in (f"seq {self.seq}" if self.seq is not None else "",
                                     f"event {self.event_id}" if self.event_id else "",
                                     f"(line {self.line})" if self.line is not None else "") if p)
        return f"{self.kind:<9} {where + ': ' if where else ''}{self.detail}"


@dataclass
class VerifyReport:
    directory: str
    account_id: str = ""
    events_expected: int = 0
    events_read: int = 0
    days: int = 0
    signature: str = "absent"  # absent | valid | valid (key not pinned) | invalid
    findings: list[Finding] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {"result": "intact" if self.intact else "tampered", "directory": self.directory,
                "account_id": self.account_id, "events_expected": self.events_expected,
                "events_read": self.events_read, "days": self.days, "signature": self.signature,
                "findings": [f.to_json() for f in self.findings]}

    def render(self) -> str:
        lines = [f"audit export {self.directory} (account {self.account_id})",
                 f"  {self.events_read} events read, {self.events_expected} in the manifest, {self.days} day(s); "
                 f"signature: {self.signature}"]
        lines += [f"  {f}" for f in self.findings[:200]]
        if len(self.findings) > 200:
            lines.append(f"  … and {len(self.findings) - 200} more (--json lists all)")
        lines.append("RESULT: " + ("INTACT" if self.intact else f"TAMPERED ({len(self.findings)} finding(s))"))
        return "\n".join(lines)


class _Line(NamedTuple):
    """What the chain checks keep of a line (a million full records would not fit comfortably in memory). A
    NamedTuple: as immutable as a frozen dataclass and built several times faster."""

    line: int
    seq: int
    id: str
    prev_hash: str
    hash: str
    self_valid: bool


def _file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a key appears twice")
    return out


#: Made once: ``json.loads`` with a hook builds a decoder per call, a quarter of the cost of a line.
_DECODE = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys).decode
_MEMBERS = list(CSV_COLUMNS)
_DATA_KEY_B, _PREV_KEY_B = _DATA_KEY.encode(), _PREV_KEY.encode()


def _decode(raw: bytes) -> Any:
    """A line's JSON value. Fast path: orjson, when writing its result back gives the very bytes read. That proves
    no member appears twice (a duplicate would be dropped, the bytes would differ) and that both parsers read the
    same values, and it is what every line the exporter wrote satisfies. Any other line (valid JSON spelled
    differently: spaces, escapes, ``1e3``; a duplicate key; anything orjson refuses) goes through the standard
    decoder with the duplicate-key check, so the verdict never depends on which path a line took."""
    try:
        value = orjson.loads(raw)
        if orjson.dumps(value) == raw:
            return value
    except (orjson.JSONDecodeError, TypeError):
        pass
    return _DECODE(raw.decode("utf-8"))


def _parse(raw: bytes) -> tuple[dict[str, Any], bytes, bool]:
    """(record, its data's JSON bytes, whether the stored hash matches the bytes)."""
    record = _decode(raw)
    if type(record) is not dict or list(record) != _MEMBERS:
        raise ValueError("members missing or out of order")
    stored = str(record["hash"])
    suffix = f',"hash":"{stored}"}}'.encode()
    if not raw.endswith(suffix):
        raise ValueError("hash is not the last member")
    body = raw[: -len(suffix)] + b"}"
    data_json = body[body.index(_DATA_KEY_B) + len(_DATA_KEY_B): body.rindex(_PREV_KEY_B)]
    valid = hashlib.sha256(bytes.fromhex(str(record["prev_hash"])) + body).hexdigest() == stored
    return record, data_json, valid


def _raw_lines(path: Path, sha: Any) -> Iterator[bytes]:
    """The file's lines without their ``\\n`` (nor a ``\\r`` before it), read in large chunks that also feed
    ``sha`` (the file's SHA-256 in the same pass)."""
    rest = b""
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            sha.update(chunk)
            pieces = (rest + chunk).split(b"\n") if rest else chunk.split(b"\n")
            rest = pieces.pop()
            for raw in pieces:
                yield raw[:-1] if raw.endswith(b"\r") else raw
    if rest:
        yield rest[:-1] if rest.endswith(b"\r") else rest


def _row_digest(row: Iterable[str]) -> bytes:
    return hashlib.blake2b("\x1f".join(row).encode(), digest_size=16).digest()


@dataclass
class _Scan:
    lines: list[_Line]
    findings: list[Finding]
    events_sha256: str
    csv_matches: bool


def _scan(directory: Path, step: Any, csv_digest: str | None) -> _Scan:
    """One pass over events.jsonl (hashing the file as it goes); events.csv is then checked against it.

    The CSV is fully determined by the JSONL (the exporter writes both from the same rows), so the pass writes the
    CSV the lines call for into a hash only: when that is ``csv_digest`` (the file's SHA-256), every row matches
    and the CSV needs no parsing. Otherwise :func:`_csv_rows` compares it row by row to name what differs."""
    lines: list[_Line] = []
    findings: list[Finding] = []
    expected = _Hashing(None)
    expected_lines = _Lines(expected)
    writer = csv.writer(expected, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    producers: dict[tuple[str, str], str | None] = {}
    sha = hashlib.sha256()
    for n, raw in enumerate(_raw_lines(directory / EVENTS, sha), 1):
        if step is not None and n % 10_000 == 0:
            step(10_000)
        try:
            record, data_json, valid = _parse(raw)
            ln = _Line(n, int(record["seq"]), str(record["id"]), str(record["prev_hash"]), str(record["hash"]),
                       valid)
        except (ValueError, KeyError, TypeError) as exc:
            findings.append(Finding("edited", f"not a valid event record ({exc})", line=n))
            continue
        lines.append(ln)
        who = (str(record["type"]), str(record["source"]))
        if who not in producers:
            producers[who] = wrong_producer(*who)
        wrong = producers[who]
        if wrong is not None:
            findings.append(Finding("producer", f"not a genuine event: {wrong}", ln.seq, ln.id, n))
        r = record
        seq, head = r["seq"], (r["time"], r["day"], r["id"], r["type"], r["source"], r["subject"], r["account_id"],
                               r["store"])
        try:  # join refuses a head field that is not a string: csv.writer's spelling of it, below
            line = _csv_line(seq, head, data_json, ln.prev_hash, ln.hash) if type(seq) is int else None
        except TypeError:
            line = None
        if line is None:
            expected_lines.flush()
            writer.writerow((seq, *head, data_json.decode(), ln.prev_hash, ln.hash))
        else:
            expected_lines.add(line)
    expected_lines.flush()
    matches = csv_digest is not None and expected.close()["sha256"] == csv_digest
    return _Scan(lines, findings, sha.hexdigest(), matches)


def _csv_rows(directory: Path, findings: list[Finding]) -> None:
    """The CSV differs from what the JSONL calls for: match its rows to the lines by seq (so a row cut from one
    file is one finding, not a shifted comparison of every row after it) and name each difference."""
    expected_rows: dict[str, set[bytes]] = {}  # seq → the rows its line(s) call for
    for raw in _raw_lines(directory / EVENTS, hashlib.sha256()):
        try:
            record, data_json, _ = _parse(raw)
            seq = str(record["seq"])
        except (ValueError, KeyError, TypeError):
            continue  # already reported by the first pass
        expected_rows.setdefault(seq, set()).add(_row_digest(
            [*(str(record[k]) for k in HEAD_FIELDS), data_json.decode(), str(record["prev_hash"]),
             str(record["hash"])]))
    with (directory / CSV_FILE).open(encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        if tuple(next(rows, ())) != CSV_COLUMNS:
            findings.append(Finding("csv", f"the header is not {','.join(CSV_COLUMNS)}"))
            return
        for n, row in enumerate(rows, 1):
            seq = row[0] if row else ""
            want = expected_rows.pop(seq, None)
            if want is None:
                findings.append(Finding("csv", f"row {n}: seq {seq!r} is not (or no longer) in {EVENTS}"))
            elif _row_digest(row) not in want:
                findings.append(Finding("csv", f"row {n} differs from {EVENTS}", int(seq)))
    for seq in expected_rows:
        findings.append(Finding("csv", f"no row for this event of {EVENTS}", int(seq)))


def verify_dir(directory: Path, *, public_key: Path | None = None, step: Any = None) -> VerifyReport:
    """Check an export using nothing but its files; every finding says what is wrong and where."""
    with no_gc():
        return _verify_dir(directory, public_key, step)


def _verify_dir(directory: Path, public_key: Path | None, step: Any) -> VerifyReport:
    from .signing import verify_manifest_signature

    report = VerifyReport(str(directory))
    findings = report.findings
    manifest_bytes = (directory / MANIFEST).read_bytes()
    manifest = json.loads(manifest_bytes)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{directory / MANIFEST} is not a {FORMAT} manifest")
    report.account_id = str(manifest.get("account_id", ""))
    expected = int(manifest["events"])
    report.events_expected = expected
    report.days = len(manifest.get("days", []))

    report.signature, problem = verify_manifest_signature(directory / SIGNATURE, manifest_bytes, public_key)
    if problem:
        findings.append(Finding("signature", problem))

    def file_differs(name: str, digest: str) -> None:
        if manifest["files"].get(name, {}).get("sha256") != digest:
            findings.append(Finding("file", f"{name}: SHA-256 differs from the manifest (details follow)"))

    csv_digest = _file_digest(directory / CSV_FILE) if (directory / CSV_FILE).exists() else None
    scan = _scan(directory, step, csv_digest) if (directory / EVENTS).exists() else None  # also hashes the file
    if scan is None:
        findings.append(Finding("file", f"{EVENTS} is missing"))
    else:
        file_differs(EVENTS, scan.events_sha256)
    if csv_digest is None:
        findings.append(Finding("file", f"{CSV_FILE} is missing"))
    else:
        file_differs(CSV_FILE, csv_digest)
    lines: list[_Line] = []
    if scan is not None:
        lines = scan.lines
        findings.extend(scan.findings)
        if csv_digest is not None and not scan.csv_matches:
            _csv_rows(directory, findings)
    report.events_read = len(lines)

    # 1. Content edited in place (its stored hash no longer matches it).
    for ln in lines:
        if not ln.self_valid:
            findings.append(Finding("edited", "the content does not match its hash", ln.seq, ln.id, ln.line))

    # 2. Order in the file: an event that comes after a later one was moved.
    highest = 0
    for ln in lines:
        if ln.seq < highest:
            findings.append(Finding("reordered", f"appears after seq {highest}", ln.seq, ln.id, ln.line))
        highest = max(highest, ln.seq)

    # 3. One event per seq: of several claiming a seq, the one the chain links through is genuine.
    # (A list per seq only where a seq repeats: a million one-element lists cost more than all the checks.)
    first: dict[int, _Line] = {}
    repeated: dict[int, list[_Line]] = {}
    for ln in lines:
        if ln.seq in first:
            repeated.setdefault(ln.seq, [first[ln.seq]]).append(ln)
        else:
            first[ln.seq] = ln
    linked_from = {ln.prev_hash for ln in lines} if repeated else set()
    head_hash = manifest["chain"]["head_hash"]
    kept: dict[int, _Line] = {}
    for seq in sorted(first):
        group = repeated.get(seq)
        if seq < 1 or seq > expected:
            for ln in group or [first[seq]]:
                findings.append(Finding("inserted", f"seq beyond the manifest's {expected} events", ln.seq, ln.id,
                                        ln.line))
            continue
        if group is None:
            kept[seq] = first[seq]
            continue
        prev = kept.get(seq - 1)

        def genuine(ln: _Line, prev: _Line | None = prev, seq: int = seq) -> tuple[bool, bool, bool]:
            return (ln.self_valid, (ln.hash == head_hash) if seq == expected else (ln.hash in linked_from),
                    prev is not None and ln.prev_hash == prev.hash)

        best = max(group, key=genuine)
        kept[seq] = best
        for ln in group:
            if ln is not best:
                findings.append(Finding("inserted", f"a second event claiming seq {seq}", ln.seq, ln.id, ln.line))

    # 4. Missing numbers, and broken links between neighbours that are both there.
    for seq in range(1, expected + 1):
        here = kept.get(seq)
        if here is None:
            before, after = kept.get(seq - 1), kept.get(seq + 1)
            around = ", ".join(p for p in (f"after event {before.id}" if before else "",
                                           f"before event {after.id}" if after else "") if p)
            findings.append(Finding("removed", f"no event with this seq ({around or 'none around it'})", seq))
            continue
        want_prev = GENESIS if seq == 1 else (kept[seq - 1].hash if seq - 1 in kept else None)
        if want_prev is not None and here.prev_hash != want_prev and here.self_valid:
            prior = kept.get(seq - 1)
            if prior is not None and prior.self_valid:
                findings.append(Finding("edited", f"changed and re-hashed: seq {seq}'s prev_hash no longer matches "
                                        "its hash", prior.seq, prior.id, prior.line))
            else:
                findings.append(Finding("edited", "prev_hash is not the previous event's hash", seq, here.id,
                                        here.line))
    last = kept.get(expected)
    if expected and (last is None or last.hash != head_hash):
        findings.append(Finding("head", f"the chain does not end at the manifest's head (seq {expected}, "
                                        f"{head_hash[:16]}…)"))

    # 5. Per-day Merkle roots (each day provable alone), from the manifest's seq ranges.
    for day in manifest.get("days", []):
        hashes = [kept[s].hash for s in range(day["first_seq"], day["last_seq"] + 1) if s in kept]
        if len(hashes) != day["events"] or merkle_root(hashes) != day["merkle_root"]:
            findings.append(Finding("day", f"{day['day']}: the Merkle root of its {day['events']} event(s) "
                                           "differs from the manifest"))

    return report

