"""Tollgate ingress: the public OpenAI-compatible HTTP API and the admin API, in front of billing, policy and router.

Build an app with ``create_app(settings, await Deps.start(settings))``; run the service with
``python -m tollgate_ingress``.
"""

from .api import IngressApp, create_app
from .config import Settings
from .deps import Deps

__all__ = ["Deps", "IngressApp", "Settings", "create_app"]
