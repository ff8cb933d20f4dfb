"""Admission before any work (admission.py): the key checked before the body is read, remembered (refusals too),
failed credentials throttled per peer, each key's concurrent requests and streams capped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from ingress_fakes import ADMIN_TOKEN, GOOD_KEY, Fakes, admin, auth, make_settings, usage_event
from tollgate_ingress.api import create_app
from tollgate_ingress.deps import Deps
from tollgate_ingress.domain import parse_chat_request

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def limited(fakes: Fakes, broker: str, tmp_path: Path) -> AsyncIterator[tuple[Any, httpx2.AsyncClient]]:
    settings = make_settings(fakes, broker, tmp_path, auth_failures_per_minute=3,
                             max_concurrent_requests_per_key=2, max_concurrent_streams_per_key=1)
    app = create_app(settings, await Deps.start(settings))
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://ingress") as c:
        yield app, c
    await app.state.services.shutdown(grace=5)


class WatchedBody:
    """A request body that records whether anyone started reading it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.read = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.read = True
        yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        yield b"x" * self.size
        yield b'"}]}'


@pytest.mark.parametrize("path", [CHAT, "/v1/responses", "/v1/embeddings", "/v1/completions", "/v1/messages"])
async def test_an_unknown_key_is_refused_before_its_body_is_read(
    client: httpx2.AsyncClient, fakes: Fakes, path: str
) -> None:
    body = WatchedBody(4 * 1024 * 1024)
    headers = {**auth("tg-unknown"), "x-api-key": "tg-unknown", "content-type": "application/json"}
    resp = await client.post(path, content=body, headers=headers)
    assert resp.status_code == 401
    assert not body.read
    assert fakes.billing.authorize_calls == []


async def test_key_verdicts_are_remembered_refusals_too(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    for _ in range(3):
        assert (await client.post(CHAT, json=BODY, headers=auth())).status_code == 200
        assert (await client.post(CHAT, json=BODY, headers=auth("tg-unknown"))).status_code == 401
    assert fakes.billing.key_info_calls == 2  # one look-up per key, not per request
    assert len(fakes.billing.authorize_calls) == 3


async def test_a_key_revoked_since_it_was_remembered_is_refused_by_authorize_then_remembered(
    client: httpx2.AsyncClient, fakes: Fakes
) -> None:
    assert (await client.post(CHAT, json=BODY, headers=auth())).status_code == 200
    del fakes.billing.keys[GOOD_KEY]
    assert (await client.post(CHAT, json=BODY, headers=auth())).status_code == 401
    calls = len(fakes.billing.authorize_calls)
    assert (await client.post(CHAT, json=BODY, headers=auth())).status_code == 401
    assert len(fakes.billing.authorize_calls) == calls  # refused at the gate now


async def test_a_peer_sending_failed_keys_is_throttled_its_good_key_still_served(
    limited: tuple[Any, httpx2.AsyncClient], fakes: Fakes
) -> None:
    _app, client = limited
    assert (await client.post(CHAT, json=BODY, headers=auth())).status_code == 200
    statuses = [(await client.post(CHAT, json=BODY, headers=auth(f"tg-guess-{i}"))).status_code for i in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    repeated = await client.post(CHAT, json=BODY, headers=auth("tg-guess-0"))
    assert repeated.status_code == 429 and int(repeated.headers["retry-after"]) >= 1
    assert repeated.json()["error"]["code"] == "too_many_auth_failures"
    assert fakes.billing.key_info_calls == 1 + 3  # the throttled guesses never reached billing
    assert (await client.post(CHAT, json=BODY, headers=auth())).status_code == 200


async def test_a_peer_sending_wrong_admin_tokens_is_throttled(limited: tuple[Any, httpx2.AsyncClient]) -> None:
    _app, client = limited
    wrong = {"Authorization": "Bearer " + "tga-wrong-" + "y" * 20}
    statuses = [(await client.get("/admin/v1/accounts/a/balance", headers=wrong)).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    # Within the window even the right token waits: a guesser cannot tell which of its guesses was right.
    assert (await client.get("/admin/v1/accounts/a/balance", headers=admin())).status_code == 429
    assert ADMIN_TOKEN in admin()["Authorization"]


async def test_concurrent_streams_and_requests_per_key_are_capped(
    limited: tuple[Any, httpx2.AsyncClient], fakes: Fakes, broker: str
) -> None:
    app, client = limited
    svc = app.state.services
    fakes.router.gate = asyncio.Event()  # the stream stops after its first chunk until the gate opens
    stream = parse_chat_request(orjson.dumps({**BODY, "stream": True}))
    session = svc.chat.stream(await svc.chat.prepare(GOOD_KEY, "req_capped_stream", stream))
    second = await client.post(CHAT, json={**BODY, "stream": True}, headers=auth())
    assert second.status_code == 429 and second.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert (await client.post(CHAT, json=BODY, headers=auth())).status_code == 200  # 1 stream + 1 request ≤ 2
    held = await svc.chat.prepare(GOOD_KEY, "req_capped_hold", parse_chat_request(orjson.dumps(BODY)))
    assert (await client.post(CHAT, json=BODY, headers=auth())).status_code == 429  # 2 in flight
    await svc.chat.complete(held)
    fakes.router.gate.set()
    assert session.task is not None
    await asyncio.wait_for(session.task, 20)
    assert svc.chat.limits.in_flight(GOOD_KEY) == (0, 0)  # every place given back
    assert (await client.post(CHAT, json={**BODY, "stream": True}, headers=auth())).status_code == 200
    await usage_event(broker, "req_capped_stream")


async def test_embeddings_give_their_place_back(limited: tuple[Any, httpx2.AsyncClient]) -> None:
    app, client = limited
    for _ in range(3):  # more than the cap of 2: a place kept would refuse the third
        reply = await client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "hi"},
                                  headers=auth())
        assert reply.status_code == 200
    assert app.state.services.chat.limits.in_flight(GOOD_KEY) == (0, 0)
