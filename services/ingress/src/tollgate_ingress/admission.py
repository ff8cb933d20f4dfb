"""Who is let in before any work is done: the API key checked before the body is read, failed credentials
throttled, and a cap on each key's concurrent requests and streams.

Why here: without it ingress reads (up to ``INGRESS_MAX_BODY_BYTES``) and tokenises a body before billing says the
key is unknown, so anyone could make it work for free; and one key could hold every connection.

- :class:`KeyGate` remembers billing's answer about a key (``GetKeyInfo``) for a while, refusals too. A remembered
  good key costs a dictionary look-up; billing's ``Authorize`` stays the authority (a key revoked since is still
  refused there, and then remembered as refused).
- :class:`FailureThrottle` counts failed credentials (API keys and admin tokens) per peer address: past the budget
  a peer gets 429 for any credential not already known to be good, so guessing stops while the peer's good keys
  keep working.
- :class:`ConcurrencyLimits` caps requests (and, among them, streams) in flight per key on this replica: 429.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .errors import AuthenticationFailed, RateLimited

__all__ = ["ConcurrencyLimits", "FailureThrottle", "KeyGate", "Slot"]

#: Longer bearer tokens are no key of ours: refused without asking billing (and never stored).
MAX_KEY_LENGTH = 256


class FailureThrottle:
    """Failed credentials per peer in fixed windows of ``window`` seconds; at most ``max_peers`` remembered."""

    def __init__(self, per_window: int, window: float = 60.0, *, max_peers: int = 65_536,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_window = per_window
        self.window = window
        self.max_peers = max_peers
        self.clock = clock
        self._peers: dict[str, tuple[float, int]] = {}

    def _current(self, peer: str) -> tuple[float, int]:
        now = self.clock()
        started, count = self._peers.get(peer, (now, 0))
        return (now, 0) if now - started >= self.window else (started, count)

    def check(self, peer: str) -> None:
        """429 when ``peer`` has used up its failures for this window (0 disables the throttle)."""
        if self.per_window <= 0:
            return
        started, count = self._current(peer)
        if count >= self.per_window:
            retry = max(1, int(started + self.window - self.clock()) + 1)
            raise RateLimited("Too many failed authentication attempts; try again later.",
                              code="too_many_auth_failures", retry_after_seconds=retry)

    def failed(self, peer: str) -> None:
        if self.per_window <= 0:
            return
        started, count = self._current(peer)
        self._peers.pop(peer, None)
        self._peers[peer] = (started, count + 1)
        while len(self._peers) > self.max_peers:
            del self._peers[next(iter(self._peers))]


_UNKNOWN_KEY = "Incorrect API key provided."


class KeyGate:
    """Billing's verdict on each key, remembered: good keys for ``ttl`` seconds, refused ones for ``negative_ttl``."""

    def __init__(
        self,
        look_up: Callable[[str], Awaitable[object]],
        throttle: FailureThrottle,
        *,
        ttl: float = 30.0,
        negative_ttl: float = 60.0,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._look_up = look_up
        self.throttle = throttle
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_keys = max_keys
        self.clock = clock
        #: key → (valid until, good)
        self._keys: dict[str, tuple[float, bool]] = {}

    async def check(self, api_key: str, peer: str) -> None:
        """Return when the key is known good (or billing says so now); else 401, or 429 when ``peer`` has failed
        too often. Billing unreachable: its error (503), nothing remembered."""
        entry = self._keys.get(api_key)
        if entry is not None and self.clock() < entry[0]:
            if entry[1]:
                return
            self._refuse(peer)
        self.throttle.check(peer)
        if len(api_key) > MAX_KEY_LENGTH:
            self._refuse(peer)
        try:
            await self._look_up(api_key)
        except AuthenticationFailed:
            self.refused(api_key, peer)
            raise
        self._remember(api_key, True, self.ttl)

    def refused(self, api_key: str, peer: str) -> None:
        """Billing refused the key (here or on Authorize): remember it, count the failure."""
        if len(api_key) <= MAX_KEY_LENGTH:
            self._remember(api_key, False, self.negative_ttl)
        self.throttle.failed(peer)

    def _refuse(self, peer: str) -> None:
        self.throttle.failed(peer)
        self.throttle.check(peer)
        raise AuthenticationFailed(_UNKNOWN_KEY, code="invalid_api_key")

    def _remember(self, api_key: str, good: bool, ttl: float) -> None:
        self._keys.pop(api_key, None)
        self._keys[api_key] = (self.clock() + ttl, good)
        while len(self._keys) > self.max_keys:
            del self._keys[next(iter(self._keys))]


@dataclass(eq=False)
class Slot:
    """One admitted request of a key; :meth:`release` (idempotent) gives the place back."""

    limits: ConcurrencyLimits
    key: str
    stream: bool
    released: bool = field(default=False)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limits._release(self)


class ConcurrencyLimits:
    """Requests and streams in flight per key on this replica (0: no limit)."""

    def __init__(self, max_requests: int, max_streams: int) -> None:
        self.max_requests = max_requests
        self.max_streams = max_streams
        self._requests: dict[str, int] = {}
        self._streams: dict[str, int] = {}

    def acquire(self, key: str, *, stream: bool) -> Slot:
        requests = self._requests.get(key, 0)
        if self.max_requests and requests >= self.max_requests:
            raise RateLimited(f"Too many concurrent requests for this API key (at most {self.max_requests}).",
                              code="concurrency_limit_exceeded", retry_after_seconds=1)
        if stream:
            streams = self._streams.get(key, 0)
            if self.max_streams and streams >= self.max_streams:
                raise RateLimited(f"Too many concurrent streams for this API key (at most {self.max_streams}).",
                                  code="concurrency_limit_exceeded", retry_after_seconds=1)
            self._streams[key] = streams + 1
        self._requests[key] = requests + 1
        return Slot(self, key, stream)

    def in_flight(self, key: str) -> tuple[int, int]:
        """(requests, streams) of ``key`` now."""
        return self._requests.get(key, 0), self._streams.get(key, 0)

    def _release(self, slot: Slot) -> None:
        _decrement(self._requests, slot.key)
        if slot.stream:
            _decrement(self._streams, slot.key)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]
