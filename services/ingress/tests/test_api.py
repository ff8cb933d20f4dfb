"""The app's edge (api.py): the trace a request joins, the request id every answer carries."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx2
import pytest
from ingress_fakes import Fakes, admin, auth
from tollgate_ingress.api import create_app
from tollgate_ingress.config import Settings
from tollgate_ingress.deps import Deps

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
W3C = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]")


@pytest.fixture
async def traced(settings: Settings) -> AsyncIterator[httpx2.AsyncClient]:
    """The app as ``__main__`` runs it: instrumented (without a collector: the traceparent is carried on)."""
    app = create_app(settings, await Deps.start(settings))
    app.instrument()
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://ingress") as c:
        yield c
    await app.state.services.shutdown(grace=5)


async def test_a_valid_client_traceparent_is_continued_into_the_services(traced: httpx2.AsyncClient,
                                                                         fakes: Fakes) -> None:
    resp = await traced.post(CHAT, json=BODY, headers={**auth(), "traceparent": f"00-{TRACE}-{SPAN}-01"})
    assert resp.status_code == 200
    assert fakes.billing.traceparents[-1].split("-")[1] == TRACE


@pytest.mark.parametrize("header", [
    f"00-{TRACE}-{SPAN}-ff",  # flags beyond sampled
    f"cc-{TRACE}-{SPAN}-01-extra",  # an unknown version with trailing text
    f" 00-{TRACE}-{SPAN}-01 ",
    f"00-{TRACE.upper()}-{SPAN}-01",
    f"00-{'0' * 32}-{SPAN}-01",
    "garbage",
])
async def test_an_invalid_client_traceparent_starts_a_new_trace(traced: httpx2.AsyncClient, fakes: Fakes,
                                                                 header: str) -> None:
    resp = await traced.post(CHAT, json=BODY, headers={**auth(), "traceparent": header, "tracestate": "k=v"})
    assert resp.status_code == 200
    sent = fakes.billing.traceparents[-1]
    assert W3C.fullmatch(sent), sent
    assert TRACE not in sent


@pytest.mark.parametrize(("method", "path", "headers"), [
    ("POST", CHAT, auth()), ("POST", CHAT, {}), ("GET", "/nope", {}), ("DELETE", CHAT, {}), ("GET", "/healthz", {}),
    ("GET", "/openapi.json", {}), ("GET", "/v1/models", auth()), ("GET", "/admin/v1/accounts/a/balance", admin()),
    ("POST", "/v1/messages", {}), ("HEAD", "/healthz", {}),
])
async def test_every_answer_carries_a_request_id(client: httpx2.AsyncClient, method: str, path: str,
                                                 headers: dict[str, str]) -> None:
    resp = await client.request(method, path, headers=headers, json=BODY if method == "POST" else None)
    assert resp.headers["x-request-id"].startswith("req_")
