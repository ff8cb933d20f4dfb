"""Seed the demo account through the public admin API (idempotent: safe on every ``make run``)."""

from __future__ import annotations

from dataclasses import dataclass

from .platform import Platform

__all__ = ["DemoAccount", "seed_demo"]

DEMO_ACCOUNT_ID = "acct_demo"
DEMO_CREDIT = "10.00"


@dataclass(frozen=True)
class DemoAccount:
    account_id: str
    api_key: str


def seed_demo(platform: Platform) -> DemoAccount:
    """Create the demo account (fixed id), give it $10.00 once (fixed idempotency key), and mint a fresh API key."""
    platform.admin("POST", "/admin/v1/accounts", {"id": DEMO_ACCOUNT_ID, "name": "Demo", "currency": "USD"})
    platform.admin(
        "POST",
        f"/admin/v1/accounts/{DEMO_ACCOUNT_ID}/credits",
        {"amount": DEMO_CREDIT, "idempotency_key": "demo-initial-credit", "description": "demo credit"},
    )
    created = platform.admin("POST", f"/admin/v1/accounts/{DEMO_ACCOUNT_ID}/keys", {"label": "demo"})
    return DemoAccount(account_id=DEMO_ACCOUNT_ID, api_key=str(created["key"]))
