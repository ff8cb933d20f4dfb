"""``tollgate audit export`` / ``verify`` against the running platform (SQLite and PostgreSQL), through the installed
console script: the export holds the account's real events, verification needs only the files, and each kind of
tampering (edit, removal, reordering, insertion, a changed manifest) is named with the event it touched.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tollgate_dev.platform import Platform
from tollgate_ops.audit_files import record_hash, record_line

from .tenant import Tenant
from .test_ops import tollgate
from .test_request_path import run_completions

# Each case runs the console script several times (a fresh interpreter each); on a loaded 2-core machine the
# default 300 s is too short for the PostgreSQL one, which also starts its own platform.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def keypair(tmp: Path) -> tuple[Path, Path]:
    key = Ed25519PrivateKey.generate()
    private, public = tmp / "ops.pem", tmp / "ops.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def stores(platform: Platform) -> list[str]:
    return ["--db", f"billing={platform.database_url('billing')}",
            "--db", f"metering={platform.database_url('metering')}"]


def export(platform: Platform, account: str, out: Path, *extra: str) -> dict[str, Any]:
    result = tollgate("audit", "export", "--account", account, "--out", str(out), "--json", *stores(platform), *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(json.loads(result.stdout))


def verify(directory: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    result = tollgate("audit", "verify", str(directory), "--json", *extra)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def lines(directory: Path) -> list[str]:
    return (directory / "events.jsonl").read_text().splitlines(keepends=True)


def tampered(source: Path, tmp: Path, name: str, new_lines: list[str]) -> Path:
    copy = tmp / name
    shutil.copytree(source, copy)
    (copy / "events.jsonl").write_text("".join(new_lines))
    return copy


def kinds(report: dict[str, Any]) -> set[tuple[str, int | None, str | None]]:
    return {(f["kind"], f.get("seq"), f.get("event_id")) for f in report["findings"]}


def settled_tenant(platform: Platform) -> tuple[Tenant, dict[str, int]]:
    tenant = Tenant.create(platform)
    run_completions(tenant)
    return tenant, tenant.settle()


def test_export_holds_the_accounts_events_and_verifies_offline_with_the_pinned_key(
    platform: Platform, tmp_path: Path
) -> None:
    tenant, balance = settled_tenant(platform)
    private, public = keypair(tmp_path)
    out = tmp_path / "export"
    report = export(platform, tenant.account_id, out, "--sign-key", str(private))
    assert report["by_store"]["metering.event_archive"] == 2 and report["by_store"]["metering.rated_usage"] == 2
    assert report["signed_by"].startswith("sha256:")

    records = [json.loads(line) for line in lines(out)]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1)) == list(range(1, report["events"] + 1))
    assert {r["account_id"] for r in records} == {tenant.account_id}
    types = [r["type"].rsplit(".", 2)[-2] + "." + r["type"].rsplit(".", 1)[-1] for r in records]
    for kind in ("account.created", "credits.added", "api_key.created", "hold.placed", "usage.recorded",
                 "usage.rated", "hold.captured"):
        assert kind in types, types
    assert types.index("hold.placed") < types.index("usage.recorded") < types.index("hold.captured")
    # The money in the export is the money on the wallet, exactly.
    captured = sum(int(r["data"].get("captured_nanos", 0)) for r in records if r["type"].endswith("hold.captured"))
    rated = sum(int(r["data"]["resale_price_nanos"]) for r in records if r["type"].endswith("usage.rated"))
    assert captured == rated == 10 * 10**9 - balance["balance_nanos"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["chain"]["head_hash"] == records[-1]["hash"] and manifest["events"] == len(records)
    assert sum(d["events"] for d in manifest["days"]) == len(records)

    # Offline: the files moved elsewhere, no database named.
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)
    status, checked = verify(moved, "--public-key", str(public))
    assert status == 0 and checked["result"] == "intact" and checked["findings"] == []
    assert checked["signature"].startswith("valid, pinned key")
    text = tollgate("audit", "verify", str(moved))
    assert text.returncode == 0 and "RESULT: INTACT" in text.stdout and "not pinned" in text.stdout

    (tmp_path / "other").mkdir()
    _, other_public = keypair(tmp_path / "other")
    status, wrong_key = verify(moved, "--public-key", str(other_public))
    assert status == 1 and ("signature", None, None) in kinds(wrong_key)


def test_verify_names_each_edited_removed_reordered_or_inserted_event(platform: Platform, tmp_path: Path) -> None:
    tenant, _ = settled_tenant(platform)
    out = tmp_path / "export"
    export(platform, tenant.account_id, out)
    original = lines(out)
    assert len(original) >= 8
    ids = [json.loads(line)["id"] for line in original]

    # Edited: a capture's amount lowered, its hash left as it was.
    n = next(i for i, line in enumerate(original) if "hold.captured" in line)
    record = json.loads(original[n])
    record["data"]["captured_nanos"] = int(record["data"]["captured_nanos"]) - 1
    edited = [*original[:n], record_line(record) + "\n", *original[n + 1:]]
    status, report = verify(tampered(out, tmp_path, "edited", edited))
    assert status == 1 and ("edited", n + 1, ids[n]) in kinds(report)
    assert ("reordered", n + 1, ids[n]) not in kinds(report)

    # Edited and re-hashed: the event itself checks out, the next one's link does not.
    record["hash"] = record_hash(record)
    rehashed = [*original[:n], record_line(record) + "\n", *original[n + 1:]]
    status, report = verify(tampered(out, tmp_path, "rehashed", rehashed))
    assert n + 1 < len(original)  # the first of two captures: another event follows it
    assert status == 1 and ("edited", n + 1, ids[n]) in kinds(report)

    # Removed.
    status, report = verify(tampered(out, tmp_path, "removed", original[:3] + original[4:]))
    assert status == 1 and ("removed", 4, None) in kinds(report)
    assert ids[2] in next(f["detail"] for f in report["findings"] if f["kind"] == "removed")

    # Reordered.
    swapped = [original[0], original[2], original[1], *original[3:]]
    status, report = verify(tampered(out, tmp_path, "reordered", swapped))
    assert status == 1 and ("reordered", 2, ids[1]) in kinds(report)
    assert not {k for k, _, _ in kinds(report)} & {"edited", "removed", "inserted"}

    # Inserted: a forged credit, well-formed and hashed, claiming seq 5 and linked to seq 4.
    forged = json.loads(original[4])
    forged.update(id="forged-credit", type="tollgate.billing.v1.credits.added",
                  data={"account_id": tenant.account_id, "amount_nanos": 10**12})
    forged["prev_hash"] = json.loads(original[3])["hash"]
    forged["hash"] = record_hash(forged)
    forged_lines = [*original[:4], record_line(forged) + "\n", *original[4:]]
    status, report = verify(tampered(out, tmp_path, "inserted", forged_lines))
    assert status == 1 and ("inserted", 5, "forged-credit") in kinds(report)
    assert ("edited", 5, ids[4]) not in kinds(report)

    # The manifest changed (a count lowered to hide the end): the signature no longer holds.
    private, public = keypair(tmp_path)
    signed = tmp_path / "signed"
    export(platform, tenant.account_id, signed, "--sign-key", str(private))
    manifest = json.loads((signed / "manifest.json").read_text())
    manifest["events"] -= 1
    (signed / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    status, report = verify(signed, "--public-key", str(public))
    assert status == 1 and report["signature"] == "invalid"
    assert ("inserted", len(original), ids[-1]) in kinds(report)


def test_audit_bad_usage_exits_2(platform: Platform, tmp_path: Path) -> None:
    assert tollgate("audit", "--help").returncode == 0
    no_export = tollgate("audit", "verify", str(tmp_path))
    assert no_export.returncode == 2 and "manifest.json" in no_export.stderr
    backwards = tollgate("audit", "export", "--account", "a", "--out", str(tmp_path / "x"), "--from", "2026-12-02",
                         "--to", "2026-12-01", *stores(platform))
    assert backwards.returncode == 2 and "--to" in backwards.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    over = tollgate("audit", "export", "--account", "a", "--out", str(tmp_path / "full"), *stores(platform))
    assert over.returncode == 2 and "empty" in over.stderr


def test_export_window_and_postgresql(pg_platform: Platform, tmp_path: Path) -> None:
    tenant, balance = settled_tenant(pg_platform)
    out = tmp_path / "pg"
    report = export(pg_platform, tenant.account_id, out)
    assert report["by_store"]["metering.event_archive"] == 2 and report["by_store"]["metering.rated_usage"] == 2
    status, checked = verify(out)
    assert status == 0 and checked["events_read"] == report["events"]
    records = [json.loads(line) for line in lines(out)]
    rated = sum(int(r["data"]["resale_price_nanos"]) for r in records if r["type"].endswith("usage.rated"))
    assert rated == 10 * 10**9 - balance["balance_nanos"]

    # --from is inclusive, --to exclusive, on the event time: from the first usage event on, only the later ones.
    first_usage = next(r for r in records if r["type"].endswith("usage.recorded"))
    window = export(pg_platform, tenant.account_id, tmp_path / "window", "--from", first_usage["time"])
    later = [r for r in records if r["time"] >= first_usage["time"]]
    assert window["events"] == len(later) < len(records)
    empty = export(pg_platform, tenant.account_id, tmp_path / "empty", "--to", records[0]["time"])
    assert empty["events"] == 0 and verify(tmp_path / "empty")[0] == 0
