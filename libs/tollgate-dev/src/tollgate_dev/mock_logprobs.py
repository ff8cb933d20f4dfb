"""Log probabilities for the mock's canned reply, in OpenAI's chat shape. DEVELOPMENT ONLY.

``logprobs: true`` gets ``choices[i].logprobs = {"content": [...], "refusal": null}``: one entry per reply token
(``token``, ``logprob``, ``bytes`` (its UTF-8), ``top_logprobs``), and ``top_logprobs: k`` (0–20, OpenAI's range)
lists ``k`` alternatives per position, the served token first, as OpenAI does. A stream carries, on each content
chunk, the entries of the tokens in that chunk. Values are deterministic (a function of the position only), so a
test can compare what the client received with what the mock served.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["MAX_TOP_LOGPROBS", "entries", "requested"]

MAX_TOP_LOGPROBS = 20


class LogprobsRejected(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def requested(body: dict[str, Any]) -> int | None:
    """``None`` without ``logprobs: true``, else how many alternatives each position lists."""
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise LogprobsRejected(f"Invalid type for 'logprobs': expected a boolean, but got {type(logprobs).__name__} "
                               "instead.", "logprobs")
    top = body.get("top_logprobs")
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int):
            raise LogprobsRejected("Invalid type for 'top_logprobs': expected an integer.", "top_logprobs")
        if top > MAX_TOP_LOGPROBS:
            raise LogprobsRejected(f"Invalid 'top_logprobs': integer above maximum value. Expected a value <= "
                                   f"{MAX_TOP_LOGPROBS}, but got {top} instead.", "top_logprobs")
        if top < 0:
            raise LogprobsRejected(f"Invalid 'top_logprobs': integer below minimum value. Expected a value >= 0, "
                                   f"but got {top} instead.", "top_logprobs")
    return (top or 0) if logprobs is True else None


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def entries(pieces: Sequence[str], top: int, start: int = 0) -> list[dict[str, Any]]:
    """The entries of ``pieces`` (reply tokens from position ``start``)."""
    out = []
    for offset, token in enumerate(pieces):
        position = start + offset
        chosen = -round(0.01 * (position % 7 + 1), 6)
        alternatives = [_entry(token, chosen)]
        alternatives += [_entry(f"alt{k}", -round(2.0 + k + 0.1 * (position % 5), 6)) for k in range(1, top)]
        out.append({**_entry(token, chosen), "top_logprobs": alternatives[:top]})
    return out
