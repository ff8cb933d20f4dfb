"""What the internal-call check costs per RPC: ``InternalAuth.check`` on a verified (cached) token, a token seen for
the first time (one HMAC), and the caller's side (the cached metadata). Prints µs per call; asserts nothing.

Run: ``.venv/bin/python -m bench.internal_auth``.
"""

from __future__ import annotations

import time

from tollgate_common.internal_auth import CALLER_KEY, InternalAuth, InternalKeys, mint_token

SECRET = "bench-internal-secret-0123456789abcdef"
N = 200_000


class _Context:
    """What grpc.aio hands a servicer: the call's metadata (traceparent and the caller token)."""

    def __init__(self, token: str) -> None:
        self.metadata = (("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01"), (CALLER_KEY, token))

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


def _per_call_us(fn: object, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - start) / n * 1e6


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


if __name__ == "__main__":
    main()
