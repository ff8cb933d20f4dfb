"""The policy document: what an account may set, parsed, validated and serialised. Pure.
Policy sets, verdicts, routing limits and redaction: what happens to a request once the detectors have run. Pure.

The policy document
-------------------
An account's policy is ONE document, versioned as a whole, with up to three kinds of scope::

    {"account": SCOPE, "teams": {"<team>": SCOPE}, "keys": {"<key id>": SCOPE}}

    SCOPE = {"rules":   {"<detector>": "allow" | "flag" | "redact" | "block"},
             "routing": {"allowed_models": [...], "allowed_providers": [...],
                         "denied_providers": [...], "allowed_regions": [...]},
             "when_found": [{"types": ["<detector>", ...], "allowed_regions": ["eu"], ...any routing list}],
             "custom_detectors": [{"name": "custom:<name>", "pattern": "<regex>" | "keywords": [...],
                                   "label": "<PLACEHOLDER LABEL>"}],     (account scope only)
             "responses": "scan" | "off"}

Custom detectors are defined at account scope (one scanner per account policy version) and named like built-in
ones in ``rules`` and ``when_found`` of any scope (``"custom:employee_id": "block"``); without a rule they FLAG.

How a document applies to one request is :mod:`.resolved`; what then happens to the request's texts is
:mod:`.inspection`. Caps on a document's size are :mod:`.limits`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .detectors import DETECTORS, CustomDetector
from .errors import InvalidArgument, InvalidRule, UnknownDetector

if TYPE_CHECKING:
    from .resolved import Resolved

__all__ = [
    "DEFAULT_RULES",
    "MODEL_NOT_ALLOWED",
    "RESPONSES_OFF",
    "RESPONSES_SCAN",
    "Action",
    "Conditional",
    "PolicySet",
    "Routing",
    "ScopePolicy",
    "check_scope",
    "default_action",
    "parse_scope_document",
    "validate_rules",
]


class Action(enum.StrEnum):
    """What a detector's match does to the request."""

    ALLOW = "allow"
    FLAG = "flag"
    REDACT = "redact"
    BLOCK = "block"


#: The policy of an account that never set one (version 0): cards, secrets, IBANs and SSNs are redacted; emails,
#: phone numbers and IP addresses are allowed (too common in ordinary prompts to rewrite by default; findings are
#: still recorded in PolicyDecided). A detector missing here (one added later) is FLAG until an account decides.
DEFAULT_RULES: Mapping[str, Action] = MappingProxyType(
    {
        "email": Action.ALLOW,
        "payment_card": Action.REDACT,
        "secret": Action.REDACT,
        "iban": Action.REDACT,
        "ssn": Action.REDACT,
        "phone": Action.ALLOW,
        "ip_address": Action.ALLOW,
    }
)
_FALLBACK = Action.FLAG

#: Routing rules that block (InspectResponse.rule): the requested model is not allowed, or the allow-lists that
#: apply have nothing in common for models, providers or regions.
MODEL_NOT_ALLOWED = "model_not_allowed"
_CONFLICT_RULE = {
    "allowed_models": MODEL_NOT_ALLOWED,
    "allowed_providers": "provider_not_allowed",
    "allowed_regions": "region_not_allowed",
}

_CUSTOM_PREFIX = "custom:"
_ROUTING_LISTS = ("allowed_models", "allowed_providers", "denied_providers", "allowed_regions")
#: Values of a scope's ``responses`` setting (absent = inherit, then "scan when a rule redacts or blocks").
RESPONSES_SCAN = "scan"
RESPONSES_OFF = "off"
_MAX_SCOPE_NAME = 200
#: Resolutions kept per policy version (one per team and key seen); past it the memo starts again.
_RESOLVED_MAX = 4096


def default_action(detector: str) -> Action:
    return DEFAULT_RULES.get(detector, _FALLBACK)


