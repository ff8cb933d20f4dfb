"""A stream's own task (streaming.py): bounded memory for a slow reader, billing when the reader leaves."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from ingress_fakes import GOOD_KEY, Fakes, usage_event
from tollgate.events.v1 import usage_pb2
from tollgate_ingress.domain import parse_chat_request
from tollgate_ingress.streaming import QUEUE_CHUNKS, StreamEnded, StreamSession


async def _open(app: Any, fakes: Fakes, request_id: str, chunks: int) -> StreamSession:
    fakes.router.pieces = [f"w{i} " for i in range(chunks)]
    svc = app.state.services
    request = parse_chat_request(orjson.dumps(
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "count"}]}))
    return svc.chat.stream(await svc.chat.prepare(GOOD_KEY, request_id, request))


async def _until(condition: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)


async def test_a_reader_that_does_not_read_holds_back_the_stream_not_memory(app: Any, fakes: Fakes,
                                                                            broker: str) -> None:
    total = QUEUE_CHUNKS * 4
    session = await _open(app, fakes, "req_slow_reader", total)
    await _until(session.queue.full)
    await asyncio.sleep(0.3)
    assert session.queue.qsize() == QUEUE_CHUNKS and session.task is not None and not session.task.done()
    received: list[bytes] = []
    while True:
        item = await asyncio.wait_for(session.queue.get(), 20)
        if isinstance(item, StreamEnded):
            break
        assert isinstance(item, bytes)
        received.append(item)
    assert len(received) == total  # nothing lost to the bound
    _env, event, _key = await usage_event(broker, "req_slow_reader")
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_SUCCEEDED


async def test_a_reader_that_leaves_a_full_queue_is_still_billed(app: Any, fakes: Fakes, broker: str) -> None:
    session = await _open(app, fakes, "req_left_full", QUEUE_CHUNKS * 4)
    await _until(session.queue.full)
    session.client_disconnected()
    assert session.task is not None
    await asyncio.wait_for(session.task, 20)  # drains the router without anyone reading
    _env, event, _key = await usage_event(broker, "req_left_full")
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_CLIENT_CANCELLED
    assert event.usage.completion_tokens == fakes.router.usage.completion_tokens
