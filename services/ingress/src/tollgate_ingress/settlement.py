"""Closing a hold: exactly one ``UsageRecorded`` per authorized request, however many code paths try.

Whatever happens after the hold is placed (success, upstream failure, a policy block, a client that went away),
some path calls :meth:`Settlement.close`; the first call publishes, every later one is a no-op.
"""

from __future__ import annotations

import time

from tollgate.events.v1 import usage_pb2

from .billing_client import Authorization
from .domain import ChatRequest, Outcome, Usage
from .publisher import UsagePublisher

__all__ = ["Settlement"]

_OUTCOME_PB = {
    Outcome.SUCCEEDED: usage_pb2.REQUEST_OUTCOME_SUCCEEDED,
    Outcome.FAILED: usage_pb2.REQUEST_OUTCOME_FAILED,
    Outcome.BLOCKED: usage_pb2.REQUEST_OUTCOME_BLOCKED,
    Outcome.CLIENT_CANCELLED: usage_pb2.REQUEST_OUTCOME_CLIENT_CANCELLED,
}


class Settlement:
    """Closes one hold with exactly one usage event."""

    __slots__ = ("_closed", "auth", "publisher", "request", "request_id", "streamed")

    def __init__(self, publisher: UsagePublisher, request: ChatRequest, request_id: str, auth: Authorization) -> None:
        self.publisher = publisher
        self.request = request
        self.request_id = request_id
        self.auth = auth
        self.streamed = request.stream
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close_failed(self, error: BaseException | None, prompt_tokens: int) -> None:
        """Close a request whose router call failed before any output reached the client. When a provider may
        have served it without telling its usage (``error.usage_unknown``), the event carries the prompt estimate
        and ``usage_unknown``: billing charges it per its ``BILLING_UNKNOWN_USAGE_CHARGE``. Otherwise zero usage."""
        if getattr(error, "usage_unknown", False):
            self.close(Outcome.FAILED, Usage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
                       usage_unknown=True)
        else:
            self.close(Outcome.FAILED)

    def close(
        self,
        outcome: Outcome,
        usage: Usage | None = None,
        *,
        provider: str = "",
        upstream_model: str = "",
        upstream_request_id: str = "",
        model: str = "",
        usage_unknown: bool = False,
    ) -> None:
        """``model``: the public model the router served (what metering rates). Without one (nothing served, or
        usage estimated after a broken stream) the hold's model is rated: the most expensive candidate, so an
        estimate is never priced below what may have been served."""
        if self._closed:
            return
        self._closed = True
        u = usage or Usage()
        self.publisher.publish(
            usage_pb2.UsageRecorded(
                request_id=self.request_id,
                account_id=self.auth.account_id,
                key_id=self.auth.key_id,
                hold_id=self.auth.hold_id or self.request_id,
                model=model or self.auth.hold_model or self.request.model,
                requested_model=self.request.model,
                usage_unknown=usage_unknown,
                provider=provider,
                upstream_model=upstream_model,
                upstream_request_id=upstream_request_id,
                usage=usage_pb2.TokenUsage(
                    prompt_tokens=u.prompt_tokens,
                    completion_tokens=u.completion_tokens,
                    total_tokens=u.total_tokens,
                    cached_prompt_tokens=u.cached_prompt_tokens,
                    reasoning_tokens=u.reasoning_tokens,
                    cache_write_tokens=u.cache_write_tokens,
                ),
                outcome=_OUTCOME_PB[outcome],
                streamed=self.streamed,
                occurred_at_unix_ms=int(time.time() * 1000),
                team=self.auth.team,
                project=self.auth.project,
                tags=self.request.tags,
            )
        )
