"""Faults the mock upstream is told about by an admin call, for callers that cannot set a request header.

The router forwards neither client headers nor, for Anthropic and Gemini, unknown body fields; so a test that
drives the router arms the mock instead: ``POST /_mock/faults`` with ``{"fault": "429", "times": 2, "model":
"claude-3-5-haiku", "format": "anthropic", "retry_after": 3, "latency_ms": 0}`` makes the next 2 matching calls
fail. ``model`` and ``format`` narrow the match (absent: any); ``fault`` may be omitted to only add latency.
``overloaded`` is the provider's own overload signal: OpenAI 503, Anthropic 529 (or, on a stream, an
``error`` event after the first text), Gemini 503 UNAVAILABLE. ``GET /_mock/faults`` lists the armed rules,
``DELETE /_mock/faults`` clears them. Rules are consumed in the order they were armed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["FAULTS", "FORMATS", "FaultRule", "Faults"]

FAULTS = ("500", "429", "401", "timeout", "disconnect", "overloaded")
FORMATS = ("openai", "azure", "anthropic", "gemini")


@dataclass(slots=True)
class FaultRule:
    fault: str | None
    times: int
    model: str | None = None
    format: str | None = None
    retry_after: int = 1
    latency_ms: int = 0

    @classmethod
    def parse(cls, body: Any) -> FaultRule:
        """A rule from the admin call's JSON; ``ValueError`` with a readable message when it is not one."""
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        unknown = set(body) - {"fault", "times", "model", "format", "retry_after", "latency_ms"}
        if unknown:
            raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}")
        fault = body.get("fault")
        if fault is not None:
            fault = str(fault)
            if fault not in FAULTS:
                raise ValueError(f"fault must be one of {', '.join(FAULTS)}")
        fmt = body.get("format")
        if fmt is not None and fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}")
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise ValueError("model must be a string")
        numbers = {}
        for key, default, minimum in (("times", 1, 1), ("retry_after", 1, 0), ("latency_ms", 0, 0)):
            value = body.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{key} must be an integer >= {minimum}")
            numbers[key] = value
        if fault is None and not numbers["latency_ms"]:
            raise ValueError("a rule needs a fault, a latency_ms, or both")
        return cls(fault=fault, model=model, format=fmt, **numbers)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class Faults:
    """The armed rules; :meth:`take` consumes one use of the first that matches a call."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []

    def arm(self, rule: FaultRule) -> None:
        self._rules.append(rule)

    def clear(self) -> None:
        self._rules.clear()

    def rules(self) -> list[dict[str, Any]]:
        return [rule.as_json() for rule in self._rules]

    def take(self, model: str | None, fmt: str) -> FaultRule | None:
        for rule in self._rules:
            if (rule.model is None or rule.model == model) and (rule.format is None or rule.format == fmt):
                rule.times -= 1
                if rule.times <= 0:
                    self._rules.remove(rule)
                return rule
        return None
