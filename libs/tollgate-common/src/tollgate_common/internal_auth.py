"""Who is calling: signed per-service tokens on every internal gRPC call, checked without a server interceptor.

Why not an interceptor: a grpc.aio server interceptor costs ~1 ms of CPU per call on the 2-core machine (measured),
more than the rest of a billing hop. So the check is a few dictionary operations inside each servicer method, put
there by :func:`guard_servicer` from one table per service (RPC name → the services allowed to call it).

The token, sent as metadata ``tollgate-caller`` on every call::

    <service>.<issued_at unix seconds>.<hex HMAC-SHA256(key, "tollgate-caller/v1\\n<service>\\n<issued_at>")>

``key`` is derived from ``TOLLGATE_INTERNAL_SECRET`` (one secret shared by the deployment). A process mints its
token once and again every :data:`REFRESH_SECONDS`; a token is accepted for :data:`LIFETIME_SECONDS` after it was
issued (and up to :data:`CLOCK_SKEW_SECONDS` before, for clocks that disagree). A verified token is cached by its
``service.issued_at`` prefix, so checking a call is: read the metadata, one dict lookup, one constant-time compare
of the MAC, one comparison of the clock with the expiry. ``bench/internal_auth.py`` measures it.

Errors: no token or a token that does not verify (wrong secret, expired, malformed) → ``UNAUTHENTICATED``; a valid
token of a service the RPC's table does not list → ``PERMISSION_DENIED``.

What a shared secret does not give: a service holding it could mint another service's token. It keeps out
everyone who does not hold the secret (the rest of the pod network, a tenant's workload); per-service key pairs
would be the next step. ``TOLLGATE_INTERNAL_SECRET_PREVIOUS`` is also accepted while verifying, so the secret can be
rotated without downtime (roll out new + previous, then drop previous).

Without a secret the check is off, which is allowed only in development (``TOLLGATE_ENV``, default
``development``; the container image and the Helm chart set ``production``, where a missing secret is exit 2).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import inspect
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from .config import EnvReader

__all__ = [
    "CALLER_KEY",
    "CLOCK_SKEW_SECONDS",
    "LIFETIME_SECONDS",
    "MIN_SECRET_LENGTH",
    "REFRESH_SECONDS",
    "InternalAuth",
    "InternalKeys",
    "Refusal",
    "derive_key",
    "guard_servicer",
    "in_development",
    "internal_keys_from_env",
    "mint_token",
]

log = logging.getLogger(__name__)

CALLER_KEY = "tollgate-caller"
LIFETIME_SECONDS = 3600
REFRESH_SECONDS = 300
CLOCK_SKEW_SECONDS = 60
MIN_SECRET_LENGTH = 32
#: Verified prefixes kept; only tokens that verified are cached, so only secret holders can fill it.
_CACHE_LIMIT = 4096
_ENVIRONMENTS = ("development", "production")


def in_development(environ: Mapping[str, str]) -> bool:
    """``TOLLGATE_ENV`` is ``development`` (the default for a checkout; images and the chart say production)."""
    return (environ.get("TOLLGATE_ENV", "").strip().lower() or "development") == "development"


@dataclass(frozen=True, slots=True)
class InternalKeys:
    """The deployment's internal secret(s); empty: authentication off (development only)."""

    secret: str = field(default="", repr=False)
    previous: str = field(default="", repr=False)

    @property
    def enabled(self) -> bool:
        return bool(self.secret)


def internal_keys_from_env(env: EnvReader) -> InternalKeys:
    """Read ``TOLLGATE_INTERNAL_SECRET`` (+ ``_PREVIOUS``) and ``TOLLGATE_ENV``; problems go to ``env.problems``."""
    environ = env.environ
    environment = environ.get("TOLLGATE_ENV", "").strip().lower() or "development"
    if environment not in _ENVIRONMENTS:
        env.problems.append(f"TOLLGATE_ENV={environment!r} must be one of {', '.join(_ENVIRONMENTS)}")
    secret = environ.get("TOLLGATE_INTERNAL_SECRET", "").strip()
    previous = environ.get("TOLLGATE_INTERNAL_SECRET_PREVIOUS", "").strip()
    if not secret and environment != "development":
        env.problems.append(
            "TOLLGATE_INTERNAL_SECRET is required outside development (TOLLGATE_ENV=" + environment + ")"
        )
    for name, value in (("TOLLGATE_INTERNAL_SECRET", secret), ("TOLLGATE_INTERNAL_SECRET_PREVIOUS", previous)):
        if value and len(value) < MIN_SECRET_LENGTH:
            env.problems.append(f"{name} must be at least {MIN_SECRET_LENGTH} characters")
    if previous and not secret:
        env.problems.append("TOLLGATE_INTERNAL_SECRET_PREVIOUS is set without TOLLGATE_INTERNAL_SECRET")
    return InternalKeys(secret, previous)


def derive_key(secret: str, purpose: str) -> bytes:
    """One key per use of the secret (gRPC tokens, Kafka signatures), so a MAC of one is never valid for the other."""
    return hmac.new(secret.encode(), b"tollgate/" + purpose.encode(), hashlib.sha256).digest()


def _mac(key: bytes, service: str, issued_at: int) -> str:
    return hmac.new(key, f"tollgate-caller/v1\n{service}\n{issued_at}".encode(), hashlib.sha256).hexdigest()


def mint_token(secret: str, service: str, issued_at: int | None = None) -> str:
    """A caller token for ``service`` (tests and operator tools that call a service directly use this too)."""
    at = int(time.time()) if issued_at is None else issued_at
    return f"{service}.{at}.{_mac(derive_key(secret, 'grpc'), service, at)}"


@dataclass(frozen=True, slots=True)
class Refusal:
    code: grpc.StatusCode
    message: str
    reason: str


