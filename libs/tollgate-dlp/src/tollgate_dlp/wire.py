"""An account's :class:`~tollgate_dlp.state.PolicyState` on the wire (policy's ``GetPolicyState`` and
``WatchPolicies``), both ways, so policy and ingress cannot drift: each document travels as the JSON that policy
stores (``PolicySet.to_json``), parsed back with ``PolicySet.from_json``."""

from __future__ import annotations

import json

from tollgate.policy.v1 import policy_service_pb2 as pb

from .document import PolicySet
from .state import PolicyState

__all__ = ["state_from_update", "state_to_update"]


def state_to_update(state: PolicyState) -> pb.PolicyStateUpdate:
    update = pb.PolicyStateUpdate(
        account_id=state.account_id,
        head=state.head,
        enforced_version=state.enforced.version,
        enforced_json=json.dumps(state.enforced.to_json(), sort_keys=True),
    )
    if state.shadow is not None:
        update.has_shadow = True
        update.shadow_version = state.shadow.version
        update.shadow_json = json.dumps(state.shadow.to_json(), sort_keys=True)
    return update


def state_from_update(update: pb.PolicyStateUpdate) -> PolicyState:
    """The state an update carries; ValueError/KeyError/TypeError when its documents do not parse."""
    account = update.account_id
    enforced = PolicySet.from_json(account, update.enforced_version, json.loads(update.enforced_json or "{}"))
    shadow = None
    if update.has_shadow:
        shadow = PolicySet.from_json(account, update.shadow_version, json.loads(update.shadow_json or "{}"))
    return PolicyState(enforced, shadow, update.head)
