"""The FastAPI app: its factory, the request-id/metrics middleware, and the one place errors become responses.

``create_app(settings, deps)`` builds everything from its arguments (no globals), so tests inject their own
:class:`~tollgate_ingress.deps.Deps` and the composition root (``__main__``) injects the real ones.
"""

from __future__ import annotations

import logging
import time

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tollgate_common.ids import new_id
from tollgate_common.logs import request_id_var

from . import admin_routes, openai_routes
from .config import Settings
from .deps import Deps, Services, services
from .errors import IngressError, InternalError, InvalidRequest
from .metrics import Metrics

__all__ = ["create_app"]

log = logging.getLogger("tollgate_ingress.http")

_JSON = "application/json"
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def error_response(error: IngressError) -> Response:
    return Response(error.body(), status_code=error.status, headers=error.headers(), media_type=_JSON)


class RequestContext:
    """Gives every request its id (``X-Request-Id``, the log context, and for a chat completion the hold id),
    counts it by route template and status, and turns anything unexpected into an OpenAI-style 500.

    Plain ASGI rather than ``BaseHTTPMiddleware``: it must not buffer streams, and it is on every request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_id("req")
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        header = (b"x-request-id", request_id.encode())
        status = 0
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error", extra={"path": scope.get("path")})
            if status == 0:
                response = error_response(InternalError("The server had an error processing your request."))
                await response(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(template, scope.get("method", ""), str(status or 500)).inc()
            if status >= 500 or status == 0:
                log.warning("request failed", extra={"route": template, "status": status,
                                                     "ms": round((time.perf_counter() - started) * 1000, 2)})
            request_id_var.reset(token)


async def _ingress_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, IngressError)
    return error_response(exc)


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    return error_response(
        InvalidRequest(str(first.get("msg", "Invalid request")), param=".".join(loc) or None, code="invalid_value")
    )


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    error = InvalidRequest(str(exc.detail), code=_HTTP_CODES.get(exc.status_code, "invalid_request"))
    body = orjson.dumps(error.payload())
    return Response(body, status_code=exc.status_code, headers=exc.headers, media_type=_JSON)


def create_app(settings: Settings, deps: Deps) -> FastAPI:
    app = FastAPI(
        title="Tollgate ingress",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.services = Services.build(settings, deps)
    app.add_exception_handler(IngressError, _ingress_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.include_router(openai_routes.router)
    app.include_router(admin_routes.router)

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type=_JSON)

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        checks = services(request).deps.ready()
        ok = all(checks.values())
        body = orjson.dumps({"status": "ready" if ok else "not_ready", "checks": checks})
        return Response(body, status_code=200 if ok else 503, media_type=_JSON)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(services(request).deps.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(RequestContext, metrics=deps.metrics)
    return app
