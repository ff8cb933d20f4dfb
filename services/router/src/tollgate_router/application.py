"""The router's use cases: complete a chat, stream one, list the catalogue; with retries, fallback and breakers.

The one place that walks a request's candidate deployments (from :mod:`tollgate_router.routing`): adapters only
translate, the transport only maps protobuf. For each request:

- a deadline: the caller's gRPC deadline, capped by ``ROUTER_REQUEST_TIMEOUT_SECONDS``; each attempt's timeout
  is the deployment's own, shortened to what is left of it;
- a deployment whose breaker is open is skipped (a half-open one gets one probe);
- a retryable failure (timeout, connection error, 5xx, 429) is retried on the same deployment after backoff with
  full jitter (a 429's Retry-After honoured when it fits the deadline), up to ``retries_per_deployment`` times,
  then the next candidate is tried (fallback); a bad provider key falls back without a retry; a rejected request
  (400) is the caller's and ends at once; ``max_attempts`` bounds the whole request;
- a stream is retried or falls back only until its first chunk went to the caller; after it, an error ends it;
- every attempt is an ``AttemptRecorded`` event, committed to the outbox before the answer goes out; one the
  provider may have served without telling its usage (a timeout, a cancellation, a refused or cut answer) says
  so (``usage_unknown``), with whatever counts it did report validly;
- a breaker counts the provider's failures only: a timeout that the caller's own deadline cut short (its budget
  was below the deployment's timeout) and a cancelled attempt leave it alone, so one tenant's short deadlines
  cannot open a deployment for every tenant;
- an upstream request id is cut to ``MAX_UPSTREAM_REQUEST_ID`` characters (the column downstream holds 200).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import orjson

from .adapters import ProviderAdapter, StreamEvent
from .attempts import Attempt, AttemptLog, now_ms, outcome_of
from .domain import Catalogue, Completion, ModelEntry, Route, Usage, parse_request
from .errors import (
    InvalidRequest,
    InvalidUsage,
    RouterError,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .metrics import BREAKER_OPEN, UPSTREAM_CALLS, UPSTREAM_SECONDS, UPSTREAM_TOKENS
from .resilience import Breakers, ResilienceSettings, counts_against_health, is_retryable, retry_wait
from .routing import Constraints, LatencyTracker, Overrides, plan, split_overrides

__all__ = ["MAX_UPSTREAM_REQUEST_ID", "ResilienceSettings", "Router", "SendUnary"]

log = logging.getLogger(__name__)

#: One attempt of a unary call on one route: (route, body, request id, timeout) → the upstream's answer.
SendUnary = Callable[[Route, dict[str, Any], str, float], Awaitable[Completion]]

#: Longest upstream request id passed on (metering stores it in a 200-character column; a longer one would stop
#: its consumer): longer ones are cut.
MAX_UPSTREAM_REQUEST_ID = 200

#: The cheapest call that proves a deployment answers: one short message, one token back.
_PROBE_BODY = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}


class Router:
    def __init__(
        self,
        catalogue: Catalogue,
        adapters: Mapping[str, ProviderAdapter],
        *,
        upstream_timeout: float,
        resilience: ResilienceSettings | None = None,
        attempts: AttemptLog | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``adapters`` by provider kind (e.g. ``openai``); every kind in the catalogue must have one."""
        missing = {p.kind for p in catalogue.providers()} - set(adapters)
        if missing:
            raise ValueError(f"no adapter for provider kinds: {', '.join(sorted(missing))}")
        self.catalogue = catalogue
        self._adapters = dict(adapters)
        self._timeout = upstream_timeout
        self.resilience = resilience or ResilienceSettings()
        self.breakers = Breakers(self.resilience.breaker, clock)
        self.latency = LatencyTracker()
        self._attempts = attempts
        self._rng = rng or random.Random()
        self._clock = clock

    def _start(
        self,
        *,
        request_id: str,
        account_id: str,
        model: str,
        body_json: bytes,
        deadline: float | None,
        constraints: Constraints,
        streamed: bool,
        mode: str = "chat",
        prompt_tokens_estimate: int = 0,
    ) -> _Call:
        try:
            raw = orjson.loads(body_json)
        except orjson.JSONDecodeError:
            raise InvalidRequest("The request body is not valid JSON.") from None
        name, body = parse_request(raw, model)
        body, overrides = split_overrides(body)
        candidates = plan(
            self.catalogue,
            name,
            overrides,
            constraints,
            rng=self._rng,
            latency=self.latency,
            epsilon=self.resilience.latency_epsilon,
        )
        served = [r for r in candidates if r.mode == mode]
        if len(served) < len(candidates):
            candidates = served
            if not candidates:
                other = "an embedding model: call POST /v1/embeddings" if mode == "chat" else (
                    "a chat model: call POST /v1/chat/completions")
                raise InvalidRequest(f"The model '{name}' is {other}.", param="model")
        budget = self.resilience.request_timeout_seconds
        callers = False
        if deadline is not None and deadline < budget:
            budget, callers = deadline, True
        call = _Call(self, request_id, account_id, body, overrides, candidates, self._clock() + budget, streamed)
        call.callers_deadline = callers
        call.prompt_tokens_estimate = prompt_tokens_estimate
        return call

    async def complete(
        self,
        *,
        request_id: str,
        model: str,
        body_json: bytes,
        deadline: float | None = None,
        account_id: str = "",
        constraints: Constraints | None = None,
        prompt_tokens_estimate: int = 0,
    ) -> Completion:
        return await self.unary(
            self._complete_on, request_id=request_id, model=model, body_json=body_json, deadline=deadline,
            account_id=account_id, constraints=constraints, prompt_tokens_estimate=prompt_tokens_estimate,
        )

    async def _complete_on(self, route: Route, body: dict[str, Any], request_id: str, timeout: float) -> Completion:
        return await self._adapters[route.provider.kind].complete(route, body, request_id=request_id, timeout=timeout)

    async def unary(
        self,
        send: SendUnary,
        *,
        request_id: str,
        model: str,
        body_json: bytes,
        deadline: float | None = None,
        account_id: str = "",
        constraints: Constraints | None = None,
        serves: Callable[[Route], bool] | None = None,
        none_serves: str = "",
        mode: str = "chat",
        prompt_tokens_estimate: int = 0,
    ) -> Completion:
        """The walk over a model's deployments for one unary upstream call (a chat completion, an embedding):
        each attempt ``send``s to one route; a failure is recorded and the next route tried, until one answers or
        the routes and the time run out; every attempt goes to the attempt log. ``serves`` keeps only the routes
        that can take this kind of call; none left is the caller's mistake (``InvalidRequest`` + ``none_serves``).
        Only the routes of the call's ``mode`` (chat or embedding, the catalogue's) are candidates."""
        call = self._start(
            request_id=request_id,
            account_id=account_id,
            model=model,
            body_json=body_json,
            deadline=deadline,
            constraints=constraints or Constraints(),
            streamed=False,
            mode=mode,
            prompt_tokens_estimate=prompt_tokens_estimate,
        )
        if serves is not None:
            call.candidates = [r for r in call.candidates if serves(r)]
            if not call.candidates:
                raise InvalidRequest(
                    f"The model '{model or call.body.get('model')}' is not served by any deployment {none_serves}."
                )
        try:
            while True:
                route = await call.next_route()
                attempt = call.begin(route)
                try:
                    result = await send(route, call.body, request_id, call.timeout_of(attempt))
                except RouterError as error:
                    call.failed(attempt, error)
                    continue
                except asyncio.CancelledError:
                    call.cancelled(attempt)
                    raise
                except Exception as exc:
                    call.failed(attempt, _adapter_bug(route, exc))
                    continue
                upstream_id = call.succeeded(attempt, result.usage, result.upstream_request_id)
                return replace(result, model=route.model, upstream_request_id=upstream_id)
        except RouterError as error:
            error.usage_unknown = call.usage_unknown()
            raise
        finally:
            await self._record(call)

    async def stream_complete(
        self,
        *,
        request_id: str,
        model: str,
        body_json: bytes,
        deadline: float | None = None,
        account_id: str = "",
        constraints: Constraints | None = None,
        prompt_tokens_estimate: int = 0,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Chunks, then one ``StreamEnded``; errors before the first chunk are raised before anything is yielded."""
        call = self._start(
            request_id=request_id,
            account_id=account_id,
            model=model,
            body_json=body_json,
            deadline=deadline,
            constraints=constraints or Constraints(),
            streamed=True,
            prompt_tokens_estimate=prompt_tokens_estimate,
        )
        try:
            while True:
                route = await call.next_route()
                attempt = call.begin(route)
                events = self._adapters[route.provider.kind].stream(
                    route, call.body, request_id=request_id, timeout=call.timeout_of(attempt)
                )
                # aclosing: a caller that goes away mid-stream closes the upstream response at once, not at GC.
                async with aclosing(events):
                    try:
                        first = await anext(events)
                    except StopAsyncIteration:
                        call.failed(attempt, _no_usage(route))
                        continue
                    except RouterError as error:
                        call.failed(attempt, error)  # nothing went to the caller yet: retry or fall back
                        continue
                    except asyncio.CancelledError:
                        call.cancelled(attempt)
                        raise
                    except Exception as exc:
                        call.failed(attempt, _adapter_bug(route, exc))
                        continue
                    attempt.ttft_ms = call.elapsed_ms(attempt)
                    # From here on the caller has output: an error ends the stream, never a retry.
                    try:
                        ended = False
                        if isinstance(first, bytes):
                            yield first
                            async for event in events:
                                if isinstance(event, bytes):
                                    yield event
                                else:
                                    first = event
                                    ended = True
                                    break
                        else:
                            ended = True
                        if not ended or isinstance(first, bytes):
                            raise _no_usage(route)
                        upstream_id = call.succeeded(attempt, first.usage, first.upstream_request_id)
                        await self._record(call)  # durable before the caller sees the end of its stream
                        yield replace(first, model=route.model, upstream_request_id=upstream_id)
                        return
                    except RouterError as error:
                        error.status = error.status or 200  # the stream had begun: the provider answered
                        call.failed(attempt, error, final=True)
                        raise
                    except (asyncio.CancelledError, GeneratorExit):
                        call.cancelled(attempt)
                        raise
                    except Exception as exc:
                        call.failed(attempt, _adapter_bug(route, exc), final=True)
                        raise AssertionError("unreachable") from exc
        except RouterError as error:
            error.usage_unknown = call.usage_unknown()
            raise
        finally:
            await self._record(call)

    async def probe(self) -> int:
        """One round of active health checks: a one-token call to every deployment whose breaker is closed or
        due for its half-open probe (open ones still cooling down are left alone); the result feeds the breaker.
        Each probe is an attempt like any other (account ``""``, request id ``probe_…``). Returns the count.
        Embedding deployments are not probed (the probe is a chat call): live calls alone feed their breakers."""
        due = [r for r in self.catalogue.routes() if r.mode == "chat" and self.breakers[r.name].available()]
        await asyncio.gather(*(self._probe_one(route) for route in due))
        return len(due)

    async def _probe_one(self, route: Route) -> None:
        if not self.breakers[route.name].allow():
            return
        call = _Call(
            self,
            f"probe_{uuid.uuid4().hex}",
            "",
            dict(_PROBE_BODY),
            Overrides(),
            [route],
            self._clock() + self._timeout,
            streamed=False,
        )
        attempt = call.begin(route)
        try:
            result = await self._adapters[route.provider.kind].complete(
                route, call.body, request_id=call.request_id, timeout=call.timeout_of(attempt)
            )
        except RouterError as error:
            with contextlib.suppress(RouterError):
                call.failed(attempt, error, final=True)
        except asyncio.CancelledError:
            call.cancelled(attempt)
            raise
        except Exception as exc:
            with contextlib.suppress(RouterError):
                call.failed(attempt, _adapter_bug(route, exc), final=True)
        else:
            call.succeeded(attempt, result.usage, result.upstream_request_id)
        finally:
            await self._record(call)

    async def _record(self, call: _Call) -> None:
        """Commit the call's attempts not yet recorded (once each)."""
        fresh, call.recorded = call.attempts[call.recorded :], len(call.attempts)
        if self._attempts is not None and fresh:
            await self._attempts.record(fresh)

    def list_models(self, constraints: Constraints | None = None) -> list[ModelEntry]:
        """The catalogue's models the constraints allow, each cut to its allowed deployments."""
        c = constraints or Constraints()
        listed = []
        for entry in self.catalogue.models():
            if not c.admits_model(entry.name):
                continue
            deployments = tuple(r for r in entry.deployments if c.admits(r))
            if deployments:
                listed.append(ModelEntry(entry.name, deployments, entry.owned_by, entry.aliases, entry.strategy))
        return listed


def _adapter_bug(route: Route, exc: Exception) -> UpstreamUnavailable:
    """An adapter raised something other than a RouterError: logged with its traceback, treated as an upstream
    error (so the attempt is recorded and a half-open breaker gets its verdict)."""
    log.error("adapter failed unexpectedly", exc_info=exc, extra={"provider": route.provider.name})
    return UpstreamUnavailable(f"The provider '{route.provider.name}' answered in a way the router cannot read.")


def _no_usage(route: Route) -> UpstreamUnavailable:
    return UpstreamUnavailable(f"The provider '{route.provider.name}' stream ended without usage.", status=200)


def _usage_unknown(error: RouterError) -> bool:
    """Whether the provider may have served an attempt that failed with ``error``: yes when it timed out without
    an answer or its 200 answer was refused, garbled or cut; no when it answered an error status, was never
    connected to, or the router refused the request before sending it."""
    if isinstance(error, UpstreamTimeout):
        return error.status in (0, 200)
    return error.status == 200 and not error.unreached


class _Call:
    """One request's walk over its candidates: which deployment next, how long to wait, what each attempt did."""

    def __init__(
        self,
        router: Router,
        request_id: str,
        account_id: str,
        body: dict[str, Any],
        overrides: Overrides,
        candidates: list[Route],
        deadline_at: float,
        streamed: bool,
    ) -> None:
        self.router = router
        self.request_id = request_id
        self.account_id = account_id
        self.body = body
        self.overrides = overrides
        self.candidates = candidates
        self.deadline_at = deadline_at
        self.streamed = streamed
        self.attempts: list[Attempt] = []
        #: How many of ``attempts`` were handed to the attempt log already.
        self.recorded = 0
        self._index = 0
        self._retry: tuple[Route, float] | None = None
        self._same_tries = 0
        self._last_error: RouterError | None = None
        self._started: dict[int, float] = {}
        self._finished: set[int] = set()
        #: The deadline is the caller's own (shorter than the router's ``request_timeout_seconds``).
        self.callers_deadline = False
        #: Per attempt number: its timeout, and whether the caller's deadline (not the deployment's) set it.
        self._timeouts: dict[int, tuple[float, bool]] = {}
        #: The caller's prompt token estimate (CompleteRequest.prompt_tokens_estimate), put on every attempt.
        self.prompt_tokens_estimate = 0

    def remaining(self) -> float:
        return self.deadline_at - self.router._clock()

    def timeout_of(self, attempt: Attempt) -> float:
        """The attempt's timeout: the deployment's own, or what is left of the request's deadline if less."""
        return self._timeouts[attempt.number][0]

    def _deadline_error(self) -> UpstreamTimeout:
        return UpstreamTimeout("The request's deadline passed before a provider answered.")

    async def next_route(self) -> Route:
        """The deployment to try next (after any backoff); raises the last error when none is left."""
        breakers = self.router.breakers
        if self.remaining() <= 0:
            raise self._deadline_error()
        if self._retry is not None:
            route, wait = self._retry
            self._retry = None
            if wait > 0:
                await asyncio.sleep(wait)
            if self.remaining() <= 0:
                raise self._deadline_error()
            if breakers[route.name].allow():
                return route
        self._same_tries = 0
        while self._index < len(self.candidates):
            route = self.candidates[self._index]
            self._index += 1
            if breakers[route.name].allow():
                return route
        if self._last_error is not None:
            raise self._last_error
        raise UpstreamUnavailable(
            "Every provider for this model is temporarily unavailable (circuit open); try again later."
        )

    def begin(self, route: Route) -> Attempt:
        """Start an attempt on ``route`` (whose breaker already let it through: it must end in one of
        :meth:`succeeded`, :meth:`failed` or :meth:`cancelled`, or a half-open breaker would wait forever)."""
        attempt = Attempt(
            request_id=self.request_id,
            account_id=self.account_id,
            number=len(self.attempts) + 1,
            model=route.model,
            route=route,
            streamed=self.streamed,
            started_at_unix_ms=now_ms(),
            prompt_tokens_estimate=self.prompt_tokens_estimate,
        )
        self.attempts.append(attempt)
        own = route.timeout_seconds or route.provider.timeout_seconds or self.router._timeout
        remaining = self.remaining()
        self._timeouts[attempt.number] = (max(0.001, min(own, remaining)), self.callers_deadline and remaining < own)
        self._started[attempt.number] = time.perf_counter()
        return attempt

    def elapsed_ms(self, attempt: Attempt) -> int:
        return int((time.perf_counter() - self._started[attempt.number]) * 1000)

    def _finish(self, attempt: Attempt, outcome: str) -> float:
        self._finished.add(attempt.number)
        seconds = time.perf_counter() - self._started[attempt.number]
        attempt.latency_ms = int(seconds * 1000)
        provider = attempt.route.provider.name
        mode = "stream" if self.streamed else "complete"
        UPSTREAM_CALLS.labels(provider, mode, outcome).inc()
        UPSTREAM_SECONDS.labels(provider, mode).observe(seconds)
        return seconds

    def succeeded(self, attempt: Attempt, usage: Usage, upstream_request_id: str) -> str:
        """Record a success; returns the upstream request id as passed on (cut to ``MAX_UPSTREAM_REQUEST_ID``)."""
        seconds = self._finish(attempt, "ok")
        attempt.outcome = outcome_of(None)
        attempt.http_status = 200
        attempt.usage = usage
        attempt.upstream_request_id = upstream_request_id[:MAX_UPSTREAM_REQUEST_ID]
        route = attempt.route
        self._breaker_result(route, True)
        self.router.latency.observe(route.name, attempt.ttft_ms / 1000 if self.streamed else seconds)
        UPSTREAM_TOKENS.labels(route.provider.name, "prompt").inc(usage.prompt_tokens)
        UPSTREAM_TOKENS.labels(route.provider.name, "completion").inc(usage.completion_tokens)
        return attempt.upstream_request_id

    def usage_unknown(self) -> bool:
        """Whether a provider may have served (and will bill) an attempt of this call whose usage is not known."""
        return any(a.usage_unknown for a in self.attempts)

    def cancelled(self, attempt: Attempt) -> None:
        if attempt.number in self._finished:
            return  # e.g. the caller left while the stream's end message was being sent: it already succeeded
        self._finish(attempt, "cancelled")
        attempt.outcome = outcome_of(None, cancelled=True)
        attempt.usage_unknown = True  # the request was sent: the provider may be serving it still
        self.router.breakers[attempt.route.name].release()

    def failed(self, attempt: Attempt, error: RouterError, *, final: bool = False) -> None:
        """Record a failed attempt, then decide: raise (no more tries) or set up the next one."""
        self._finish(attempt, error.reason)
        attempt.outcome = outcome_of(error)
        attempt.error_reason = error.reason
        attempt.http_status = error.status or (429 if isinstance(error, UpstreamRateLimited) else 0)
        attempt.usage_unknown = _usage_unknown(error)
        if isinstance(error, InvalidUsage):
            attempt.usage = error.usage  # the counts it reported validly
        route = attempt.route
        cut_by_caller = (
            isinstance(error, UpstreamTimeout) and error.status in (0, 200) and self._timeouts[attempt.number][1]
        )
        if counts_against_health(error) and not cut_by_caller:
            self._breaker_result(route, False)
        else:
            self.router.breakers[route.name].release()
        self._last_error = error
        settings = self.router.resilience
        if final or not (is_retryable(error) or isinstance(error, UpstreamAuthFailed)):
            raise error
        if len(self.attempts) >= settings.max_attempts:
            raise error
        remaining = self.remaining()
        if remaining <= 0:
            raise self._deadline_error() if not isinstance(error, UpstreamRateLimited) else error
        if is_retryable(error) and self._same_tries < settings.retries_per_deployment:
            wait = retry_wait(
                error,
                self._same_tries,
                remaining=remaining,
                base=settings.backoff_base_seconds,
                cap=settings.backoff_cap_seconds,
                rng=self.router._rng,
            )
            if wait is not None:
                self._same_tries += 1
                self._retry = (route, wait)
                return
        if self._index >= len(self.candidates):
            raise error

    def _breaker_result(self, route: Route, ok: bool) -> None:
        breaker = self.router.breakers[route.name]
        was = breaker.state
        breaker.record(ok)
        now = breaker.state
        if was != now:
            BREAKER_OPEN.labels(route.name).set(0 if now == "closed" else 1)
