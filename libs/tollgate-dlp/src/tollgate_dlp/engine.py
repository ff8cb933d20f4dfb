"""Two engines that run the detector specs and report identical findings: Hyperscan (one compiled database, one
pass over the prompt) and pure-Python ``re`` (where Hyperscan cannot be imported).

Both enumerate, per spec, every start where the spec's ``re`` pattern matches and validate each candidate with
the same code; only the way they find *where to look* differs. The ``re`` engine looks everywhere (skipping a spec
whose required literal is absent). The Hyperscan engine scans once for every spec's look-around-free anchor; each
anchor hit ending at ``b`` means a match may start in ``[b - reach, b]`` (custom patterns: ``[from, to]`` of the
Hyperscan match itself, with ``SOM_LEFTMOST``), and ``re`` enumerates starts only inside those merged windows.
Every match that validates contains an anchor hit, so both engines see the same valid candidates in the same
order. Per spec, the enumeration is the same left-to-right walk in both: after a candidate that fails validation
the next search starts one character later, after a finding it starts at the finding's end (the engines differ
only in skipping stretches where no valid match can start), so the candidate sets, and the findings, are equal.

``POLICY_ENGINE=auto|hyperscan|python`` picks the engine of the default scanner; ``auto`` takes Hyperscan when it
imports.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from re import _constants as sre_constants  # type: ignore[attr-defined]  # re's own parser, to check patterns
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any, Final

from .detectors import SPECS, CustomDetector, Detector, Match, Spec

hyperscan: Any
try:
    import hyperscan
except ImportError:  # pragma: no cover - the fallback exists for platforms without wheels
    hyperscan = None

__all__ = ["ENGINES", "Scanner", "build_scanner", "compile_custom"]

log = logging.getLogger(__name__)

ENGINES: Final = ("auto", "hyperscan", "python")
_MAX_PATTERN = 1000
_CUSTOM_NAME: Final = re.compile(r"custom:[a-z0-9_]{1,64}")


@dataclass(frozen=True, slots=True)
class _Custom:
    spec: Spec
    hs_expression: str


def _unbounded_repeats(parsed: Any, inside_repeat: bool = False) -> bool:
    """True when a repeat with a large maximum sits inside another repeat: ``(a+)+``, the catastrophic shape."""
    for op, arg in parsed:
        if op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT):
            _low, high, sub = arg
            if inside_repeat and high > 1:
                return True
            if _unbounded_repeats(sub, inside_repeat or high > 1):
                return True
        elif op == sre_constants.SUBPATTERN:
            if _unbounded_repeats(arg[-1], inside_repeat):
                return True
        elif op == sre_constants.BRANCH:
            if any(_unbounded_repeats(branch, inside_repeat) for branch in arg[1]):
                return True
        elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
            raise ValueError("look-around assertions are not supported in custom patterns")
        elif op in (sre_constants.GROUPREF, sre_constants.GROUPREF_EXISTS):
            raise ValueError("back-references are not supported in custom patterns")
    return False


def compile_custom(custom: CustomDetector) -> _Custom:
    """Check and compile one custom detector; ``ValueError`` with a clear message when it can't be used."""
    if not _CUSTOM_NAME.fullmatch(custom.name):
        raise ValueError(f"custom detector name must look like 'custom:employee_id', got {custom.name!r}")
    if bool(custom.pattern) == bool(custom.keywords):
        raise ValueError(f"{custom.name}: give either a pattern or keywords")
    label = custom.label or custom.name.removeprefix("custom:").upper()
    detector = Detector(name=custom.name, version="custom-1", label=label)
    if custom.keywords:
        words = [k.strip() for k in custom.keywords]
        if any(not w or len(w) > 200 for w in words):
            raise ValueError(f"{custom.name}: keywords must be 1-200 characters")
        alternation = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
        pattern = re.compile(rf"(?<![A-Za-z0-9_])(?:{alternation})(?![A-Za-z0-9_])", re.ASCII | re.IGNORECASE)
        spec = Spec(detector, "keyword", pattern, f"(?:{alternation})", 0, _keep, caseless=True)
        return _Custom(spec, spec.anchor)
    if len(custom.pattern) > _MAX_PATTERN:
        raise ValueError(f"{custom.name}: pattern longer than {_MAX_PATTERN} characters")
    try:
        parsed = sre_parse.parse(custom.pattern, re.ASCII)
        compiled = re.compile(custom.pattern, re.ASCII)
    except re.error as exc:
        raise ValueError(f"{custom.name}: invalid regular expression: {exc}") from None
    if _unbounded_repeats(parsed):
        raise ValueError(f"{custom.name}: nested repetition such as (a+)+ can take exponential time; rewrite it")
    if compiled.match(""):
        raise ValueError(f"{custom.name}: the pattern matches the empty string")
    spec = Spec(detector, "regex", compiled, custom.pattern, 0, _keep)
    if hyperscan is not None:
        try:
            _compile_database([(spec.anchor, hyperscan.HS_FLAG_SOM_LEFTMOST | hyperscan.HS_FLAG_UTF8)])
        except hyperscan.error as exc:
            raise ValueError(f"{custom.name}: pattern not supported by the scan engine: {exc}") from None
    return _Custom(spec, spec.anchor)


