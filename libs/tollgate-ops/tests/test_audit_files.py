"""The audit files' own guarantees, over many chains (Hypothesis): an untouched export verifies; one edit, removal,
swap or insertion anywhere is reported as exactly that, at that seq; any change to the manifest breaks its
signature. Pure files: no database, as ``tollgate audit verify`` itself.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tollgate_ops.audit_files import MANIFEST, ChainWriter, merkle_root, record_hash, record_line, verify_dir
from tollgate_ops.signing import sign_manifest

DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]


def write_export(out: Path, n: int, amounts: list[int]) -> list[str]:
    writer = ChainWriter(out)
    for i in range(n):
        day = DAYS[i * len(DAYS) // n]
        writer.append({"time": f"{day}T00:00:{i % 60:02d}.000Z", "day": day, "id": f"ev_{i}",
                       "type": "tollgate.billing.v1.credits.added", "source": "//tollgate/billing",
                       "subject": "acct", "account_id": "acct", "store": "s",
                       "data": {"amount_nanos": amounts[i % len(amounts)], "note": "é,\"quoted\"\nline"}})
    writer.finish({"account_id": "acct"})
    return (out / "events.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)


def findings(directory: Path) -> set[tuple[str, int | None, str | None]]:
    return {(f.kind, f.seq, f.event_id) for f in verify_dir(directory).findings}


def with_lines(src: Path, dst: Path, lines: list[str]) -> Path:
    shutil.copytree(src, dst)
    (dst / "events.jsonl").write_text("".join(lines), encoding="utf-8")
    return dst


chains = st.integers(min_value=3, max_value=40)
amounts = st.lists(st.integers(min_value=0, max_value=2**62), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=chains, money=amounts, data=st.data())
def test_each_kind_of_tampering_is_named_at_its_seq(n: int, money: list[int], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = write_export(root / "x", n, money)
        assert verify_dir(root / "x").intact
        i = data.draw(st.integers(min_value=0, max_value=n - 2), label="where")

        edited = json.loads(lines[i])
        edited["data"]["amount_nanos"] += 1
        got = findings(with_lines(root / "x", root / "e", [*lines[:i], record_line(edited) + "\n", *lines[i + 1:]]))
        assert ("edited", i + 1, f"ev_{i}") in got
        assert not {k for k, _, _ in got} & {"removed", "inserted", "reordered"}

        edited["hash"] = record_hash(edited)  # the forger re-hashes: the next event's link gives it away
        got = findings(with_lines(root / "x", root / "h", [*lines[:i], record_line(edited) + "\n", *lines[i + 1:]]))
        assert ("edited", i + 1, f"ev_{i}") in got

        got = findings(with_lines(root / "x", root / "r", [*lines[:i], *lines[i + 1:]]))
        assert ("removed", i + 1, None) in got
        assert not {k for k, _, _ in got} & {"edited", "inserted", "reordered"}

        got = findings(with_lines(root / "x", root / "s", [*lines[:i], lines[i + 1], lines[i], *lines[i + 2:]]))
        assert ("reordered", i + 1, f"ev_{i}") in got
        assert not {k for k, _, _ in got} & {"edited", "inserted", "removed"}

        forged = json.loads(lines[i])
        forged["id"], forged["data"] = "forged", {"amount_nanos": 10**12}
        forged["hash"] = record_hash(forged)
        got = findings(with_lines(root / "x", root / "i", [*lines[:i], record_line(forged) + "\n", *lines[i:]]))
        assert ("inserted", i + 1, "forged") in got
        assert not {k for k, _, _ in got} & {"edited", "removed"}


def test_the_csv_and_the_signature_are_checked(tmp_path: Path) -> None:
    write_export(tmp_path / "x", 10, [5])
    key = Ed25519PrivateKey.generate()
    sign_manifest(tmp_path / "x" / MANIFEST, key)
    public = tmp_path / "pub.pem"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    report = verify_dir(tmp_path / "x", public_key=public)
    assert report.intact and report.signature.startswith("valid, pinned")

    shutil.copytree(tmp_path / "x", tmp_path / "c")
    rows = (tmp_path / "c" / "events.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    rows[3] = rows[3].replace("ev_2", "ev_X")
    (tmp_path / "c" / "events.csv").write_text("".join(rows), encoding="utf-8")
    assert ("csv", 3, None) in findings(tmp_path / "c")

    shutil.copytree(tmp_path / "x", tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    manifest["days"][0]["merkle_root"] = merkle_root([])
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(manifest))
    tampered = verify_dir(tmp_path / "m", public_key=public)
    assert tampered.signature == "invalid" and {f.kind for f in tampered.findings} >= {"signature", "day"}


def test_an_event_from_a_service_not_allowed_to_produce_its_type_is_not_genuine(tmp_path: Path) -> None:
    """A chain written consistently (every hash right) still fails when one event claims a producer that may not
    produce its type: what the live consumers refuse is never verified as genuine."""
    writer = ChainWriter(tmp_path / "x")
    rows = [("ev_ok", "tollgate.billing.v1.credits.added", "//tollgate/billing"),
            ("ev_forged", "tollgate.billing.v1.credits.added", "//tollgate/ingress"),
            ("ev_rated", "tollgate.usage.v1.usage.rated", "//tollgate/metering"),
            ("ev_unknown", "tollgate.nothing.v1", "//tollgate/billing")]
    for event_id, ce_type, source in rows:
        writer.append({"time": "2026-11-01T00:00:00.000Z", "day": "2026-11-01", "id": event_id, "type": ce_type,
                       "source": source, "subject": "acct", "account_id": "acct", "store": "s", "data": {}})
    writer.finish({"account_id": "acct"})
    report = verify_dir(tmp_path / "x")
    assert {(f.kind, f.seq, f.event_id) for f in report.findings} == {("producer", 2, "ev_forged"),
                                                                      ("producer", 4, "ev_unknown")}
    forged = next(f for f in report.findings if f.event_id == "ev_forged")
    assert "only be produced by billing" in forged.detail
