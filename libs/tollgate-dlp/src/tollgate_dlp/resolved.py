"""The resolved policy: an account's document applied to one request's team and key. Pure.

Every part is optional. A request made with key K of team T resolves **account → team T → key K**:

- ``rules``: per detector, the most specific scope that names it wins, else :data:`DEFAULT_RULES` (a detector
  without a default — one added later — is ``flag``: recorded, not changed). :meth:`PolicySet.resolve` reports
  where each action comes from ("default", "account", "team:T", "key:K").
- ``routing``: limits only ever narrow down the chain. ``allowed_*`` lists are intersected over the scopes that
  set them (an empty or missing list means "no limit"); ``denied_providers`` are united.
- ``when_found``: conditional limits from every scope in the chain, applied when the request has at least one
  finding of a listed type (whatever that finding's action): "if there is an email or a card, only region eu".
- ``responses``: whether ingress inspects the model's answers too (``InspectResponse.scan_responses``). The most
  specific scope that sets it wins; unset everywhere, answers are scanned when some detector's resolved action is
  redact or block (the default policy's are), since an answer can carry what a prompt may not. ``flag``-only
  policies skip it: a flag changes nothing, so scanning would only add latency.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .detectors import DETECTORS
from .document import RESPONSES_SCAN, Action, Conditional, PolicySet, Routing, default_action

__all__ = ["Resolved", "resolve"]


@dataclass(frozen=True)
class Resolved:
    """The effective policy for one (team, key): per-detector action and its source, routing, conditionals."""

    actions: Mapping[str, Action]
    sources: Mapping[str, str]
    routing: Routing
    #: The blocking rule when the scopes' allow-lists exclude each other ("" if none).
    conflict: str
    when_found: tuple[Conditional, ...]
    #: The most specific scope that exists in the document: "key:<id>", "team:<name>" or "account".
    scope: str
    #: Whether ingress must inspect the model's answers (``responses``, see the module docstring).
    scan_responses: bool = False


def resolve(policy: PolicySet, team: str = "", key_id: str = "") -> Resolved:
    """Apply account → team → key (see the module docstring). Callers use the memoised ``PolicySet.resolve``."""
    chain = [("account", policy.scopes.get("account"))]
    if team:
        chain.append((f"team:{team}", policy.scopes.get(f"team:{team}")))
    if key_id:
        chain.append((f"key:{key_id}", policy.scopes.get(f"key:{key_id}")))
    names = [*DETECTORS, *(c.name for c in policy.custom)]
    actions = {name: default_action(name) for name in names}
    sources = dict.fromkeys(names, "default")
    routing, conflict = Routing(), ""
    when: list[Conditional] = []
    scope = "account"
    responses = ""
    for name, scope_policy in chain:
        if scope_policy is None:
            continue
        scope = name
        responses = scope_policy.responses or responses
        for detector, action in scope_policy.rules.items():
            if detector in actions:
                actions[detector] = action
                sources[detector] = name
        routing, step = routing.narrowed(scope_policy.routing)
        conflict = conflict or step
        when.extend(scope_policy.when_found)
    if responses:
        scan_responses = responses == RESPONSES_SCAN
    else:
        scan_responses = any(a in (Action.REDACT, Action.BLOCK) for a in actions.values())
    return Resolved(
        MappingProxyType(actions), MappingProxyType(sources), routing, conflict, tuple(when), scope, scan_responses
    )
