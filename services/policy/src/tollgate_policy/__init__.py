"""Tollgate's policy (DLP) service: finds emails, payment cards and secrets in prompts and applies each
account's rules (allow, redact or block). Run it with ``python -m tollgate_policy``."""

from .app import PolicyApp, serve
from .config import Settings

__all__ = ["PolicyApp", "Settings", "serve"]
