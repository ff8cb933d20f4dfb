"""Inspect, SetPolicy and GetPolicy through a real gRPC server on a free port, as ingress and operators call them."""

from __future__ import annotations

import json
import logging

import grpc
import pytest
from tollgate.policy.v1 import policy_service_pb2 as pb
from tollgate.policy.v1 import policy_service_pb2_grpc as pb_grpc
from tollgate_common.grpc import error_reason, wait_for_health
from tollgate_common.logs import JsonFormatter
from tollgate_dlp.detectors import DETECTORS
from tollgate_policy import PolicyApp

CARD = "4111 1111 1111 1111"
SECRET = "sk-" + "proj-" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3z"
EMAIL = "carol@example.com"


def rules(policy: pb.PolicySet) -> dict[str, int]:
    return {rule.detector: rule.action for rule in policy.rules}


async def inspect(stub: pb_grpc.PolicyServiceStub, *texts: str, account: str = "acc_1") -> pb.InspectResponse:
    return await stub.Inspect(pb.InspectRequest(request_id="req_1", account_id=account, texts=list(texts)))


async def test_health_reports_serving(app: PolicyApp) -> None:
    await wait_for_health(app.address, service="tollgate.policy.v1.PolicyService", timeout=5)


async def test_get_policy_of_a_new_account_is_the_default_at_version_0(stub: pb_grpc.PolicyServiceStub) -> None:
    reply = await stub.GetPolicy(pb.GetPolicyRequest(account_id="acc_new"))
    assert reply.policy.account_id == "acc_new" and reply.policy.version == 0
    effective = rules(reply.policy)
    assert set(effective) == set(DETECTORS)
    assert (effective["email"], effective["payment_card"], effective["secret"]) == (
        pb.ACTION_ALLOW,
        pb.ACTION_REDACT,
        pb.ACTION_REDACT,
    )
    assert {r.source for r in reply.policy.rules} == {"default"}


async def test_inspect_redacts_with_placeholders_and_reports_every_finding(stub: pb_grpc.PolicyServiceStub) -> None:
    texts = [f"pay with {CARD}", f"key {SECRET} and mail {EMAIL}", f"same card {CARD.replace(' ', '')}"]
    reply = await inspect(stub, *texts)
    assert reply.verdict == pb.VERDICT_REDACT and reply.policy_version == 0
    assert list(reply.redacted_texts) == [
        "pay with [PAYMENT_CARD_1]",
        f"key [SECRET_1] and mail {EMAIL}",
        "same card [PAYMENT_CARD_1]",
    ]
    spans = [(f.type, texts[f.text_index][f.start : f.end], f.action, f.detector_version) for f in reply.findings]
    assert spans == [
        ("payment_card", CARD, pb.ACTION_REDACT, DETECTORS["payment_card"].version),
        ("secret", SECRET, pb.ACTION_REDACT, DETECTORS["secret"].version),
        ("email", EMAIL, pb.ACTION_ALLOW, DETECTORS["email"].version),
        ("payment_card", CARD.replace(" ", ""), pb.ACTION_REDACT, DETECTORS["payment_card"].version),
    ]


async def test_a_clean_prompt_is_allowed_with_nothing_to_rewrite(stub: pb_grpc.PolicyServiceStub) -> None:
    reply = await inspect(stub, "Order 4111111111111112 was late; version 1.2.3.")
    assert reply.verdict == pb.VERDICT_ALLOW
    assert not reply.findings and not reply.redacted_texts


async def test_set_policy_bumps_the_version_and_inspect_applies_it(stub: pb_grpc.PolicyServiceStub) -> None:
    first = await stub.SetPolicy(
        pb.SetPolicyRequest(account_id="acc_1", rules=[pb.PolicyRule(detector="secret", action=pb.ACTION_BLOCK)])
    )
    assert first.policy.version == 1
    assert rules(first.policy)["secret"] == pb.ACTION_BLOCK
    assert rules(first.policy)["payment_card"] == pb.ACTION_REDACT  # not named: keeps its default

    blocked = await inspect(stub, f"key {SECRET} card {CARD}")
    assert (blocked.verdict, blocked.policy_version) == (pb.VERDICT_BLOCK, 1)
    assert not blocked.redacted_texts
    assert [f.action for f in blocked.findings] == [pb.ACTION_BLOCK, pb.ACTION_REDACT]

    second = await stub.SetPolicy(
        pb.SetPolicyRequest(account_id="acc_1", rules=[pb.PolicyRule(detector="email", action=pb.ACTION_REDACT)])
    )
    assert second.policy.version == 2
    current = await stub.GetPolicy(pb.GetPolicyRequest(account_id="acc_1"))
    assert current.policy == second.policy
    reply = await inspect(stub, f"mail {EMAIL}, key {SECRET}")
    assert (reply.verdict, reply.policy_version) == (pb.VERDICT_REDACT, 2)
    assert list(reply.redacted_texts) == ["mail [EMAIL_1], key [SECRET_1]"]
    other = await inspect(stub, f"key {SECRET}", account="acc_2")
    assert (other.verdict, other.policy_version) == (pb.VERDICT_REDACT, 0)  # policies are per account