def _keep(text: str, start: int, end: int) -> tuple[int, int, float]:
    return (start, end, 1.0)


def _compile_database(expressions: Sequence[tuple[str, int]]) -> Any:
    database = hyperscan.Database()
    database.compile(
        expressions=[e.encode() for e, _ in expressions],
        ids=list(range(len(expressions))),
        elements=len(expressions),
        flags=[f for _, f in expressions],
    )
    return database


class Scanner:
    """Built once (per custom-detector set) and reused. ``scan`` may run in several threads at once (large
    inputs are scanned off the event loop): Hyperscan's scratch space is per thread."""

    def __init__(self, specs: Sequence[Spec], custom_count: int, engine: str) -> None:
        self.specs = tuple(specs)
        self.engine = engine
        self._custom_from = len(self.specs) - custom_count
        self._ascii_anchors = all(
            _ascii_only(sre_parse.parse(spec.pattern.pattern, spec.pattern.flags))
            for spec in self.specs[self._custom_from :]
        )
        self._database: Any = None
        self._widths = [_max_width(spec.pattern) for spec in self.specs]
        if engine == "hyperscan":
            flags = []
            for index, spec in enumerate(self.specs):
                flag = hyperscan.HS_FLAG_UTF8 | (hyperscan.HS_FLAG_CASELESS if spec.caseless else 0)
                if index >= self._custom_from:
                    flag |= hyperscan.HS_FLAG_SOM_LEFTMOST
                flags.append((spec.anchor, flag))
            self._database = _compile_database(flags)
            self._scratch = hyperscan.Scratch(self._database)
            self._owner = threading.get_ident()
            self._thread_scratch = threading.local()

    def scan(self, text: str) -> list[Match]:
        """Every finding in ``text``, sorted by start, never overlapping."""
        if not text:
            return []
        windows = self._windows(text) if self._database is not None else None
        if windows is None:
            windows = self._everywhere(text)
        candidates: list[tuple[int, int, int, float]] = []
        size = len(text)
        for index, spans in windows.items():
            spec = self.specs[index]
            search, validate, width = spec.pattern.search, spec.validate, self._widths[index]
            pos = 0
            for low, high in _merged(spans):
                pos = max(low, pos)
                # A match starting by ``high`` reads at most ``width`` characters plus a 2-character look-ahead,
                # so stopping the search there finds exactly what an unbounded search finds (and no further).
                stop = size if width is None else min(size, high + width + 3)
                while pos <= high:
                    m = search(text, pos, stop)
                    if m is None or m.start() > high:
                        break
                    found = validate(text, m.start(), m.end())
                    if found is None:
                        pos = m.start() + 1
                    else:  # the same spec resumes after its finding (both engines: see the module docstring)
                        candidates.append((found[0], -found[1], index, found[2]))
                        pos = max(found[1], m.start() + 1)
        candidates.sort()
        kept: list[Match] = []
        last_end = 0
        for start, negative_end, index, confidence in candidates:
            if start >= last_end:
                spec = self.specs[index]
                kept.append(Match(spec.detector, start, -negative_end, confidence, spec.kind))
                last_end = -negative_end
        return kept

    def _everywhere(self, text: str) -> dict[int, list[tuple[int, int]]]:
        everywhere = [(0, len(text))]
        return {i: everywhere for i, spec in enumerate(self.specs) if not spec.needle or spec.needle in text}

    def _windows(self, text: str) -> dict[int, list[tuple[int, int]]] | None:
        if self._ascii_anchors:
            # Every anchor is ASCII and none matches "?": scanning with each non-ASCII character replaced by "?"
            # finds the same windows, and byte offsets are then character offsets (no mapping needed).
            raw = text.encode("ascii", "replace")
        else:
            try:
                raw = text.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates: not valid UTF-8 for Hyperscan; look everywhere instead
                return None
        hits: dict[int, list[tuple[int, int]]] = {}
        custom_from, specs = self._custom_from, self.specs

        def on_match(index: int, start: int, end: int, flags: int, context: object) -> None:
            # custom: the match itself (SOM_LEFTMOST); built-in: the anchor's end, ``reach`` is subtracted below
            hits.setdefault(index, []).append((start if index >= custom_from else end, end))

        self._database.scan(raw, match_event_handler=on_match, scratch=self._scratch_here())
        if hits and len(raw) != len(text):
            char_at = _char_offsets(raw, {b for spans in hits.values() for span in spans for b in span})
            hits = {i: [(char_at[lo], char_at[hi]) for lo, hi in spans] for i, spans in hits.items()}
        for index, spans in hits.items():
            if index < custom_from:  # reach counts characters, so it applies after the byte → character mapping
                reach = specs[index].reach
                hits[index] = [(hi - reach, hi) for _, hi in spans]
        return hits


    def _scratch_here(self) -> Any:
        """The scratch of the calling thread (a scratch serves one scan at a time)."""
        if threading.get_ident() == self._owner:
            return self._scratch
        scratch = getattr(self._thread_scratch, "scratch", None)
        if scratch is None:
            scratch = self._thread_scratch.scratch = self._scratch.clone()
        return scratch


