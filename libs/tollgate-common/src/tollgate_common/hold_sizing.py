"""The one rule for a request's maximum cost: what billing holds for it, wherever the hold is taken.

Why here: billing sizes a per-request hold in ``Authorize``; an ingress replica spending a credit lease (issue 8)
sizes each request's reservation against the lease itself, in memory. Both must reach the same figure for the same
request, or a lease could be spent faster than billing would allow (issue 9: one place for one rule). This module is
arithmetic on prices the caller passes in, nothing else: it knows no service, database or error type of its own, so
billing maps :class:`SizingError` to its refusals and ingress falls back to billing's own answer.

Money is integer nano-units. The prices are metering's resale prices per token, already rounded up, so the maximum
is never below the rated price of the same request while the prompt estimate is an upper bound and the output stays
within the cap.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["INT64_MAX", "CandidateHold", "ModelPrice", "SizingError", "SizingFailure", "check_allowed",
           "hold_amount", "output_cap", "price_of", "size_for_candidates"]

INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Per-token resale prices (nano-units, rounded up by metering) and the output cap a hold assumes."""

    model: str
    resale_input_price_nanos: int
    resale_output_price_nanos: int
    max_output_tokens: int


class SizingFailure(StrEnum):
    """Why a request could not be sized (each caller maps these to its own error)."""

    INVALID_ARGUMENT = "invalid_argument"
    MODEL_NOT_ALLOWED = "model_not_allowed"
    MODEL_NOT_PRICED = "model_not_priced"


class SizingError(ValueError):
    """The request cannot be sized: ``failure`` says why, the message is safe to show the client."""

    def __init__(self, failure: SizingFailure, message: str, model: str = "") -> None:
        super().__init__(message)
        self.failure = failure
        self.model = model


@dataclass(frozen=True, slots=True)
class CandidateHold:
    """The hold for a request that may be served by several models: sized for the most expensive of them."""

    model: str
    amount_nanos: int
    output_tokens: int


def check_allowed(allowed_models: Collection[str], model: str) -> None:
    """A key's allow-list (empty = every model) admits ``model``, else MODEL_NOT_ALLOWED."""
    if allowed_models and model not in allowed_models:
        raise SizingError(SizingFailure.MODEL_NOT_ALLOWED, f"model {model!r} is not allowed for this API key", model)


def price_of(prices: Mapping[str, ModelPrice], model: str) -> ModelPrice:
    """The model's price, else MODEL_NOT_PRICED: an unpriced model is refused, never served free."""
    price = prices.get(model)
    if price is None:
        raise SizingError(SizingFailure.MODEL_NOT_PRICED,
                          f"The model '{model}' has no price, so this gateway cannot serve it.", model)
    return price


def output_cap(price: ModelPrice, max_output_tokens: int) -> int:
    """The output tokens a hold is sized for: the request's cap, else the model's."""
    return max_output_tokens or price.max_output_tokens


def hold_amount(price: ModelPrice, prompt_tokens: int, max_output_tokens: int) -> int:
    """The most the request can cost: prompt × resale input + (max_tokens or the model's cap) × resale output."""
    if prompt_tokens < 0 or max_output_tokens < 0:
        raise SizingError(SizingFailure.INVALID_ARGUMENT, "token counts must not be negative")
    output = output_cap(price, max_output_tokens)
    amount = prompt_tokens * price.resale_input_price_nanos + output * price.resale_output_price_nanos
    if amount > INT64_MAX:
        raise SizingError(SizingFailure.INVALID_ARGUMENT, "the request's maximum cost does not fit in 64 bits")
    return amount


def size_for_candidates(
    prices: Mapping[str, ModelPrice], allowed_models: Collection[str], models: Iterable[str], prompt_tokens: int,
    max_output_tokens: int,
) -> CandidateHold:
    """Check every model a request may reach against the key's allow-list (empty = every model) and the prices,
    and size the hold for the most expensive. A request naming one model the key may not use is refused as a
    whole: the router could otherwise serve (and the upstream bill) a model nobody checked or held for."""
    best: CandidateHold | None = None
    for model in dict.fromkeys(models):
        check_allowed(allowed_models, model)
        price = price_of(prices, model)
        amount = hold_amount(price, prompt_tokens, max_output_tokens)
        if best is None or amount > best.amount_nanos:
            best = CandidateHold(model, amount, output_cap(price, max_output_tokens))
    if best is None:
        raise SizingError(SizingFailure.INVALID_ARGUMENT, "model is required")
    return best