def validate_rules(rules: Iterable[tuple[str, Action | None]]) -> dict[str, Action]:
    """The rules a caller sent, checked: known detectors, an action each, each detector at most once."""
    checked: dict[str, Action] = {}
    for detector, action in rules:
        if detector not in DETECTORS and not detector.startswith(_CUSTOM_PREFIX):
            known = ", ".join(DETECTORS)
            raise UnknownDetector(f"unknown detector {detector!r} (known: {known})")
        if action is None:
            raise InvalidRule(f"the rule for {detector!r} has no action (allow, flag, redact or block)")
        if detector in checked:
            raise InvalidRule(f"detector {detector!r} appears in more than one rule")
        checked[detector] = action
    return checked


@dataclass(frozen=True)
class Routing:
    """Where a request may go. Empty tuples mean "no limit" (``denied_providers``: nothing denied)."""

    allowed_models: tuple[str, ...] = ()
    allowed_providers: tuple[str, ...] = ()
    denied_providers: tuple[str, ...] = ()
    allowed_regions: tuple[str, ...] = ()

    def narrowed(self, other: Routing) -> tuple[Routing, str]:
        """Both limits at once, and the blocking rule when an ``allowed_*`` intersection is empty ("" if none)."""
        conflict = ""
        merged: dict[str, tuple[str, ...]] = {}
        for name in ("allowed_models", "allowed_providers", "allowed_regions"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine and theirs:
                both = tuple(v for v in mine if v in theirs)
                if not both:
                    conflict = conflict or _CONFLICT_RULE[name]
                merged[name] = both
            else:
                merged[name] = mine or theirs
        merged["denied_providers"] = tuple(dict.fromkeys(self.denied_providers + other.denied_providers))
        return Routing(**merged), conflict

    def to_json(self) -> dict[str, list[str]]:
        return {name: list(getattr(self, name)) for name in _ROUTING_LISTS if getattr(self, name)}


@dataclass(frozen=True)
class Conditional:
    """Routing limits that apply only when the request has a finding of one of ``types``."""

    types: frozenset[str]
    routing: Routing

    def to_json(self) -> dict[str, Any]:
        return {"types": sorted(self.types), **self.routing.to_json()}


@dataclass(frozen=True)
class ScopePolicy:
    """One scope's own settings (account, a team or a key); what it does not set, it inherits."""

    rules: Mapping[str, Action] = field(default_factory=lambda: MappingProxyType({}))
    routing: Routing = Routing()
    when_found: tuple[Conditional, ...] = ()
    #: Only at account scope (PolicySet.check).
    custom: tuple[CustomDetector, ...] = ()
    #: "scan", "off", or "" (inherit; see the module docstring).
    responses: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.rules:
            out["rules"] = {d: a.value for d, a in sorted(self.rules.items())}
        if self.routing.to_json():
            out["routing"] = self.routing.to_json()
        if self.when_found:
            out["when_found"] = [c.to_json() for c in self.when_found]
        if self.custom:
            out["custom_detectors"] = [_custom_json(c) for c in self.custom]
        if self.responses:
            out["responses"] = self.responses
        return out


def _custom_json(custom: CustomDetector) -> dict[str, Any]:
    out: dict[str, Any] = {"name": custom.name}
    if custom.pattern:
        out["pattern"] = custom.pattern
    if custom.keywords:
        out["keywords"] = list(custom.keywords)
    if custom.label:
        out["label"] = custom.label
    return out


def _parse_custom(raw: object) -> tuple[CustomDetector, ...]:
    """The shape of ``custom_detectors``; whether each one compiles is the scanner's call (application.py)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidArgument("custom_detectors must be a list")
    out: list[CustomDetector] = []
    for i, item in enumerate(raw):
        where = f"custom_detectors[{i}]"
        if not isinstance(item, dict) or set(item) - {"name", "pattern", "keywords", "label"}:
            raise InvalidArgument(f"{where} must be an object with name, pattern or keywords, and label")
        name, pattern, label = item.get("name"), item.get("pattern", ""), item.get("label", "")
        if not isinstance(name, str) or not name.startswith(_CUSTOM_PREFIX):
            raise InvalidArgument(f"{where}.name must look like 'custom:employee_id'")
        if not isinstance(pattern, str) or not isinstance(label, str):
            raise InvalidArgument(f"{where}.pattern and .label must be strings")
        keywords = _string_list(item.get("keywords"), f"{where}.keywords")
        out.append(CustomDetector(name=name, pattern=pattern, keywords=keywords, label=label))
    if len({c.name for c in out}) != len(out):
        raise InvalidArgument("custom_detectors names must be unique")
    return tuple(out)


_EMPTY_SCOPE = ScopePolicy()


def check_scope(scope: str) -> tuple[str, str]:
    """``"account"``, ``"team:<name>"`` or ``"key:<id>"`` → (kind, name); InvalidArgument otherwise."""
    if scope == "account":
        return "account", ""
    kind, _, name = scope.partition(":")
    if kind not in ("team", "key") or not name or len(name) > _MAX_SCOPE_NAME:
        raise InvalidArgument(f"scope {scope[:80]!r} must be 'account', 'team:<name>' or 'key:<id>'")
    return kind, name


def _string_list(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidArgument(f"{where} must be a list of non-empty strings")
    return tuple(dict.fromkeys(value))


def _routing(raw: Mapping[str, Any], where: str) -> Routing:
    return Routing(**{name: _string_list(raw.get(name), f"{where}.{name}") for name in _ROUTING_LISTS})


def parse_scope_document(raw: object) -> ScopePolicy:
    """A scope's JSON document, validated (unknown keys, detectors and actions are errors, never ignored)."""
    if not isinstance(raw, dict):
        raise InvalidArgument("a policy document must be a JSON object")
    unknown = set(raw) - {"rules", "routing", "when_found", "custom_detectors", "responses"}
    if unknown:
        raise InvalidArgument(f"unknown policy field(s): {', '.join(sorted(unknown))}")
    rules_raw = raw.get("rules") or {}
    if not isinstance(rules_raw, dict):
        raise InvalidArgument("rules must be an object {detector: action}")
    pairs: list[tuple[str, Action | None]] = []
    for detector, action in rules_raw.items():
        if not isinstance(action, str) or action not in Action._value2member_map_:  # {} / [] are unhashable
            raise InvalidRule(f"the rule for {str(detector)[:80]!r} must be one of allow, flag, redact, block")
        pairs.append((str(detector), Action(action)))
    rules = validate_rules(pairs)
    routing_raw = raw.get("routing") or {}
    if not isinstance(routing_raw, dict) or set(routing_raw) - set(_ROUTING_LISTS):
        raise InvalidArgument(f"routing must be an object with only {', '.join(_ROUTING_LISTS)}")
    conditionals: list[Conditional] = []
    when_raw = raw.get("when_found") or []
    if not isinstance(when_raw, list):
        raise InvalidArgument("when_found must be a list")
    for i, item in enumerate(when_raw):
        where = f"when_found[{i}]"
        if not isinstance(item, dict) or set(item) - {"types", *_ROUTING_LISTS}:
            raise InvalidArgument(f"{where} must be an object with types and routing lists")
        types = _string_list(item.get("types"), f"{where}.types")
        if not types:
            raise InvalidArgument(f"{where}.types must name at least one detector")
        for t in types:
            if t not in DETECTORS and not t.startswith(_CUSTOM_PREFIX):
                raise UnknownDetector(f"unknown detector {t!r} in {where}.types")
        conditionals.append(Conditional(frozenset(types), _routing(item, where)))
    custom = _parse_custom(raw.get("custom_detectors"))
    responses = raw.get("responses", "")
    if responses not in ("", RESPONSES_SCAN, RESPONSES_OFF):
        raise InvalidArgument(f"responses must be {RESPONSES_SCAN!r} or {RESPONSES_OFF!r}")
    return ScopePolicy(
        MappingProxyType(rules), _routing(routing_raw, "routing"), tuple(conditionals), custom, responses
    )


@dataclass(frozen=True)
class PolicySet:
    """An account's whole policy document at one version (``scopes``: "account", "team:<n>", "key:<id>")."""

    account_id: str
    version: int
    scopes: Mapping[str, ScopePolicy] = field(default_factory=lambda: MappingProxyType({}))
    #: (team, key) → Resolved, filled by :meth:`resolve`: a version never changes, so neither does its
    #: resolution, and Inspect asks for the same few pairs on every request. Bounded by :data:`_RESOLVED_MAX`.
    _resolved: dict[tuple[str, str], Resolved] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    @classmethod
    def default(cls, account_id: str) -> PolicySet:
        return cls(account_id=account_id, version=0)

    @property
    def rules(self) -> Mapping[str, Action]:
        """The account scope's own rules."""
        return self.scopes.get("account", _EMPTY_SCOPE).rules

    @property
    def custom(self) -> tuple[CustomDetector, ...]:
        """The account's custom detectors (what its scanner is built from)."""
        return self.scopes.get("account", _EMPTY_SCOPE).custom

    def check(self) -> None:
        """Custom detectors only at account scope; every custom name a rule or condition uses is defined."""
        defined = {c.name for c in self.custom}
        for scope, policy in self.scopes.items():
            if policy.custom and scope != "account":
                raise InvalidArgument(f"custom_detectors can only be set on the account, not on {scope}")
            used = set(policy.rules) | {t for c in policy.when_found for t in c.types}
            for name in sorted(used):
                if name.startswith(_CUSTOM_PREFIX) and name not in defined:
                    raise UnknownDetector(f"{scope} uses {name!r}, which the account's custom_detectors do not define")

    def action_for(self, detector: str) -> Action:
        return self.rules.get(detector) or default_action(detector)

    def effective(self) -> dict[str, Action]:
        """Every detector's action at account scope, defaults filled in, in detector order."""
        return {name: self.action_for(name) for name in DETECTORS}

    def with_scope(self, scope: str, policy: ScopePolicy, version: int) -> PolicySet:
        """This document with ``scope`` replaced (removed when ``policy`` sets nothing), as ``version``."""
        scopes = dict(self.scopes)
        if policy == _EMPTY_SCOPE:
            scopes.pop(scope, None)
        else:
            scopes[scope] = policy
        return PolicySet(self.account_id, version, MappingProxyType(scopes))

    def revised(self, rules: Mapping[str, Action]) -> PolicySet:
        """The next version with the account scope's rules replaced by ``rules`` (already validated)."""
        current = self.scopes.get("account", _EMPTY_SCOPE)
        return self.with_scope("account", replace(current, rules=MappingProxyType(dict(rules))), self.version + 1)

    def resolve(self, team: str = "", key_id: str = "") -> Resolved:
        """Apply account → team → key (:mod:`.resolved`); computed once per (team, key) and version."""
        found = self._resolved.get((team, key_id))
        if found is None:
            if len(self._resolved) >= _RESOLVED_MAX:
                self._resolved.clear()
            from .resolved import resolve  # resolved.py builds on this module, so it is imported on first use

            found = self._resolved[(team, key_id)] = resolve(self, team, key_id)
        return found

    def to_json(self) -> dict[str, Any]:
        """The stored document: {"account": {...}, "teams": {name: {...}}, "keys": {id: {...}}}."""
        out: dict[str, Any] = {"account": {}, "teams": {}, "keys": {}}
        for scope, policy in sorted(self.scopes.items()):
            kind, name = check_scope(scope)
            if kind == "account":
                out["account"] = policy.to_json()
            else:
                out[f"{kind}s"][name] = policy.to_json()
        return out

    @classmethod
    def from_json(cls, account_id: str, version: int, raw: Mapping[str, Any]) -> PolicySet:
        scopes: dict[str, ScopePolicy] = {}
        if raw.get("account"):
            scopes["account"] = parse_scope_document(raw["account"])
        for kind in ("team", "key"):
            for name, doc in (raw.get(f"{kind}s") or {}).items():
                scopes[f"{kind}:{name}"] = parse_scope_document(doc)
        return cls(account_id, version, MappingProxyType(scopes))
