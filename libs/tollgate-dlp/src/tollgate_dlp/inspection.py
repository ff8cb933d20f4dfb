"""Inspection and redaction: what happens to a request's texts once the detectors have run. Pure.

The verdict is the strongest action among the findings (BLOCK > REDACT > FLAG > ALLOW). Routing can block too:
when ``allowed_models`` is set and the requested model is not in it (rule ``model_not_allowed``), or when two
``allowed_*`` lists that apply have nothing in common (rule ``model_not_allowed``, ``provider_not_allowed`` or
``region_not_allowed``). Otherwise the merged limits are
returned as :class:`Routing` for the router.

REDACT rewrites every redacted match into a typed, numbered placeholder such as ``[PAYMENT_CARD_1]``; the same
value gets the same number everywhere in one request, so the model can still tell "the same card" from another.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from .detectors import EMAIL, PAYMENT_CARD, Match, scan
from .document import MODEL_NOT_ALLOWED, Action, PolicySet, Routing

__all__ = ["Finding", "Inspection", "Verdict", "identity", "inspect"]


class Verdict(enum.StrEnum):
    """The request's outcome: the strongest action among its findings (or BLOCK by a routing rule)."""

    ALLOW = "allow"
    FLAG = "flag"
    REDACT = "redact"
    BLOCK = "block"


class Finding(NamedTuple):
    """One match as reported: where, which detector (and version), and the action it drew. Never the text.

    A named tuple (immutable, cheap to build): a request can carry many findings.
    """

    type: str
    text_index: int
    start: int
    end: int
    detector_version: str
    action: Action
    #: 0..1, from the detector (1 for validated formats).
    confidence: float = 1.0


@dataclass(frozen=True)
class Inspection:
    """The outcome of inspecting one request's texts. ``redacted_texts`` is empty unless the verdict is REDACT."""

    verdict: Verdict
    findings: tuple[Finding, ...]
    redacted_texts: tuple[str, ...]
    policy_version: int
    counts: Mapping[str, int] = field(default_factory=dict)
    routing: Routing = field(default_factory=Routing)
    #: The scope that decided ("account", "team:<n>", "key:<id>") and, for a routing block, the rule.
    scope: str = "account"
    rule: str = ""
    #: Per finding type, the action taken (for the PolicyDecided event).
    actions: Mapping[str, Action] = field(default_factory=dict)
    #: The resolved policy wants the model's answers inspected too (Resolved.scan_responses).
    scan_responses: bool = False


_VERDICT_OF = {
    Action.ALLOW: Verdict.ALLOW,
    Action.FLAG: Verdict.FLAG,
    Action.REDACT: Verdict.REDACT,
    Action.BLOCK: Verdict.BLOCK,
}
_RANK = {Action.ALLOW: 0, Action.FLAG: 1, Action.REDACT: 2, Action.BLOCK: 3}


def inspect(
    texts: Sequence[str],
    policy: PolicySet,
    *,
    team: str = "",
    key_id: str = "",
    model: str = "",
    matches: list[list[Match]] | None = None,
) -> Inspection:
    """Scan every text (unless ``matches`` are given), apply ``policy`` for (team, key), redact on REDACT.

    ``model`` is checked against ``allowed_models`` when given (requests; not response windows)."""
    resolved = policy.resolve(team, key_id)
    actions = resolved.actions
    if matches is None:
        matches = [scan(text) for text in texts]
    findings: list[Finding] = []
    strongest = Action.ALLOW
    counts: dict[str, int] = {}
    for index, found in enumerate(matches):
        for match in found:
            detector = match.detector
            action = actions[detector.name]
            if _RANK[action] > _RANK[strongest]:
                strongest = action
            counts[detector.name] = counts.get(detector.name, 0) + 1
            findings.append(
                Finding(
                    type=detector.name,
                    text_index=index,
                    start=match.start,
                    end=match.end,
                    detector_version=detector.version,
                    action=action,
                    confidence=match.confidence,
                )
            )
    routing, rule = resolved.routing, resolved.conflict
    for conditional in resolved.when_found:
        if conditional.types.intersection(counts):
            routing, step = routing.narrowed(conditional.routing)
            rule = rule or step
    if not rule and model and routing.allowed_models and model not in routing.allowed_models:
        rule = MODEL_NOT_ALLOWED
    verdict = Verdict.BLOCK if rule else _VERDICT_OF[strongest]
    redacted: tuple[str, ...] = ()
    if verdict is Verdict.REDACT:
        redacted = _redact(texts, matches, actions)
    return Inspection(
        verdict=verdict,
        findings=tuple(findings),
        redacted_texts=redacted,
        policy_version=policy.version,
        counts=counts,
        routing=routing,
        scope=resolved.scope,
        rule=rule,
        actions={t: actions[t] for t in counts},
        scan_responses=resolved.scan_responses,
    )


def _redact(texts: Sequence[str], matches: list[list[Match]], actions: Mapping[str, Action]) -> tuple[str, ...]:
    """Replace every match whose action is REDACT by ``[LABEL_n]``; n counts distinct values per type."""
    numbers: dict[tuple[str, str], int] = {}
    per_label: dict[str, int] = {}
    out: list[str] = []
    for text, found in zip(texts, matches, strict=True):
        parts: list[str] = []
        cursor = 0
        for match in found:
            detector = match.detector
            if actions[detector.name] is not Action.REDACT:
                continue
            key = (detector.name, identity(detector.name, text[match.start : match.end]))
            number = numbers.get(key)
            if number is None:
                number = per_label.get(detector.label, 0) + 1
                per_label[detector.label] = number
                numbers[key] = number
            parts.append(text[cursor : match.start])
            parts.append(f"[{detector.label}_{number}]")
            cursor = match.end
        parts.append(text[cursor:])
        out.append("".join(parts))
    return tuple(out)


def identity(detector: str, value: str) -> str:
    """What makes two matches "the same value" (placeholders, and the hashes in PolicyDecided): a card's digits or
    an IBAN whatever the grouping; an email ignoring case; anything else as matched."""
    if detector == PAYMENT_CARD.name:
        return value.replace(" ", "").replace("-", "")
    if detector == "iban":
        return value.replace(" ", "").upper()
    if detector == EMAIL.name:
        return value.lower()
    return value
