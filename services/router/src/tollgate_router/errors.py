"""The one exception hierarchy of the router.

Each error carries a stable ``reason`` (the ``tollgate-reason`` trailer, which ingress turns into the OpenAI
error ``code``); ``grpc_server`` maps the classes to gRPC status codes once, in one table::

    RouterError                   INTERNAL            internal_error
    ├── InvalidRequest            INVALID_ARGUMENT    invalid_request       body_json is not a usable request
    ├── ModelNotFound             NOT_FOUND           model_not_found       no route for that public model name
    ├── UpstreamRejected          INVALID_ARGUMENT    invalid_request       upstream said 400/413/422: the caller's
    │                                                                       request is malformed; its message, and
    │                                                                       (OpenAI format) its param and code kept
    ├── UpstreamRateLimited       RESOURCE_EXHAUSTED  upstream_rate_limited upstream said 429 (+ retry_after)
    ├── UpstreamAuthFailed        UNAVAILABLE         upstream_auth         upstream said 401/403: the operator's
    │                                                                       provider key is wrong, not the caller
    ├── UpstreamUnavailable       UNAVAILABLE         upstream_error        5xx, unreachable, garbled, no usage,
    │   │                                                                   an answer beyond the size limits
    │   └── InvalidUsage          UNAVAILABLE         upstream_error        usage counts that are not integers in
    │                                                                       [0, 2^63): the good ones kept
    └── UpstreamTimeout           DEADLINE_EXCEEDED   upstream_timeout      no answer within the timeout

Messages reach the caller, so they never carry provider keys nor the upstream's text for auth failures
(OpenAI's 401 message quotes part of the key). ``param`` (the request field at fault) travels as the
``tollgate-param`` trailer; ``code``, when set (the provider's own, e.g. ``context_length_exceeded``), is sent as the
``tollgate-reason`` instead of the class's reason, so the caller sees the code the provider would have given it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from .domain import Usage

__all__ = [
    "InvalidRequest",
    "InvalidUsage",
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

    def __init__(
        self,
        message: str,
        *,
        retry_after: int | None = None,
        status: int = 0,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        #: The request field the error is about (OpenAI's ``param``), when known.
        self.param = param
        #: The provider's error code, passed on to the caller in place of :attr:`reason` when set.
        self.code = code
        #: The provider's HTTP status when it answered with an error (200: its answer was refused, garbled or cut
        #: mid-way); 0 when there was no answer.
        self.status = status
        #: The provider was never connected to, so nothing reached it (its usage is known to be none).
        self.unreached = False
        #: Set on the error a call ends with: some attempt of it may have been served (and billed) by its provider
        #: without its usage being known (``AttemptRecorded.usage_unknown``); the ``tollgate-usage-unknown: 1``
        #: trailer tells ingress, which then charges the request per the operator's setting.
        self.usage_unknown = False


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


class InvalidUsage(UpstreamUnavailable):
    """The provider reported usage the router cannot record; ``usage`` holds its valid counts (the bad ones as 0)."""

    def __init__(self, message: str, usage: Usage) -> None:
        super().__init__(message, status=200)
        self.usage = usage