@pytest.mark.parametrize(
    ("request_rules", "account", "reason"),
    [
        ([pb.PolicyRule(detector="passport", action=pb.ACTION_BLOCK)], "acc_1", "unknown_detector"),
        ([pb.PolicyRule(detector="email", action=pb.ACTION_UNSPECIFIED)], "acc_1", "invalid_rule"),
        ([pb.PolicyRule(detector="email")], "acc_1", "invalid_rule"),
        (
            [pb.PolicyRule(detector="email", action=pb.ACTION_BLOCK)] * 2,
            "acc_1",
            "invalid_rule",
        ),
        ([pb.PolicyRule(detector="email", action=pb.ACTION_BLOCK)], "", "invalid_argument"),
    ],
)
async def test_bad_set_policy_is_invalid_argument_and_changes_nothing(
    stub: pb_grpc.PolicyServiceStub, request_rules: list[pb.PolicyRule], account: str, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SetPolicy(pb.SetPolicyRequest(account_id=account, rules=request_rules))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value) == reason
    current = await stub.GetPolicy(pb.GetPolicyRequest(account_id="acc_1"))
    assert current.policy.version == 0


async def test_inspect_and_get_policy_without_an_account_are_invalid_argument(
    stub: pb_grpc.PolicyServiceStub,
) -> None:
    for call in (inspect(stub, f"card {CARD}", account=""), stub.GetPolicy(pb.GetPolicyRequest(account_id=""))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert CARD not in (caught.value.details() or "")


async def test_no_card_or_secret_reaches_the_logs_or_the_reply(
    stub: pb_grpc.PolicyServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    digits = CARD.replace(" ", "")
    texts = [f"card {CARD} and {digits}", f"key {SECRET}", "fine"]
    replies = [await inspect(stub, *texts)]  # REDACT
    await stub.SetPolicy(
        pb.SetPolicyRequest(account_id="acc_1", rules=[pb.PolicyRule(detector="secret", action=pb.ACTION_BLOCK)])
    )
    replies.append(await inspect(stub, *texts))  # BLOCK, logged at INFO
    with pytest.raises(grpc.aio.AioRpcError):
        await inspect(stub, *texts, account="")  # an error path

    inspected = [r for r in caplog.records if r.getMessage() == "inspected"]
    assert [getattr(r, "verdict", None) for r in inspected] == ["redact", "block"]  # the logs did say something
    formatter = JsonFormatter("policy")
    logged = caplog.text + "\n".join(formatter.format(r) for r in caplog.records)
    assert json.loads(formatter.format(inspected[1]))["findings"] == {"payment_card": 2, "secret": 1}
    for planted in (CARD, digits, SECRET, SECRET[:12]):
        assert planted not in logged
        for reply in replies:
            assert planted.encode() not in reply.SerializeToString()


async def test_an_unexpected_failure_is_internal_and_its_message_is_not_logged(
    app: PolicyApp, stub: pb_grpc.PolicyServiceStub, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(request_id: str, account_id: str, texts: list[str], **context: object) -> None:
        raise RuntimeError(f"a bug that quotes its input: {texts[0]}")

    assert app.service is not None
    monkeypatch.setattr(app.service, "inspect", broken)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await inspect(stub, f"card {CARD}")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert error_reason(caught.value) == "internal"
    assert CARD not in (caught.value.details() or "")
    errors = [r for r in caplog.records if r.getMessage() == "unexpected error"]
    assert [getattr(r, "error_type", None) for r in errors] == ["RuntimeError"]
    formatter = JsonFormatter("policy")
    assert CARD not in caplog.text + "\n".join(formatter.format(r) for r in caplog.records)
