"""DLP end to end: the real platform, the official openai SDK as the client, the mock upstream's record of every call
it served as the proof of what left. Policies are set through ingress's admin API."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from tollgate.events.v1 import policy_pb2
from tollgate_common.events import Envelope, Topics
from tollgate_common.kafka import replay_topics
from tollgate_dev.mock_upstream import DEFAULT_REPLY
from tollgate_dev.platform import Platform

from .tenant import NANOS, Tenant, mock_calls, resale_price

pytestmark = pytest.mark.e2e

CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe.e2e@example-corp.com"
AWS_KEY = "AKIAZ7Q3RM5T2WXYV4PL"
PLANTED = (CARD, CARD.replace(" ", ""), EMAIL, AWS_KEY)
PROMPT = f"Please check my card {CARD}, mail me at {EMAIL}; the deploy key is {AWS_KEY} thanks."


def set_policy(platform: Platform, tenant: Tenant, action: str) -> None:
    rules = [{"detector": d, "action": action} for d in ("email", "payment_card", "secret")]
    platform.admin("PUT", f"/admin/v1/accounts/{tenant.account_id}/policy", {"rules": rules})


def policy_decisions(
    platform: Platform, event_ids: set[str], timeout: float = 30.0
) -> dict[str, policy_pb2.PolicyDecided]:
    """The PolicyDecided events with these ids, read from the beginning of tollgate.policy.v1 (a bounded wait)."""
    found: dict[str, policy_pb2.PolicyDecided] = {}

    async def collect(items: list[tuple[Envelope, object]]) -> None:
        for env, _record in items:
            if env.id in event_ids:
                message = env.message()
                assert isinstance(message, policy_pb2.PolicyDecided)
                found[env.id] = message

    deadline = time.monotonic() + timeout
    while True:
        asyncio.run(replay_topics(platform.bootstrap, [Topics.POLICY], collect))
        if event_ids <= found.keys() or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_redact_policy_keeps_planted_data_from_the_upstream(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    set_policy(platform, tenant, "redact")
    client = tenant.client()
    before = len(mock_calls(platform))

    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
    assert reply.choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "system", "content": f"Reply to {EMAIL}."}, {"role": "user", "content": PROMPT}],
            stream=True,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    served = mock_calls(platform)[before:]
    assert len(served) == 2, served
    for call in served:
        sent = str(call["body"])
        leaked = [p for p in PLANTED if p in sent]
        assert not leaked, f"planted data reached the upstream: {len(leaked)} value(s)"
        assert "[PAYMENT_CARD_1]" in sent and "[EMAIL_1]" in sent and "[SECRET_1]" in sent
    assert served[1]["body"]["stream"] is True  # type: ignore[index]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_block_policy_never_calls_the_upstream_and_charges_nothing(platform: Platform, stream: bool) -> None:
    tenant = Tenant.create(platform)
    set_policy(platform, tenant, "block")
    before = len(mock_calls(platform))

    with pytest.raises(openai.PermissionDeniedError) as err:
        tenant.client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}], stream=stream
        )
    assert err.value.status_code == 403 and err.value.code == "policy_violation"
    body = str(err.value.body)
    assert not [p for p in PLANTED if p in body], "the error must name the types, never the data"
    assert "payment_card" in body and "secret" in body

    assert len(mock_calls(platform)) == before, "the upstream must never be called"
    after = tenant.settle()
    assert after["balance_nanos"] == 10 * NANOS and after["held_nanos"] == 0
    kinds = {str(e["kind"]) for e in tenant.ledger()}
    assert kinds == {"credit_purchase"}, f"a blocked request must not be charged: {kinds}"


def test_model_allow_list_blocks_other_models_lists_only_allowed_ones_and_is_audited(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    client = tenant.client()
    others = sorted(m.id for m in client.models.list() if m.id != "gpt-4o-mini")
    assert others, "the catalogue needs a second model for this test"
    platform.admin(
        "PUT", f"/admin/v1/accounts/{tenant.account_id}/policy", {"routing": {"allowed_models": ["gpt-4o-mini"]}}
    )
    before = len(mock_calls(platform))

    with pytest.raises(openai.PermissionDeniedError) as err:
        client.chat.completions.create(model=others[0], messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "policy_violation" and "model_not_allowed" in str(err.value.body)
    assert len(mock_calls(platform)) == before, "the upstream must never be called"
    blocked_id = err.value.response.headers["x-request-id"]

    reply = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"write to {EMAIL}"}]
    )
    allowed_id = reply.headers["x-request-id"]
    assert len(mock_calls(platform)) == before + 1

    # /v1/models lists what a key may use (asked with a second key: the first one's listing is cached per key).
    other_key = str(platform.admin("POST", f"/admin/v1/accounts/{tenant.account_id}/keys", {"label": "two"})["key"])
    listed = httpx.get(f"{platform.ingress_url}/v1/models", headers={"Authorization": f"Bearer {other_key}"})
    assert listed.status_code == 200
    assert {m["id"] for m in listed.json()["data"]} == {"gpt-4o-mini"}

    # Every decision is audited on tollgate.policy.v1, without the data.
    events = policy_decisions(platform, {f"{blocked_id}:request", f"{allowed_id}:request"})
    blocked, allowed = events[f"{blocked_id}:request"], events[f"{allowed_id}:request"]
    assert blocked.verdict == policy_pb2.POLICY_VERDICT_BLOCK and blocked.rule == "model_not_allowed"
    assert blocked.account_id == tenant.account_id and blocked.model == others[0]
    assert allowed.verdict != policy_pb2.POLICY_VERDICT_BLOCK
    assert [f.type for f in allowed.findings] == ["email"] and allowed.findings[0].count == 1
    assert EMAIL not in str(allowed) and all(EMAIL not in h for h in allowed.findings[0].match_hashes)


def set_codename_policy(platform: Platform, tenant: Tenant, action: str) -> None:
    """A custom keyword detector that matches the mock upstream's fixed reply (never the prompt)."""
    document = {
        "custom_detectors": [{"name": "custom:codename", "keywords": ["Tollgate mock upstream"]}],
        "rules": {"custom:codename": action},
    }
    platform.admin("PUT", f"/admin/v1/accounts/{tenant.account_id}/policy", document)


