"""What a provider's 4xx becomes for the caller: its message, the field it names, its code; never the provider key."""

from __future__ import annotations

import orjson
from tollgate_router.domain import Provider, Route
from tollgate_router.errors import UpstreamRejected, UpstreamUnavailable
from tollgate_router.upstream_http import status_error

KEY = "sk-live-operator-secret-0123456789"
ROUTE = Route(model="gpt-4o", provider=Provider("openai", "openai", "http://upstream", api_key=KEY),
              upstream_model="gpt-4o", owned_by="openai")


def openai_error(message: str, param: object, code: object) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}})


def test_an_openai_400_keeps_message_param_and_code() -> None:
    message = "Invalid 'top_logprobs': integer above maximum value."
    raw = openai_error(message, "top_logprobs", "integer_above_max_value")
    error = status_error(ROUTE, 400, {}, raw)
    assert isinstance(error, UpstreamRejected)
    assert (error.message, error.param, error.code, error.status) == (
        message, "top_logprobs", "integer_above_max_value", 400)


def test_anthropic_and_gemini_400s_keep_the_message_without_a_param() -> None:
    anthropic = b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}'
    gemini = orjson.dumps({"error": {"code": 400, "message": "Invalid value at 'generation_config.temperature'",
                                     "status": "INVALID_ARGUMENT",
                                     "details": [{"fieldViolations": [{"field": "generation_config.temperature"}]}]}})
    for raw, message in ((anthropic, "max_tokens: Field required"), (gemini, "Invalid value at")):
        error = status_error(ROUTE, 400, {}, raw)
        assert isinstance(error, UpstreamRejected) and message in error.message
        assert error.param is None and error.code is None


def test_a_param_or_code_that_cannot_travel_as_a_trailer_is_dropped_not_sent() -> None:
    error = status_error(ROUTE, 422, {}, openai_error("bad", "messages[0]\ncontent é", {"nested": 1}))
    assert isinstance(error, UpstreamRejected) and error.message == "bad"
    assert error.param is None and error.code is None


def test_a_provider_that_echoes_the_operator_key_does_not_hand_it_on() -> None:
    for status in (400, 429, 500):
        error = status_error(ROUTE, status, {}, openai_error(f"Bad header Authorization: Bearer {KEY}", None, None))
        assert KEY not in error.message and "***" in error.message
    assert isinstance(status_error(ROUTE, 500, {}, b"oops " + KEY.encode()), UpstreamUnavailable)
