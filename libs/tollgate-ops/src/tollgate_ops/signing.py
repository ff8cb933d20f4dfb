"""Ed25519 signatures of an audit manifest with an operator's key (``cryptography``).

The manifest names every file's SHA-256, the chain head and each day's Merkle root, so signing its exact bytes
signs the whole export. ``manifest.sig`` is JSON: the algorithm, the signer's raw public key (base64) and the
signature (base64). The embedded key only says who claims to have signed: an auditor pins the operator's published
key with ``tollgate audit verify --public-key FILE``, and without it a valid signature is reported as "not pinned".
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .targets import BadUsage

__all__ = ["fingerprint", "load_private_key", "load_public_key", "sign_manifest", "verify_manifest_signature"]

ALGORITHM = "ed25519"


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    return "sha256:" + hashlib.sha256(_raw(key)).hexdigest()[:32]


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise BadUsage(f"--sign-key {path}: not a readable unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadUsage(f"--sign-key {path}: an Ed25519 key is needed, not {type(key).__name__}")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
        key = (serialization.load_pem_public_key(data) if b"PUBLIC KEY" in data
               else serialization.load_pem_private_key(data, password=None).public_key())
    except (OSError, ValueError, TypeError) as exc:
        raise BadUsage(f"--public-key {path}: not a readable PEM key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BadUsage(f"--public-key {path}: an Ed25519 key is needed, not {type(key).__name__}")
    return key


def sign_manifest(manifest_path: Path, key: Ed25519PrivateKey) -> Path:
    signature = key.sign(manifest_path.read_bytes())
    out = manifest_path.with_name("manifest.sig")
    out.write_text(json.dumps({
        "algorithm": ALGORITHM,
        "public_key": base64.b64encode(_raw(key.public_key())).decode(),
        "fingerprint": fingerprint(key.public_key()),
        "signature": base64.b64encode(signature).decode(),
        "signs": manifest_path.name,
    }, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def verify_manifest_signature(sig_path: Path, manifest: bytes, pinned: Path | None) -> tuple[str, str | None]:
    """(status for the report, a problem or None). A pinned key makes a signature mandatory."""
    pinned_key = load_public_key(pinned) if pinned is not None else None
    if not sig_path.exists():
        return ("absent", "manifest.sig is missing, and --public-key asks for a signature") if pinned_key else (
            "absent", None)
    try:
        sig = json.loads(sig_path.read_text(encoding="utf-8"))
        claimed = Ed25519PublicKey.from_public_bytes(base64.b64decode(sig["public_key"]))
        signature = base64.b64decode(sig["signature"])
        if sig.get("algorithm") != ALGORITHM:
            return "invalid", f"manifest.sig: algorithm {sig.get('algorithm')!r} is not {ALGORITHM}"
    except (ValueError, KeyError, TypeError) as exc:
        return "invalid", f"manifest.sig is not readable ({exc.__class__.__name__})"
    key = pinned_key or claimed
    try:
        key.verify(signature, manifest)
    except InvalidSignature:
        who = "the pinned key" if pinned_key else f"its own key {fingerprint(claimed)}"
        return "invalid", f"manifest.sig does not verify with {who}: manifest.json was changed or re-signed"
    if pinned_key is None:
        return f"valid, key {fingerprint(claimed)} (not pinned: pass --public-key)", None
    return f"valid, pinned key {fingerprint(pinned_key)}", None