def charged_for(platform: Platform, served: list[dict[str, object]]) -> int:
    return sum(
        resale_price(platform, "gpt-4o-mini", int(c["usage"]["prompt_tokens"]), int(c["usage"]["completion_tokens"]))  # type: ignore[index]
        for c in served
    )


def test_answers_are_redacted_whole_and_streamed_and_still_charged_once(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    set_codename_policy(platform, tenant, "redact")
    client = tenant.client()
    before = len(mock_calls(platform))
    expected = DEFAULT_REPLY.replace("Tollgate mock upstream", "[CODENAME_1]")
    assert expected != DEFAULT_REPLY

    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "say hi"}])
    assert reply.choices[0].message.content == expected
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "say hi"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected

    served = mock_calls(platform)[before:]
    assert len(served) == 2, served
    after = tenant.settle()
    assert after["balance_nanos"] == 10 * NANOS - charged_for(platform, served) < 10 * NANOS


def test_a_blocked_answer_is_refused_but_still_charged(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    set_codename_policy(platform, tenant, "block")
    before = len(mock_calls(platform))

    with pytest.raises(openai.PermissionDeniedError) as err:
        tenant.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "policy_violation" and "custom:codename" in str(err.value.body)
    assert "Tollgate mock upstream" not in str(err.value.body)

    served = mock_calls(platform)[before:]
    assert len(served) == 1, "the answer was served upstream, so it is billed"
    after = tenant.settle()
    assert after["balance_nanos"] == 10 * NANOS - charged_for(platform, served) < 10 * NANOS


def test_tool_call_arguments_and_tool_definitions_are_redacted_on_all_three_wire_formats(platform: Platform) -> None:
    """Issue 13: DLP scanned only message text. Planted data in a tool call's arguments and in a tool definition,
    sent with the official OpenAI SDK (chat and Responses) and Anthropic SDK, reaches the upstream redacted."""
    import anthropic

    tenant = Tenant.create(platform)
    set_policy(platform, tenant, "redact")
    client = tenant.client()
    before = len(mock_calls(platform))
    parameters = {"type": "object", "properties": {"to": {"type": "string"}}}
    tool = {"type": "function", "function": {"name": "mail", "description": f"Only ever writes to {EMAIL}",
                                             "parameters": parameters}}
    client.chat.completions.create(model="gpt-4o-mini", tools=[tool], messages=[  # type: ignore[list-item]
        {"role": "user", "content": "send the card"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "mail", "arguments": f'{{"card": "{CARD}", "key": "{AWS_KEY}"}}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sent"},
    ])
    client.responses.create(model="gpt-4o-mini", tools=[{  # type: ignore[list-item]
        "type": "function", "name": "mail", "description": f"writes to {EMAIL}", "parameters": {"type": "object"}}],
        input=[{"role": "user", "content": "send it"},
               {"type": "function_call", "call_id": "c1", "name": "mail", "arguments": f'{{"card": "{CARD}"}}'},
               {"type": "function_call_output", "call_id": "c1", "output": "sent"}])
    claude = anthropic.Anthropic(base_url=platform.ingress_url, api_key=tenant.api_key, max_retries=0, timeout=30)
    claude.messages.create(model="claude-3-5-haiku", max_tokens=16, tools=[{
        "name": "mail", "description": f"writes to {EMAIL}", "input_schema": {"type": "object"}}],
        messages=[{"role": "user", "content": "send it"},
                  {"role": "assistant", "content": [{"type": "tool_use", "id": "tu_1", "name": "mail",
                                                     "input": {"key": AWS_KEY}}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": "ok"}]}])
    served = mock_calls(platform)[before:]
    assert len(served) == 3, served
    for call in served:
        sent = str(call["body"])
        leaked = [p for p in PLANTED if p in sent]
        assert not leaked, f"planted data reached the upstream: {len(leaked)} value(s)"
        assert "[EMAIL_1]" in sent
