"""PolicyDecided events: what each DLP decision records (the event's content; how it is made durable is the
recorder's job: policy's ``events.DecisionLog``).

An event holds request id, account, key, team, model, the deciding scope and version, the verdict, per finding type
its count, the action taken and an HMAC-SHA256 of each matched value (hex) — never the value, never the prompt. The
value is normalised first (:func:`tollgate_dlp.inspection.identity`: a card's digits whatever the grouping, an email
in lower case), so the same card hashes the same however it was written. The HMAC key is the deployment's
(``POLICY_HASH_KEY``); without it :data:`DEV_HASH_KEY` is used, a public development key (derived from a fixed
string, so hashes made with it are NOT secret: set a real key in production; the services warn at start).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tollgate.events.v1 import policy_pb2 as ev
from tollgate_common.events import Envelope, envelope_for

from .inspection import Inspection, Verdict, identity

__all__ = ["DEV_HASH_KEY", "Decision", "decided_event", "match_hasher"]

#: The development HMAC key: SHA-256 of a fixed, public string. Not a secret; production sets POLICY_HASH_KEY.
DEV_HASH_KEY: bytes = hashlib.sha256(b"tollgate policy development hash key (not secret)").digest()

_VERDICT = {
    Verdict.ALLOW: ev.POLICY_VERDICT_ALLOW,
    Verdict.FLAG: ev.POLICY_VERDICT_FLAG,
    Verdict.REDACT: ev.POLICY_VERDICT_REDACT,
    Verdict.BLOCK: ev.POLICY_VERDICT_BLOCK,
}
_DIRECTION = {"request": ev.POLICY_DIRECTION_REQUEST, "response": ev.POLICY_DIRECTION_RESPONSE}


def match_hasher(key: bytes) -> Callable[[str], str]:
    """value → hex HMAC-SHA256 under ``key``."""

    def digest(value: str) -> str:
        return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()

    return digest


@dataclass(frozen=True)
class Decision:
    """The request context a PolicyDecided event needs besides the inspection itself."""

    request_id: str
    account_id: str
    key_id: str
    team: str
    model: str
    direction: str  # "request" or "response"
    sequence: int
    scanned_bytes: int
    scan_micros: int


def decided_event(
    decision: Decision,
    result: Inspection,
    texts: Sequence[str],
    hasher: Callable[[str], str],
    *,
    shadow: bool,
    service: str = "policy",
) -> Envelope:
    """One PolicyDecided envelope (id: request_id:direction[:shadow][:sequence], see policy.proto), produced by
    ``service`` (policy, or ingress when it decides in process; both may produce this type, event_auth)."""
    hashes: dict[str, list[str]] = {}
    for f in result.findings:
        hashes.setdefault(f.type, []).append(hasher(identity(f.type, texts[f.text_index][f.start : f.end])))
    now = int(time.time() * 1000)
    message = ev.PolicyDecided(
        request_id=decision.request_id,
        account_id=decision.account_id,
        key_id=decision.key_id,
        team=decision.team,
        model=decision.model,
        policy_scope=result.scope,
        policy_version=result.policy_version,
        verdict=_VERDICT[result.verdict],
        direction=_DIRECTION[decision.direction],
        shadow=shadow,
        findings=[
            ev.FindingCount(type=t, count=n, action=result.actions[t].value, match_hashes=hashes.get(t, []))
            for t, n in sorted(result.counts.items())
        ],
        scanned_bytes=decision.scanned_bytes,
        scan_micros=decision.scan_micros,
        rule=result.rule,
        occurred_at_unix_ms=now,
    )
    event_id = f"{decision.request_id}:{decision.direction}"
    if shadow:
        event_id += ":shadow"
    if decision.sequence:
        event_id += f":{decision.sequence}"
    return envelope_for(message, id=event_id, service=service, subject=decision.account_id, at_unix_ms=now)
