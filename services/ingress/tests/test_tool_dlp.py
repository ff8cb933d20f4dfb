"""DLP sees tool-call arguments and tool definitions, not only message text (issue 13), on OpenAI chat, Anthropic
Messages and the Responses API; and a body nested deeper than ingress accepts is the client's 400 on every route,
before billing or the router hear of it."""

from __future__ import annotations

from typing import Any

import httpx2
import orjson
import pytest
from ingress_fakes import GOOD_KEY, Fakes, admin, auth
from tollgate.policy.v1 import policy_service_pb2 as ppb

EMAIL = "bob@example.com"
TOOL = {"type": "function", "function": {"name": "mail", "description": f"Writes to {EMAIL} only",
                                         "parameters": {"type": "object", "properties": {"to": {"type": "string"}}}}}
ANTHROPIC = {"x-api-key": GOOD_KEY, "anthropic-version": "2023-06-01"}


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": "send it"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "mail", "arguments": f'{{"to": "{EMAIL}"}}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sent"},
    ], "tools": [TOOL], **extra}


async def test_chat_tool_arguments_and_definitions_are_scanned_and_redacted(
    client: httpx2.AsyncClient, fakes: Fakes
) -> None:
    fakes.policy.rules[EMAIL] = ("email", ppb.ACTION_REDACT)
    resp = await client.post("/v1/chat/completions", json=_chat(), headers=auth())
    assert resp.status_code == 200, resp.text
    inspected = fakes.policy.inspected[-1]
    assert inspected[:2] == ["send it", "sent"]
    assert inspected[2] == f'{{"to": "{EMAIL}"}}' and EMAIL in inspected[3]
    sent = fakes.router.bodies[-1]
    assert EMAIL not in str(sent)
    assert sent["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"to": "[EMAIL_1]"}'
    assert sent["tools"][0]["function"]["description"] == "Writes to [EMAIL_1] only"
    assert sent["tools"][0]["function"]["parameters"] == TOOL["function"]["parameters"]  # type: ignore[index]


async def test_a_blocked_finding_in_a_tool_definition_blocks_the_request(
    client: httpx2.AsyncClient, fakes: Fakes
) -> None:
    fakes.policy.rules["sk-live-123"] = ("secret", ppb.ACTION_BLOCK)
    tool = {"type": "function", "function": {"name": "deploy", "parameters": {
        "type": "object", "properties": {"token": {"type": "string", "enum": ["sk-live-123"]}}}}}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "deploy"}], "tools": [tool]}
    resp = await client.post("/v1/chat/completions", json=body, headers=auth())
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"]["code"] == "policy_violation"
    assert fakes.router.bodies == []


async def test_anthropic_tool_use_input_and_tools_are_scanned(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    fakes.policy.rules[EMAIL] = ("email", ppb.ACTION_REDACT)
    body = {"model": "claude-3-5-haiku", "max_tokens": 16, "tools": [
        {"name": "mail", "description": f"Writes to {EMAIL}", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": "send it"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "tu_1", "name": "mail",
                                               "input": {"to": EMAIL}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": "sent"}]},
        ]}
    resp = await client.post("/v1/messages", json=body, headers=ANTHROPIC)
    assert resp.status_code == 200, resp.text
    assert sum(EMAIL in text for text in fakes.policy.inspected[-1]) == 2
    sent = fakes.router.bodies[-1]
    assert EMAIL not in str(sent)
    assert "[EMAIL_1]" in sent["messages"][1]["tool_calls"][0]["function"]["arguments"]


async def test_responses_function_calls_and_tools_are_scanned(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    fakes.policy.rules[EMAIL] = ("email", ppb.ACTION_BLOCK)
    for extra in (
        {"input": [{"role": "user", "content": "send it"},
                   {"type": "function_call", "call_id": "c1", "name": "mail", "arguments": f'{{"to":"{EMAIL}"}}'},
                   {"type": "function_call_output", "call_id": "c1", "output": "sent"}]},
        {"input": "send it", "tools": [{"type": "function", "name": "mail", "description": f"to {EMAIL}",
                                        "parameters": {"type": "object"}}]},
    ):
        resp = await client.post("/v1/responses", json={"model": "gpt-4o-mini", **extra}, headers=auth())
        assert resp.status_code == 403, resp.text
        assert resp.json()["error"]["code"] == "policy_violation"
    assert fakes.router.bodies == []


@pytest.mark.parametrize("arguments", [{"to": "x"}, 12, ["a"]])
async def test_tool_call_arguments_that_are_not_text_are_refused_not_left_unscanned(
    client: httpx2.AsyncClient, fakes: Fakes, arguments: object
) -> None:
    body = _chat()
    body["messages"][1]["tool_calls"][0]["function"]["arguments"] = arguments
    resp = await client.post("/v1/chat/completions", json=body, headers=auth())
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "messages[1].tool_calls[0].function.arguments"
    assert fakes.billing.authorize_calls == []


def _nested(depth: int) -> object:
    value: object = "deep"
    for _ in range(depth):
        value = [value]
    return value


def _with_nested(body: dict[str, Any], depth: int) -> bytes:
    """``body`` plus ``"extra_field": [[[…]]]`` ``depth`` levels deep, as bytes (json.dumps stops near 1,000)."""
    return orjson.dumps(body)[:-1] + b', "extra_field": ' + b"[" * depth + b"]" * depth + b"}"


ROUTES = [
    ("/v1/chat/completions", auth(), {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/messages", ANTHROPIC, {"model": "claude-3-5-haiku", "max_tokens": 8,
                                 "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/messages/count_tokens", ANTHROPIC, {"model": "claude-3-5-haiku",
                                              "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/responses", auth(), {"model": "gpt-4o-mini", "input": "hi"}),
    ("/v1/completions", auth(), {"model": "gpt-4o-mini", "prompt": "hi"}),
    ("/v1/embeddings", auth(), {"model": "text-embedding-3-small", "input": "hi"}),
    ("/admin/v1/accounts", admin(), {"name": "deep"}),
]


@pytest.mark.parametrize(("path", "headers", "body"), ROUTES, ids=[r[0] for r in ROUTES])
@pytest.mark.parametrize("depth", [300, 1000])
async def test_a_body_nested_too_deep_is_a_400_on_every_route(
    client: httpx2.AsyncClient, fakes: Fakes, path: str, headers: dict[str, str], body: dict[str, Any], depth: int
) -> None:
    """~1,000 levels in an extra field passed ingress and crashed the router's adapter (a 502 blaming the
    provider); 256+ made orjson fail when a translated body was written (500). Now 400, nothing downstream."""
    resp = await client.post(path, content=_with_nested(body, depth),
                             headers={**headers, "content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert "nests deeper than 128 levels" in resp.text
    assert fakes.billing.authorize_calls == [] and fakes.router.bodies == []


async def test_a_deep_but_reasonable_body_is_served(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "extra_field": _nested(100)}
    resp = await client.post("/v1/chat/completions", json=body, headers=auth())
    assert resp.status_code == 200, resp.text
    assert fakes.router.bodies[-1]["extra_field"] == body["extra_field"]
