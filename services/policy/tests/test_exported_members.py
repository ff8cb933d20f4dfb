"""The package's public surface, pinned (as httpx's test_exported_members.py): sorted, and every name exists.
``domain`` gathers the pure core's modules (document, resolved, inspection) under one name; it must stay complete
(ruff's RUF022 keeps each ``__all__`` sorted)."""

from __future__ import annotations

import tollgate_policy
from tollgate_policy import document, domain, inspection, resolved


def test_the_package_exports_a_sorted_all_of_names_that_exist() -> None:
    assert tollgate_policy.__all__ == sorted(tollgate_policy.__all__) == ["PolicyApp", "Settings", "serve"]
    assert all(hasattr(tollgate_policy, name) for name in tollgate_policy.__all__)


def test_domain_gathers_every_public_name_of_the_pure_core() -> None:
    gathered = set(document.__all__) | set(resolved.__all__) | set(inspection.__all__)
    assert set(domain.__all__) == gathered
    assert all(getattr(domain, name) is getattr(module, name)
               for module in (document, resolved, inspection) for name in module.__all__)  # fmt: skip
