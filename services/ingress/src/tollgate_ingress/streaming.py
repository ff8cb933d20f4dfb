"""A streamed chat completion: one router stream, consumed by its own task, so the upstream is drained and
billed even when the HTTP client goes away; the HTTP response reads the session's queue.

The queue is bounded (:data:`QUEUE_CHUNKS`): a client that reads slowly slows the router stream down (and through
it the upstream) instead of growing ingress's memory. When the client leaves, the queue is emptied and nothing more
is queued; the task keeps draining the router for the usage, which is billed as CLIENT_CANCELLED.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from .domain import Outcome, Usage
from .errors import IngressError, InternalError, ServiceUnavailable, UpstreamFailed, policy_violation
from .metrics import Metrics
from .policy_client import Inspection
from .response_scan import ResponseBlocked, StreamScanner
from .router_client import RouterClient, Served
from .tokens import PromptTokenCounter

if TYPE_CHECKING:
    from .chat import Prepared

__all__ = ["QUEUE_CHUNKS", "StreamEnded", "StreamFailed", "StreamItem", "StreamPump", "StreamSession"]

log = logging.getLogger(__name__)

#: Chunks (or coalesced writes) a stream may have waiting for its client; at least 2, so the disconnect marker
#: always fits beside a chunk the task was about to queue.
QUEUE_CHUNKS = 64


@dataclass(frozen=True, slots=True)
class StreamEnded:
    usage: Usage


@dataclass(frozen=True, slots=True)
class StreamFailed:
    error: IngressError


StreamItem = bytes | StreamEnded | StreamFailed


@dataclass(eq=False)
class StreamSession:
    """One stream between the task that drains the router and the HTTP response that reads :attr:`queue`."""

    prepared: Prepared
    queue: asyncio.Queue[StreamItem] = field(default_factory=lambda: asyncio.Queue(QUEUE_CHUNKS))
    client_gone: bool = False
    task: asyncio.Task[None] | None = None

    def client_disconnected(self) -> None:
        """Nobody reads any more: drop what waits (which also frees a task blocked on a full queue)."""
        self.client_gone = True
        while not self.queue.empty():
            self.queue.get_nowait()

    async def deliver(self, item: StreamItem) -> None:
        """Queue ``item`` for the client, waiting while the queue is full; nothing once the client is gone."""
        if not self.client_gone:
            await self.queue.put(item)


Inspector = Callable[[list[str], int], Awaitable[Inspection]]


class StreamPump:
    """Starts and runs the task of each stream, and waits for them at shutdown."""

    def __init__(self, router: RouterClient, counter: PromptTokenCounter, metrics: Metrics) -> None:
        self.router = router
        self.counter = counter
        self.metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, prepared: Prepared, inspect: Inspector | None) -> StreamSession:
        session = StreamSession(prepared)
        session.task = asyncio.create_task(self._run(session, inspect), name=f"stream-{prepared.request_id}")
        self._tasks.add(session.task)
        session.task.add_done_callback(self._tasks.discard)
        return session

    async def _run(self, session: StreamSession, inspect: Inspector | None) -> None:
        prepared = session.prepared
        settlement = prepared.settlement
        end: Served | None = None
        delivered: list[bytes] = []  # chunks already sent on: billed by estimate if the stream breaks after them
        scanner = StreamScanner(inspect) if inspect is not None else None
        stopped = False  # the policy stopped the answer: keep draining (and billing) the upstream, send nothing more
        self.metrics.streams_in_flight.inc()
        try:
            async for part in self.router.stream(prepared.route()):
                if isinstance(part, Served):
                    end = part
                    continue
                delivered.append(part)
                if stopped or session.client_gone:
                    continue  # nobody to send it to: drained for the usage only, no policy call
                if scanner is None:
                    await session.deliver(part)
                else:
                    stopped = not await self._forward(session, scanner.feed(part))
            if scanner is not None and not stopped and not session.client_gone:
                stopped = not await self._forward(session, scanner.finish())
        except IngressError as exc:
            estimate = self._estimate(prepared, delivered)
            if estimate is None:  # nothing reached the client: zero usage, or the prompt if a provider may bill it
                settlement.close_failed(exc, prepared.prompt_tokens)
            else:
                settlement.close(Outcome.FAILED, estimate)
            await session.deliver(StreamFailed(exc))
        except asyncio.CancelledError:
            settlement.close(
                Outcome.CLIENT_CANCELLED if session.client_gone else Outcome.FAILED,
                self._estimate(prepared, delivered),
            )
            if not session.queue.full():
                session.queue.put_nowait(
                    StreamFailed(ServiceUnavailable("the server is shutting down", code="shutting_down"))
                )
            raise
        except Exception:
            log.exception("router stream failed unexpectedly")
            settlement.close(Outcome.FAILED, self._estimate(prepared, delivered))
            await session.deliver(StreamFailed(InternalError("internal error while streaming")))
        else:
            if end is None:
                # The router promises a last `end` message; without one, bill what was delivered, by estimate.
                settlement.close(Outcome.FAILED, self._estimate(prepared, delivered))
                await session.deliver(StreamFailed(UpstreamFailed("the upstream stream ended without usage")))
                return
            settlement.close(
                Outcome.CLIENT_CANCELLED if session.client_gone else Outcome.SUCCEEDED,
                end.usage,
                provider=end.provider,
                upstream_model=end.upstream_model,
                upstream_request_id=end.upstream_request_id,
                model=end.model,
            )
            if not stopped:
                await session.deliver(StreamEnded(end.usage))
        finally:
            self.metrics.streams_in_flight.dec()
            prepared.release()

    async def _forward(self, session: StreamSession, scanned: Awaitable[list[bytes]]) -> bool:
        """Queue what the scanner lets through; False (after queueing the error) when the policy stops the answer
        or cannot be asked — failing closed: unscanned text never reaches the caller."""
        try:
            chunks = await scanned
        except ResponseBlocked as blocked:
            await session.deliver(StreamFailed(policy_violation("response", blocked.kinds)))
            return False
        except IngressError as exc:
            await session.deliver(StreamFailed(exc))
            return False
        for chunk in chunks:
            await session.deliver(chunk)
        return True

    def _estimate(self, prepared: Prepared, delivered: list[bytes]) -> Usage | None:
        """Usage for a stream that broke after output reached the client: the upstream served (and will charge
        for) the prompt and those tokens, so they are billed — counted with the same tokenizer as the hold. None
        (nothing billed) when no chunk was delivered."""
        if not delivered:
            return None
        text: list[str] = []
        for raw in delivered:
            try:
                chunk = orjson.loads(raw)
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if isinstance(delta.get("content"), str):
                        text.append(delta["content"])
                    for call in delta.get("tool_calls") or ():
                        text.append(orjson.dumps(call.get("function") or {}).decode())
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                continue
        completion = self.counter.text("".join(text))
        return Usage(
            prompt_tokens=prepared.prompt_tokens,
            completion_tokens=completion,
            total_tokens=prepared.prompt_tokens + completion,
        )

    async def drain(self, timeout: float) -> None:
        """Shutdown: let router streams (including those whose client left) finish and bill, then cut the rest."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