def _ascii_only(parsed: Any) -> bool:
    """No literal outside ASCII anywhere in a parsed pattern (``é``, ``\\xe9``, ``[à-ü]``)."""
    for op, arg in parsed:
        if op in (sre_constants.LITERAL, sre_constants.NOT_LITERAL):
            if arg > 127:
                return False
        elif op == sre_constants.RANGE:
            if arg[1] > 127:
                return False
        elif op == sre_constants.IN:
            if not _ascii_only(arg):
                return False
        elif op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT):
            if not _ascii_only(arg[2]):
                return False
        elif op == sre_constants.SUBPATTERN:
            if not _ascii_only(arg[-1]):
                return False
        elif op == sre_constants.BRANCH:
            if not all(_ascii_only(branch) for branch in arg[1]):
                return False
    return True


def _max_width(pattern: re.Pattern[str]) -> int | None:
    """The longest match ``pattern`` can make, or None when unbounded."""
    high = sre_parse.parse(pattern.pattern, pattern.flags).getwidth()[1]
    return None if high >= sre_constants.MAXREPEAT else int(high)


def _char_offsets(raw: bytes, offsets: set[int]) -> dict[int, int]:
    """UTF-8 byte offsets → character offsets, in one forward walk (a byte inside a character maps to it)."""
    result: dict[int, int] = {}
    chars = done = 0
    for offset in sorted(offsets):
        boundary = min(max(offset, 0), len(raw))
        while 0 < boundary < len(raw) and raw[boundary] & 0xC0 == 0x80:
            boundary -= 1
        chars += len(raw[done:boundary].decode("utf-8"))
        done = boundary
        result[offset] = chars
    return result


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    if len(spans) == 1:
        return spans
    merged: list[tuple[int, int]] = []
    for low, high in sorted(spans):
        if merged and low <= merged[-1][1] + 1:
            if high > merged[-1][1]:
                merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    return merged


def build_scanner(custom: Sequence[CustomDetector] = (), engine: str = "auto") -> Scanner:
    """The built-in specs plus ``custom``, on ``engine`` (``auto``: ``POLICY_ENGINE``, else Hyperscan if present)."""
    if engine == "auto":
        engine = os.environ.get("POLICY_ENGINE", "auto") or "auto"
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if engine == "auto":
        engine = "hyperscan" if hyperscan is not None else "python"
        log.info("DLP scan engine: %s", engine)
    if engine == "hyperscan" and hyperscan is None:
        raise ValueError("the hyperscan engine was asked for but the hyperscan package does not import")
    names = [c.name for c in custom]
    if len(set(names)) != len(names):
        raise ValueError("custom detector names must be unique")
    compiled = [compile_custom(c).spec for c in custom]
    return Scanner([*SPECS, *compiled], len(compiled), engine)
