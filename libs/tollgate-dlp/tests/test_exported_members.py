"""The library's pure core, pinned (as httpx's test_exported_members.py): ``domain`` gathers the modules document,
resolved and inspection under one name; it must stay complete (ruff's RUF022 keeps each ``__all__`` sorted)."""

from __future__ import annotations

from tollgate_dlp import document, domain, inspection, resolved


def test_domain_gathers_every_public_name_of_the_pure_core() -> None:
    gathered = set(document.__all__) | set(resolved.__all__) | set(inspection.__all__)
    assert set(domain.__all__) == gathered
    assert all(getattr(domain, name) is getattr(module, name)
               for module in (document, resolved, inspection) for name in module.__all__)  # fmt: skip