_MISSING = Refusal(grpc.StatusCode.UNAUTHENTICATED, "internal call without a caller token", "unauthenticated")
_INVALID = Refusal(grpc.StatusCode.UNAUTHENTICATED, "caller token is not valid", "unauthenticated")


class InternalAuth:
    """One process's identity (the token it sends) and its check of the tokens it receives."""

    def __init__(self, service: str, keys: InternalKeys, *, clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.enabled = keys.enabled
        self._clock = clock
        self._keys = [derive_key(s, "grpc") for s in (keys.secret, keys.previous) if s]
        self._minted_at = -1.0
        self._metadata: tuple[tuple[str, str], ...] = ()
        #: "service.issued_at" → (expected MAC, service, expires at): filled only by tokens that verified.
        self._verified: dict[str, tuple[str, str, float]] = {}

    # --- client side --------------------------------------------------------------------------------------------
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata to send with every call: minted once, re-minted every :data:`REFRESH_SECONDS`."""
        if not self.enabled:
            return ()
        now = self._clock()
        if now - self._minted_at >= REFRESH_SECONDS:
            at = int(now)
            self._metadata = ((CALLER_KEY, f"{self.service}.{at}.{_mac(self._keys[0], self.service, at)}"),)
            self._minted_at = now
        return self._metadata

    # --- server side --------------------------------------------------------------------------------------------
    def caller(self, token: str) -> str | None:
        """The service a token names, or None when it does not verify or has expired."""
        prefix, dot, mac = token.rpartition(".")
        cached = self._verified.get(prefix)
        if cached is not None:
            if hmac.compare_digest(mac, cached[0]) and self._clock() < cached[2]:
                return cached[1]
            if self._clock() >= cached[2]:
                del self._verified[prefix]
                return None
        return self._verify(prefix, mac) if dot else None

    def _verify(self, prefix: str, mac: str) -> str | None:
        service, _, issued = prefix.partition(".")
        if not service or not issued.isdigit() or len(issued) > 12:
            return None
        at = int(issued)
        now = self._clock()
        if at > now + CLOCK_SKEW_SECONDS or at + LIFETIME_SECONDS <= now:
            return None
        for key in self._keys:
            expected = _mac(key, service, at)
            if hmac.compare_digest(mac, expected):
                if len(self._verified) >= _CACHE_LIMIT:
                    self._verified.clear()
                self._verified[prefix] = (expected, service, float(at + LIFETIME_SECONDS))
                return service
        return None

    def check(self, context: grpc.aio.ServicerContext, allowed: frozenset[str]) -> Refusal | None:
        """None when the call may go on; else why not. The hot path: no allocation beyond the metadata read."""
        if not self.enabled:
            return None
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == CALLER_KEY:
                token = value
                break
        if token is None:
            return _MISSING
        caller = self.caller(token if isinstance(token, str) else token.decode("latin-1"))
        if caller is None:
            return _INVALID
        if caller not in allowed:
            return Refusal(grpc.StatusCode.PERMISSION_DENIED, f"{caller} may not call this RPC", "permission_denied")
        return None


S = TypeVar("S", bound=type)


def guard_servicer(callers: Mapping[str, frozenset[str]], base: type) -> Callable[[S], S]:
    """Class decorator: every RPC of ``base`` (the generated servicer) checks its caller against ``callers``, and
    an exception the RPC does not map reaches the client as a generic INTERNAL with the request id.

    The servicer keeps its :class:`InternalAuth` in ``self.internal_auth``. An RPC of ``base`` missing from the
    table is an error at import, so a new RPC cannot ship open by accident.
    """
    rpcs = {name for name, _ in inspect.getmembers(base, inspect.isfunction) if name[:1].isupper()}
    missing = rpcs - set(callers)
    unknown = set(callers) - rpcs
    if missing or unknown:
        raise TypeError(f"caller table of {base.__name__}: missing {sorted(missing)}, unknown {sorted(unknown)}")

    def decorate(cls: S) -> S:
        for name, allowed in callers.items():
            setattr(cls, name, _guarded(getattr(cls, name), frozenset(allowed)))
        return cls

    return decorate


def _internal_error_message(request: Any) -> str:
    from .logs import request_id_var

    request_id = request_id_var.get() or str(getattr(request, "request_id", "") or "")
    request_id = "".join(c for c in request_id[:128] if c.isprintable())
    return f"internal error (request id {request_id})" if request_id else "internal error"


async def _internal_error(context: grpc.aio.ServicerContext, method: str, request: Any, exc: Exception) -> None:
    """An exception no error table maps: logged by type and stack (never its message, which may quote SQL, an
    address or the caller's input), answered as a generic INTERNAL naming the request id to quote to the operator."""
    from .grpc import abort

    log.error(
        "unexpected error in an RPC",
        extra={
            "rpc": method,
            "error_type": type(exc).__name__,
            "stack": "".join(traceback.format_tb(exc.__traceback__)),
        },
    )
    await abort(context, grpc.StatusCode.INTERNAL, _internal_error_message(request), reason="internal")


def _guarded(method: Callable[..., Any], allowed: frozenset[str]) -> Callable[..., Any]:
    """The caller check first; then the RPC, with any exception it did not map turned into a generic INTERNAL."""
    from .grpc import abort

    name = method.__name__
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            refusal = self.internal_auth.check(context, allowed)
            if refusal is not None:
                await abort(context, refusal.code, refusal.message, reason=refusal.reason)
            try:
                async for item in method(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _internal_error(context, name, request, exc)

        return stream

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        refusal = self.internal_auth.check(context, allowed)
        if refusal is not None:
            await abort(context, refusal.code, refusal.message, reason=refusal.reason)
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _internal_error(context, name, request, exc)

    return unary
