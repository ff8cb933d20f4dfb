"""Caller tokens: what verifies, what does not, and what a deployment must configure.

The per-service tests (billing, router, metering, policy ``test_internal_auth.py``) show the same over real gRPC.
"""

from __future__ import annotations

import grpc
import pytest
from tollgate_common.config import ConfigError, EnvReader
from tollgate_common.internal_auth import (
    CALLER_KEY,
    LIFETIME_SECONDS,
    REFRESH_SECONDS,
    InternalAuth,
    InternalKeys,
    guard_servicer,
    internal_keys_from_env,
    mint_token,
)

SECRET = "s" * 40
OTHER = "o" * 40


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Context:
    """The one ServicerContext method the check reads."""

    def __init__(self, *metadata: tuple[str, str]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


def test_a_token_minted_with_the_secret_names_its_service() -> None:
    clock = Clock()
    ingress = InternalAuth("ingress", InternalKeys(SECRET), clock=clock)
    billing = InternalAuth("billing", InternalKeys(SECRET), clock=clock)
    ((key, token),) = ingress.metadata()
    assert key == CALLER_KEY
    assert billing.caller(token) == "ingress"
    assert billing.caller(token) == "ingress"  # the cached path says the same


@pytest.mark.parametrize(
    "token",
    [
        "",
        "ingress",
        "ingress.1800000000",
        "ingress.1800000000." + "0" * 64,
        "ingress.notanumber." + "0" * 64,
        mint_token(OTHER, "ingress", 1_800_000_000),
    ],
)
def test_forged_or_malformed_tokens_do_not_verify(token: str) -> None:
    assert InternalAuth("billing", InternalKeys(SECRET), clock=Clock()).caller(token) is None


def test_changing_the_service_name_breaks_the_signature() -> None:
    token = mint_token(SECRET, "router", 1_800_000_000)
    forged = "ingress" + token[len("router") :]
    assert InternalAuth("billing", InternalKeys(SECRET), clock=Clock()).caller(forged) is None


def test_a_token_expires_even_after_it_was_cached() -> None:
    clock = Clock()
    billing = InternalAuth("billing", InternalKeys(SECRET), clock=clock)
    token = mint_token(SECRET, "ingress", int(clock.now))
    assert billing.caller(token) == "ingress"
    clock.now += LIFETIME_SECONDS + 1
    assert billing.caller(token) is None
    assert InternalAuth("billing", InternalKeys(SECRET), clock=clock).caller(token) is None


def test_a_token_from_the_far_future_is_refused() -> None:
    clock = Clock()
    token = mint_token(SECRET, "ingress", int(clock.now) + 3600)
    assert InternalAuth("billing", InternalKeys(SECRET), clock=clock).caller(token) is None


def test_a_caller_re_mints_before_its_token_expires() -> None:
    clock = Clock()
    ingress = InternalAuth("ingress", InternalKeys(SECRET), clock=clock)
    first = ingress.metadata()
    assert ingress.metadata() is first  # once per process, not per call
    clock.now += REFRESH_SECONDS
    second = ingress.metadata()
    assert second != first
    assert InternalAuth("billing", InternalKeys(SECRET), clock=clock).caller(second[0][1]) == "ingress"


def test_the_previous_secret_still_verifies_during_a_rotation() -> None:
    clock = Clock()
    old_caller = InternalAuth("ingress", InternalKeys(OTHER), clock=clock)
    rotated = InternalAuth("billing", InternalKeys(SECRET, previous=OTHER), clock=clock)
    assert rotated.caller(old_caller.metadata()[0][1]) == "ingress"
    assert InternalAuth("billing", InternalKeys(SECRET), clock=clock).caller(old_caller.metadata()[0][1]) is None


def test_check_says_unauthenticated_or_permission_denied() -> None:
    clock = Clock()
    billing = InternalAuth("billing", InternalKeys(SECRET), clock=clock)
    allowed = frozenset({"ingress"})
    missing = billing.check(Context(), allowed)  # type: ignore[arg-type]
    assert missing is not None and missing.code == grpc.StatusCode.UNAUTHENTICATED
    bad = billing.check(Context((CALLER_KEY, mint_token(OTHER, "ingress"))), allowed)  # type: ignore[arg-type]
    assert bad is not None and bad.code == grpc.StatusCode.UNAUTHENTICATED
    router = mint_token(SECRET, "router", int(clock.now))
    wrong = billing.check(Context((CALLER_KEY, router)), allowed)  # type: ignore[arg-type]
    assert wrong is not None and wrong.code == grpc.StatusCode.PERMISSION_DENIED
    ingress = mint_token(SECRET, "ingress", int(clock.now))
    assert billing.check(Context(("traceparent", "x"), (CALLER_KEY, ingress)), allowed) is None  # type: ignore[arg-type]


def test_without_a_secret_the_check_is_off_and_nothing_is_sent() -> None:
    off = InternalAuth("billing", InternalKeys())
    assert off.metadata() == ()
    assert off.check(Context(), frozenset({"ingress"})) is None  # type: ignore[arg-type]


def _keys(environ: dict[str, str]) -> InternalKeys:
    env = EnvReader("BILLING", environ)
    keys = internal_keys_from_env(env)
    env.check()
    return keys


def test_production_requires_a_secret() -> None:
    with pytest.raises(ConfigError, match="TOLLGATE_INTERNAL_SECRET is required"):
        _keys({"TOLLGATE_ENV": "production"})
    assert _keys({"TOLLGATE_ENV": "production", "TOLLGATE_INTERNAL_SECRET": SECRET}).enabled
    assert not _keys({}).enabled  # development (the default) may run without


def test_a_short_secret_or_an_unknown_environment_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 32"):
        _keys({"TOLLGATE_INTERNAL_SECRET": "short"})
    with pytest.raises(ConfigError, match="TOLLGATE_ENV"):
        _keys({"TOLLGATE_ENV": "prod", "TOLLGATE_INTERNAL_SECRET": SECRET})


def test_a_servicer_table_must_name_every_rpc() -> None:
    class Base:
        def Get(self) -> None: ...

        def Put(self) -> None: ...

    with pytest.raises(TypeError, match="missing \\['Put'\\]"):
        guard_servicer({"Get": frozenset({"ingress"})}, Base)
