"""The one mapping from gRPC status (+ tollgate-reason, retry-after trailers) to HTTP status and OpenAI error."""

from __future__ import annotations

import grpc
import orjson
import pytest
from tollgate_ingress.channels import from_grpc
from tollgate_ingress.errors import RateLimited


def rpc_error(code: grpc.StatusCode, details: str = "details", **trailers: str) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata(*[(k.replace("_", "-"), v) for k, v in trailers.items()])
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)


@pytest.mark.parametrize(
    ("code", "service", "status", "type_"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "router", 400, "invalid_request_error"),
        (grpc.StatusCode.UNAUTHENTICATED, "billing", 401, "authentication_error"),
        (grpc.StatusCode.FAILED_PRECONDITION, "billing", 402, "insufficient_quota"),
        (grpc.StatusCode.FAILED_PRECONDITION, "router", 400, "invalid_request_error"),
        (grpc.StatusCode.PERMISSION_DENIED, "billing", 403, "permission_error"),
        (grpc.StatusCode.NOT_FOUND, "router", 404, "invalid_request_error"),
        (grpc.StatusCode.ALREADY_EXISTS, "billing", 409, "invalid_request_error"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "router", 429, "rate_limit_error"),
        (grpc.StatusCode.UNAVAILABLE, "router", 502, "upstream_error"),
        (grpc.StatusCode.INTERNAL, "router", 502, "upstream_error"),
        (grpc.StatusCode.UNAVAILABLE, "billing", 503, "api_error"),
        (grpc.StatusCode.UNAVAILABLE, "policy", 503, "api_error"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "router", 504, "timeout_error"),
    ],
)
def test_status_table(code: grpc.StatusCode, service: str, status: int, type_: str) -> None:
    error = from_grpc(rpc_error(code), service=service)
    assert (error.status, error.type) == (status, type_)
    body = orjson.loads(error.body())
    assert set(body["error"]) == {"message", "type", "code", "param"}


def test_reason_trailer_becomes_the_code() -> None:
    error = from_grpc(rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "no money", tollgate_reason="key_limit_exceeded"),
                      service="billing")
    assert error.payload() == {"error": {"message": "no money", "type": "insufficient_quota",
                                         "code": "key_limit_exceeded", "param": None}}


def test_rate_limit_carries_retry_after() -> None:
    error = from_grpc(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after="42"), service="billing")
    assert isinstance(error, RateLimited)
    assert error.headers() == {"Retry-After": "42"}
    # Without the trailer, clients still get a Retry-After to back off by.
    assert from_grpc(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED), service="billing").headers() == {"Retry-After": "1"}


async def test_fastapi_validation_errors_become_openai_400s() -> None:
    """FastAPI answers 422 with its own body by default; ingress answers 400 in OpenAI's shape instead."""
    from fastapi.exceptions import RequestValidationError
    from tollgate_ingress.api import _validation_error

    exc = RequestValidationError([{"loc": ("query", "limit"), "msg": "Input should be a valid integer",
                                   "type": "int_parsing"}])
    response = await _validation_error(None, exc)  # type: ignore[arg-type]
    assert response.status_code == 400
    assert orjson.loads(response.body) == {"error": {"message": "Input should be a valid integer",
                                                     "type": "invalid_request_error", "code": "invalid_value",
                                                     "param": "limit"}}


def test_no_eligible_deployment_is_the_callers_request_not_their_balance() -> None:
    error = from_grpc(
        rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "no provider left", tollgate_reason="no_eligible_deployment"),
        service="router",
    )
    assert error.status == 400
    assert error.payload()["error"]["code"] == "no_eligible_deployment"


def test_the_param_trailer_reaches_openai_and_anthropic_error_bodies() -> None:
    from tollgate_ingress.anthropic_wire import error_body

    error = from_grpc(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "Expected a value <= 20, but got 25 instead.",
                                tollgate_reason="integer_above_max_value", tollgate_param="top_logprobs"),
                      service="router")
    assert error.status == 400
    assert orjson.loads(error.body())["error"] == {
        "message": "Expected a value <= 20, but got 25 instead.", "type": "invalid_request_error",
        "code": "integer_above_max_value", "param": "top_logprobs"}
    # Anthropic's error JSON has no param: the field leads the message, as in Anthropic's own errors.
    assert orjson.loads(error_body(error)) == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "top_logprobs: Expected a value <= 20, but got 25 instead."}}
    named = from_grpc(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "max_tokens is too large: 9",
                                tollgate_param="max_tokens"), service="router")
    assert orjson.loads(error_body(named))["error"]["message"] == "max_tokens is too large: 9"
