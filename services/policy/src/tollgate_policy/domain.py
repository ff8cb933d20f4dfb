"""Policy sets, verdicts and redaction: what happens to a prompt once the detectors have found something. Pure.

A :class:`PolicySet` maps each detector to an :class:`Action`. An account without one gets
:data:`DEFAULT_RULES` at version 0: cards and secrets are redacted (a prompt carrying them still goes out,
without them), emails are allowed (too common in ordinary prompts to rewrite by default). Rules an account sets
override the defaults detector by detector; a detector it does not name keeps its default, so a new detector
added later protects existing accounts at once.

:func:`inspect` decides the verdict (BLOCK beats REDACT beats ALLOW) and, for REDACT, rewrites every redacted
match into a typed, numbered placeholder such as ``[PAYMENT_CARD_1]``; the same value gets the same number
everywhere in one request, so the model can still tell "the same card" from "another card".
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from .detectors import DETECTORS, EMAIL, PAYMENT_CARD, Detector, Match, scan
from .errors import InvalidRule, UnknownDetector

__all__ = [
    "DEFAULT_RULES",
    "Action",
    "Finding",
    "Inspection",
    "PolicySet",
    "Verdict",
    "inspect",
    "validate_rules",
]


class Action(enum.StrEnum):
    """What a detector's match does to the request."""

    ALLOW = "allow"
    REDACT = "redact"
    BLOCK = "block"


class Verdict(enum.StrEnum):
    """The request's outcome: the strongest action among its findings."""

    ALLOW = "allow"
    REDACT = "redact"
    BLOCK = "block"


#: The policy of an account that never set one (version 0).
DEFAULT_RULES: Mapping[str, Action] = MappingProxyType(
    {"email": Action.ALLOW, "payment_card": Action.REDACT, "secret": Action.REDACT}
)
assert set(DEFAULT_RULES) == set(DETECTORS), "every detector needs a default action"


def validate_rules(rules: Iterable[tuple[str, Action | None]]) -> dict[str, Action]:
    """The rules a caller sent, checked: known detectors, an action each, each detector at most once."""
    checked: dict[str, Action] = {}
    for detector, action in rules:
        if detector not in DETECTORS:
            known = ", ".join(DETECTORS)
            raise UnknownDetector(f"unknown detector {detector!r} (known: {known})")
        if action is None:
            raise InvalidRule(f"the rule for {detector!r} has no action (allow, redact or block)")
        if detector in checked:
            raise InvalidRule(f"detector {detector!r} appears in more than one rule")
        checked[detector] = action
    return checked


@dataclass(frozen=True)
class PolicySet:
    """An account's rules at one version. ``rules`` holds only what the account set; see :meth:`effective`."""

    account_id: str
    rules: Mapping[str, Action]
    version: int

    @classmethod
    def default(cls, account_id: str) -> PolicySet:
        return cls(account_id=account_id, rules=MappingProxyType({}), version=0)

    def action_for(self, detector: str) -> Action:
        return self.rules.get(detector) or DEFAULT_RULES[detector]

    def effective(self) -> dict[str, Action]:
        """Every detector's action, defaults filled in, in detector order (what GetPolicy shows)."""
        return {name: self.action_for(name) for name in DETECTORS}

    def revised(self, rules: Mapping[str, Action]) -> PolicySet:
        """The next version with ``rules`` (already validated) replacing this version's rules."""
        return PolicySet(account_id=self.account_id, rules=MappingProxyType(dict(rules)), version=self.version + 1)


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


@dataclass(frozen=True)
class Inspection:
    """The outcome of inspecting one request's texts. ``redacted_texts`` is empty unless the verdict is REDACT."""

    verdict: Verdict
    findings: tuple[Finding, ...]
    redacted_texts: tuple[str, ...]
    policy_version: int
    counts: Mapping[str, int] = field(default_factory=dict)


_VERDICT_OF = {Action.ALLOW: Verdict.ALLOW, Action.REDACT: Verdict.REDACT, Action.BLOCK: Verdict.BLOCK}
_RANK = {Action.ALLOW: 0, Action.REDACT: 1, Action.BLOCK: 2}


def inspect(texts: Sequence[str], policy: PolicySet) -> Inspection:
    """Scan every text, apply ``policy``, and redact when the verdict is REDACT."""
    actions = {name: policy.action_for(name) for name in DETECTORS}
    findings: list[Finding] = []
    matches: list[list[Match]] = []
    strongest = Action.ALLOW
    counts: dict[str, int] = {}
    for index, text in enumerate(texts):
        found = scan(text)
        matches.append(found)
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
                )
            )
    verdict = _VERDICT_OF[strongest]
    redacted: tuple[str, ...] = ()
    if verdict is Verdict.REDACT:
        redacted = _redact(texts, matches, actions)
    return Inspection(
        verdict=verdict,
        findings=tuple(findings),
        redacted_texts=redacted,
        policy_version=policy.version,
        counts=counts,
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
            key = (detector.name, _identity(detector, text[match.start : match.end]))
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


def _identity(detector: Detector, value: str) -> str:
    """What makes two matches "the same value": a card's digits whatever the grouping; an email ignoring case."""
    if detector is PAYMENT_CARD:
        return value.replace(" ", "").replace("-", "")
    if detector is EMAIL:
        return value.lower()
    return value
