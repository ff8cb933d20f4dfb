"""Event payloads ↔ domain objects: ``UsageRecorded`` in, ``UsageRated`` out (``proto/tollgate/events/v1``).

Mapping only; nothing here decides anything.
"""

from __future__ import annotations

from tollgate.events.v1 import usage_pb2

from .domain import RatedUsage, UsageFacts, UsageRecord

__all__ = ["usage_rated_message", "usage_record"]


def usage_record(msg: usage_pb2.UsageRecorded) -> UsageRecord:
    u = msg.usage
    return UsageRecord(
        request_id=msg.request_id,
        account_id=msg.account_id,
        key_id=msg.key_id,
        hold_id=msg.hold_id,
        model=msg.model,
        provider=msg.provider,
        upstream_model=msg.upstream_model,
        upstream_request_id=msg.upstream_request_id,
        usage=UsageFacts(
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            cached_prompt_tokens=u.cached_prompt_tokens,
            reasoning_tokens=u.reasoning_tokens,
            cache_write_tokens=u.cache_write_tokens,
        ),
        total_tokens=u.total_tokens,
        outcome=int(msg.outcome),
        streamed=msg.streamed,
        occurred_at_unix_ms=msg.occurred_at_unix_ms,
        team=msg.team,
        project=msg.project,
        tags={k: msg.tags[k] for k in msg.tags},  # ~3x faster than dict(map) on upb
        usage_unknown=msg.usage_unknown,
    )


def usage_rated_message(rated: RatedUsage) -> usage_pb2.UsageRated:
    r, g = rated.record, rated.rating
    return usage_pb2.UsageRated(
        request_id=r.request_id,
        account_id=r.account_id,
        key_id=r.key_id,
        hold_id=r.hold_id,
        model=r.model,
        provider=r.provider,
        usage=usage_pb2.TokenUsage(
            prompt_tokens=r.usage.prompt_tokens,
            completion_tokens=r.usage.completion_tokens,
            total_tokens=r.total_tokens,
            cached_prompt_tokens=r.usage.cached_prompt_tokens,
            reasoning_tokens=r.usage.reasoning_tokens,
            cache_write_tokens=r.usage.cache_write_tokens,
        ),
        outcome=r.outcome,  # type: ignore[arg-type]
        currency=g.currency,
        upstream_cost_nanos=g.upstream_cost_nanos,
        resale_price_nanos=g.resale_price_nanos,
        price_book_version=g.price_book_version,
        markup_bps=g.markup_bps,
        input_price_nanos=g.input_price_nanos,
        output_price_nanos=g.output_price_nanos,
        cached_input_price_nanos=g.cached_input_price_nanos,
        cache_write_price_nanos=g.cache_write_price_nanos,
        reasoning_price_nanos=g.reasoning_price_nanos,
        exchange_rate="",
        occurred_at_unix_ms=r.occurred_at_unix_ms,
        rated_at_unix_ms=rated.rated_at_unix_ms,
        team=r.team,
        project=r.project,
        tags=dict(r.tags),
        usage_unknown=r.usage_unknown,
    )
