"""What the internal-call check costs per RPC: ``InternalAuth.check`` on a verified (cached) token, a token seen for
the first time (one HMAC), and the caller's side (the cached metadata); and per Kafka record, what signing
(producer) and verifying (consumer) a usage event costs (``event_auth``). Prints CPU µs per call; asserts nothing.

Run: ``.venv/bin/python -m bench.internal_auth``.
"""

from __future__ import annotations

import time

from tollgate.events.v1 import usage_pb2
from tollgate_common.event_auth import EventSigner, EventVerifier
from tollgate_common.events import Envelope, envelope_for
from tollgate_common.internal_auth import CALLER_KEY, InternalAuth, InternalKeys, mint_token

SECRET = "bench-internal-secret-0123456789abcdef"
N = 200_000


class _Context:
    """What grpc.aio hands a servicer: the call's metadata (traceparent and the caller token)."""

    def __init__(self, token: str) -> None:
        self.metadata = (("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01"), (CALLER_KEY, token))

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


def _per_call_us(fn: object, n: int, rounds: int = 5) -> float:
    """CPU µs per call (process time, so time spent waiting for a core on the shared machine is not counted),
    the best of ``rounds`` rounds of ``n / rounds`` calls."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(n // rounds):
            fn()  # type: ignore[operator]
        best = min(best, (time.process_time() - start) / (n // rounds))
    return best * 1e6


def main() -> None:
    billing = InternalAuth("billing", InternalKeys(SECRET))
    ingress = InternalAuth("ingress", InternalKeys(SECRET))
    allowed = frozenset({"ingress"})
    context = _Context(ingress.metadata()[0][1])
    assert billing.check(context, allowed) is None  # type: ignore[arg-type]
    cached = _per_call_us(lambda: billing.check(context, allowed), N)  # type: ignore[arg-type]
    now = int(time.time())
    fresh = [_Context(mint_token(SECRET, "ingress", now - i)) for i in range(20_000)]
    it = iter(fresh)
    first = _per_call_us(lambda: InternalAuth("billing", InternalKeys(SECRET)).check(next(it), allowed), 20_000)
    client = _per_call_us(ingress.metadata, N)
    print("internal auth check per call (bench/internal_auth.py)")
    print(f"  server, verified token (cached):     {cached:7.2f} µs")
    print(f"  server, first sight of a token (HMAC, incl. a fresh verifier): {first:7.2f} µs")
    print(f"  client, caller metadata (cached):    {client:7.2f} µs")
    _kafka_records()


def _kafka_records() -> None:
    keys = InternalKeys(SECRET)
    rated = usage_pb2.UsageRated(
        request_id="req_" + "a" * 26, account_id="acct_" + "b" * 12, key_id="key_" + "c" * 12,
        hold_id="req_" + "a" * 26,
        model="gpt-4o-mini", provider="openai", usage=usage_pb2.TokenUsage(prompt_tokens=1200, completion_tokens=300),
        currency="USD", upstream_cost_nanos=360_000, resale_price_nanos=396_000, price_book_version="2026-12-01",
        markup_bps=1000, input_price_nanos=165, output_price_nanos=660, occurred_at_unix_ms=1, rated_at_unix_ms=2,
        tags={"team": "search", "env": "prod"},
    )
    env = envelope_for(rated, id=rated.request_id, service="metering", subject=rated.account_id)
    signer, verifier = EventSigner("metering", keys), EventVerifier(keys)
    headers = env.headers()
    signed = signer.sign(headers, env.data)
    received = Envelope.from_kafka(signed, env.data)
    assert verifier(received, signed) is None
    sign = _per_call_us(lambda: signer.sign(headers, env.data), N)
    verify = _per_call_us(lambda: verifier(received, signed), N)
    print(f"Kafka producer signature per record (UsageRated, {len(env.data)} B value, {len(headers)} headers)")
    print(f"  producer, sign:                      {sign:7.2f} µs")
    print(f"  consumer, verify:                    {verify:7.2f} µs")


if __name__ == "__main__":
    main()
