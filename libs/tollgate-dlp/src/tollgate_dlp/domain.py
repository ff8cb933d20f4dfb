"""Policy's pure core, by job (this module gathers their names, so ``from .domain import …`` keeps working):

- :mod:`.document` — the policy document an account sets: scopes, rules, routing, conditionals, custom
  detectors; parsed, validated and serialised (``PolicySet``, ``ScopePolicy``, ``Action``, ``DEFAULT_RULES``);
- :mod:`.resolved` — that document applied to one request's team and key (``Resolved``, ``PolicySet.resolve``);
- :mod:`.inspection` — the verdict, findings, routing limits and redaction of one request's texts (``inspect``,
  ``Inspection``, ``Finding``, ``Verdict``, ``identity``).
"""

from __future__ import annotations

from .document import (
    DEFAULT_RULES,
    MODEL_NOT_ALLOWED,
    RESPONSES_OFF,
    RESPONSES_SCAN,
    Action,
    Conditional,
    PolicySet,
    Routing,
    ScopePolicy,
    check_scope,
    default_action,
    parse_scope_document,
    validate_rules,
)
from .inspection import Finding, Inspection, Verdict, identity, inspect
from .resolved import Resolved, resolve

__all__ = [
    "DEFAULT_RULES",
    "MODEL_NOT_ALLOWED",
    "RESPONSES_OFF",
    "RESPONSES_SCAN",
    "Action",
    "Conditional",
    "Finding",
    "Inspection",
    "PolicySet",
    "Resolved",
    "Routing",
    "ScopePolicy",
    "Verdict",
    "check_scope",
    "default_action",
    "identity",
    "inspect",
    "parse_scope_document",
    "resolve",
    "validate_rules",
]
