"""The one exception hierarchy of the router.

Each error carries a stable ``reason`` (the ``tollgate-reason`` trailer, which ingress turns into the OpenAI
error ``code``); ``grpc_server`` maps the classes to gRPC status codes once, in one table::

    RouterError                   INTERNAL            internal_error
    ├── InvalidRequest            INVALID_ARGUMENT    invalid_request       body_json is not a usable request
    ├── ModelNotFound             NOT_FOUND           model_not_found       no route for that public model name
    ├── UpstreamRejected          INVALID_ARGUMENT    invalid_request       upstream said 400/413/422: the caller's
    │                                                                       request is malformed; its message kept
    ├── UpstreamRateLimited       RESOURCE_EXHAUSTED  upstream_rate_limited upstream said 429 (+ retry_after)
    ├── UpstreamAuthFailed        UNAVAILABLE         upstream_auth         upstream said 401/403: the operator's
    │                                                                       provider key is wrong, not the caller
    ├── UpstreamUnavailable       UNAVAILABLE         upstream_error        5xx, unreachable, garbled, no usage
    └── UpstreamTimeout           DEADLINE_EXCEEDED   upstream_timeout      no answer within the timeout

Messages reach the caller, so they never carry provider keys nor the upstream's text for auth failures
(OpenAI's 401 message quotes part of the key).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "InvalidRequest",
    "ModelNotFound",
    "RouterError",
    "UpstreamAuthFailed",
    "UpstreamRateLimited",
    "UpstreamRejected",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class RouterError(Exception):
    reason: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, retry_after: int | None = None, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        #: The provider's HTTP status when it answered with an error; 0 when there was no answer.
        self.status = status


class InvalidRequest(RouterError):
    reason = "invalid_request"


class ModelNotFound(RouterError):
    reason = "model_not_found"


class UpstreamRejected(RouterError):
    reason = "invalid_request"


class UpstreamRateLimited(RouterError):
    reason = "upstream_rate_limited"


class UpstreamAuthFailed(RouterError):
    reason = "upstream_auth"


class UpstreamUnavailable(RouterError):
    reason = "upstream_error"


class UpstreamTimeout(RouterError):
    reason = "upstream_timeout"
