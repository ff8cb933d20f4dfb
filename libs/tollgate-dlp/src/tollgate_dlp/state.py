"""One account's current policy as the request path needs it: enforced, pending shadow, and the head version."""

from __future__ import annotations

from dataclasses import dataclass

from .document import PolicySet

__all__ = ["PolicyState"]


@dataclass(frozen=True)
class PolicyState:
    """What Inspect needs of an account: the enforced policy, the pending shadow one, and the newest version
    number of any kind (``head``: what the next change builds on; the cache keeps the state with the higher one)."""

    enforced: PolicySet
    shadow: PolicySet | None = None
    head: int = 0

    @property
    def account_id(self) -> str:
        return self.enforced.account_id

    @classmethod
    def default(cls, account_id: str) -> PolicyState:
        return cls(PolicySet.default(account_id))
