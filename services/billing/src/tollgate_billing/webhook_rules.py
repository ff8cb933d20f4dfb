"""The rules of alert webhooks, pure: which events, which URLs and addresses, the signature, the retry schedule.

* **Events**: the alert events of billing's log, by their short type (the ce_type without ``tollgate.billing.v1.``).
* **URLs**: ``https://`` to a public address. Billing runs on the internal plane, so a webhook is a way to make it
  call anything it can reach (SSRF): an address that is not global (loopback, private, link-local — the cloud
  metadata service —, CGNAT, multicast, reserved) is refused, checked on the URL when it is set and on the address
  actually connected to before every attempt (webhooks.py resolves the name and connects only to checked
  addresses, so a name re-pointed after it was set gains nothing). Networks in ``BILLING_WEBHOOK_ALLOWED_NETWORKS``
  (CIDRs; e.g. a receiver inside your own network, or the tests' 127.0.0.0/8) are allowed, and only to them may a
  webhook use plain ``http://``. Redirects are never followed.
* **Signature** (Stripe's scheme): ``Tollgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "t.body")>``.
  The receiver recomputes it over the raw body and refuses a ``t`` too far from its clock (replays).
* **Retries**: attempt n failed → the next one after ``base · 2^(n−1)`` seconds (capped), ±20 % jitter, until
  ``max_attempts`` attempts or ``max_age`` since the event, whichever comes first; then the delivery is ``failed``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "EVENT_TYPES",
    "IpNetwork",
    "RetryPolicy",
    "address_allowed",
    "ip_literal",
    "new_secret",
    "parse_events",
    "parse_networks",
    "sign",
    "signature_header",
    "url_problem",
]

#: Short type → ce_type of the alert events a webhook can take, in the order the admin API lists them.
EVENT_TYPES: dict[str, str] = {
    "budget.threshold_crossed": "tollgate.billing.v1.budget.threshold_crossed",
    "balance.low": "tollgate.billing.v1.balance.low",
    "balance.restored": "tollgate.billing.v1.balance.restored",
}
MAX_URL_LENGTH = 2048
SECRET_PREFIX = "whsec_"

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_events(events: Sequence[str]) -> list[str]:
    """The event types asked for, deduplicated in the canonical order; empty = all. ValueError names a bad one."""
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event type {unknown[0]!r} (one of {', '.join(EVENT_TYPES)})")
    wanted = set(events) or set(EVENT_TYPES)
    return [e for e in EVENT_TYPES if e in wanted]


def parse_networks(text: str) -> tuple[IpNetwork, ...]:
    """``BILLING_WEBHOOK_ALLOWED_NETWORKS``: comma-separated CIDRs (a bare address is a /32 or /128)."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def _plain(address: IpAddress) -> IpAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    return address


def in_networks(address: IpAddress, allowed: Sequence[IpNetwork]) -> bool:
    address = _plain(address)
    return any(address.version == net.version and address in net for net in allowed)


def address_allowed(address: str, allowed: Sequence[IpNetwork]) -> bool:
    """May billing connect to this IP address: a global one, or one in an allowed network."""
    try:
        ip = _plain(ipaddress.ip_address(address.split("%", 1)[0]))
    except ValueError:
        return False
    return in_networks(ip, allowed) or (ip.is_global and not ip.is_multicast)


def ip_literal(host: str) -> IpAddress | None:
    """The host as an IP address when it is one (no name to resolve), else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def url_problem(url: str, allowed: Sequence[IpNetwork]) -> str | None:
    """Why ``url`` cannot be a webhook (None: it can, as far as can be told without resolving its name)."""
    if not url or len(url) > MAX_URL_LENGTH:
        return f"url must be 1 to {MAX_URL_LENGTH} characters"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "url must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "url is not a valid URL"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "url must be an https:// URL with a host"
    if parts.username is not None or parts.password is not None:
        return "url must not carry credentials"
    if parts.fragment:
        return "url must not have a fragment"
    if port == 0:
        return "url has an invalid port"
    host = parts.hostname
    literal = ip_literal(host)
    if literal is not None and not address_allowed(host, allowed):
        return "url points at a loopback, private or reserved address"
    if literal is None and (host == "localhost" or host.endswith((".localhost", ".local", ".internal"))) \
            and not allowed:
        return "url points at a local name"
    if parts.scheme == "http" and not (literal is not None and in_networks(literal, allowed)):
        return "url must use https:// (http:// only to an address in BILLING_WEBHOOK_ALLOWED_NETWORKS)"
    return None


def new_secret() -> str:
    """32 random bytes, URL-safe: what the receiver keeps to check signatures."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 12
    #: No attempt is made once the event is older than this (Stripe: 3 days).
    max_age_seconds: float = 3 * 24 * 3600.0
    base_seconds: float = 30.0
    max_delay_seconds: float = 6 * 3600.0
    jitter: float = 0.2

    def next_delay(self, attempts: int, rand: random.Random | None = None) -> float:
        """Seconds until the attempt after ``attempts`` failed ones (≥ 1)."""
        delay = min(self.max_delay_seconds, self.base_seconds * 2 ** max(0, attempts - 1))
        spread = (rand or random).uniform(1 - self.jitter, 1 + self.jitter)
        return delay * spread

    def gives_up(self, attempts: int, age_seconds: float, delay: float) -> bool:
        """After ``attempts`` failed ones: stop when the attempts are spent or the next one would be too late."""
        return attempts >= self.max_attempts or age_seconds + delay > self.max_age_seconds
