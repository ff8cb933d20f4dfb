"""The package's public surface, pinned (as httpx's test_exported_members.py): sorted, and every name exists.
The engine's own modules (document, domain, inspection, ...) live in the ``tollgate_dlp`` library now."""

from __future__ import annotations

import tollgate_policy


def test_the_package_exports_a_sorted_all_of_names_that_exist() -> None:
    assert tollgate_policy.__all__ == sorted(tollgate_policy.__all__) == ["PolicyApp", "Settings", "serve"]
    assert all(hasattr(tollgate_policy, name) for name in tollgate_policy.__all__)
