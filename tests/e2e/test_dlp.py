"""DLP end to end: the real platform, the official openai SDK as the client, the mock upstream's record of every call
it served as the proof of what left. Policies are set through ingress's admin API."""

from __future__ import annotations

import openai
import pytest
from tollgate_dev.platform import Platform

from .tenant import NANOS, Tenant, mock_calls

pytestmark = pytest.mark.e2e

CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe.e2e@example-corp.com"
AWS_KEY = "AKIAZ7Q3RM5T2WXYV4PL"
PLANTED = (CARD, CARD.replace(" ", ""), EMAIL, AWS_KEY)
PROMPT = f"Please check my card {CARD}, mail me at {EMAIL}; the deploy key is {AWS_KEY} thanks."


def set_policy(platform: Platform, tenant: Tenant, action: str) -> None:
    rules = [{"detector": d, "action": action} for d in ("email", "payment_card", "secret")]
    platform.admin("PUT", f"/admin/v1/accounts/{tenant.account_id}/policy", {"rules": rules})


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
