"""Compiled scanners per set of custom detectors, and the scan of one request's texts under the enforced policy and
its shadow. Used on the event loop and from scan threads (the scanners are thread-safe; the cache is not)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from .detectors import CustomDetector, Match, build_scanner, scan

__all__ = ["Scan", "ScannerCache", "scan_texts"]

Scan = Callable[[str], list[Match]]


class ScannerCache:
    """One compiled scanner per set of custom detectors (so per account policy version, shared by versions with the
    same set); the built-ins alone use the module's default scanner. Least recently used sets are dropped."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._scanners: OrderedDict[tuple[CustomDetector, ...], Scan] = OrderedDict()

    def get(self, custom: tuple[CustomDetector, ...]) -> Scan:
        """The scanner's ``scan``; ValueError (from the engine) when a custom detector cannot be compiled."""
        if not custom:
            return scan
        found = self._scanners.get(custom)
        if found is None:
            found = build_scanner(custom).scan
            self._scanners[custom] = found
            if len(self._scanners) > self.size:
                self._scanners.popitem(last=False)
        else:
            self._scanners.move_to_end(custom)
        return found


def scan_texts(scanners: tuple[Scan, Scan | None], texts: Sequence[str]) -> tuple[list[list[Match]], list[list[Match]]]:
    """Matches per text for the enforced policy and for the shadow (the same lists when it has no scanner of its
    own). Runs on the loop or in a scan thread."""
    enforced, shadow = scanners
    matches = [enforced(text) for text in texts]
    return matches, matches if shadow is None else [shadow(text) for text in texts]
