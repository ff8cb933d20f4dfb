"""Environment-only configuration with a per-service prefix, validated at start.

Each service's ``config.py`` builds a frozen ``Settings`` from an :class:`EnvReader`. Every bad value is collected,
so the operator sees all problems at once, and :func:`load_or_exit` turns them into one clear message and exit
status 2 (the convention for "bad usage") instead of a traceback.
"""

from __future__ import annotations

import builtins
import os
import sys
from collections.abc import Callable, Mapping
from typing import TypeVar

__all__ = ["ConfigError", "EnvReader", "load_or_exit"]

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(Exception):
    """One or more configuration values are missing or invalid."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class EnvReader:
    """Reads ``<PREFIX>_<NAME>`` variables and records every problem instead of failing on the first."""

    def __init__(self, prefix: builtins.str, environ: Mapping[str, str] | None = None) -> None:
        self.prefix = prefix.upper().rstrip("_") + "_"
        self.environ = os.environ if environ is None else environ
        self.problems: list[builtins.str] = []

    def name(self, key: builtins.str) -> builtins.str:
        return self.prefix + key

    def raw(self, key: builtins.str) -> builtins.str | None:
        value = self.environ.get(self.name(key))
        return None if value is None or value.strip() == "" else value.strip()

    def str(self, key: builtins.str, default: builtins.str | None = None, *, required: bool = False) -> builtins.str:
        value = self.raw(key)
        if value is None:
            if required:
                self.problems.append(f"{self.name(key)} is required")
            return default or ""
        return value

    def int(
        self,
        key: builtins.str,
        default: builtins.int,
        *,
        minimum: builtins.int | None = None,
        maximum: builtins.int | None = None,
    ) -> builtins.int:
        value = self.raw(key)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            self.problems.append(f"{self.name(key)}={value!r} is not an integer")
            return default
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            self.problems.append(f"{self.name(key)}={number} is outside [{minimum}, {maximum}]")
            return default
        return number

    def port(self, key: builtins.str, default: builtins.int) -> builtins.int:
        return self.int(key, default, minimum=0, maximum=65535)

    def float(
        self, key: builtins.str, default: builtins.float, *, minimum: builtins.float | None = None
    ) -> builtins.float:
        value = self.raw(key)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            self.problems.append(f"{self.name(key)}={value!r} is not a number")
            return default
        if minimum is not None and number < minimum:
            self.problems.append(f"{self.name(key)}={number} must be >= {minimum}")
            return default
        return number

    def bool(self, key: builtins.str, default: builtins.bool) -> builtins.bool:
        value = self.raw(key)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        self.problems.append(f"{self.name(key)}={value!r} is not a boolean (true/false)")
        return default

    def choice(self, key: builtins.str, default: builtins.str, choices: tuple[builtins.str, ...]) -> builtins.str:
        value = self.raw(key) or default
        if value not in choices:
            self.problems.append(f"{self.name(key)}={value!r} must be one of {', '.join(choices)}")
            return default
        return value

    def check(self) -> None:
        """Raise :class:`ConfigError` listing every problem seen so far."""
        if self.problems:
            raise ConfigError(self.problems)


def load_or_exit(factory: Callable[[], T], service: str) -> T:
    """Build settings or exit 2 with a readable message (no traceback)."""
    try:
        return factory()
    except ConfigError as exc:
        lines = "\n".join(f"  - {p}" for p in exc.problems)
        print(f"tollgate-{service}: invalid configuration:\n{lines}", file=sys.stderr)
        raise SystemExit(2) from None
