"""Response scanning is the policy's call (InspectResponse.scan_responses); a routing-only Inspect is not audited."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate.policy.v1 import policy_service_pb2 as pb
from tollgate.policy.v1 import policy_service_pb2_grpc as pb_grpc
from tollgate_common.db import create_engine
from tollgate_dlp.detectors import DETECTORS
from tollgate_dlp.domain import Action, PolicySet, inspect, parse_scope_document
from tollgate_dlp.errors import InvalidArgument
from tollgate_policy.application import PolicyCache, PolicyService
from tollgate_policy.events import DecisionLog
from tollgate_policy.repository import PolicyRepository
from tollgate_policy.tables import messaging

#: Every built-in detector recorded, none changed: nothing in an answer would be rewritten or stopped.
FLAG_ONLY = {"rules": dict.fromkeys(DETECTORS, "flag")}


def document(**scopes: dict[str, object]) -> PolicySet:
    """A PolicySet from scope documents: document(account={...}, **{"key__k1": {...}})."""
    policy = PolicySet.default("acc_1")
    for version, (scope, raw) in enumerate(scopes.items(), start=1):
        policy = policy.with_scope(scope.replace("__", ":"), parse_scope_document(raw), version)
    return policy


class TestWhoseAnswersAreScanned:
    def test_the_default_policy_redacts_so_answers_are_scanned(self) -> None:
        assert inspect(["hi"], PolicySet.default("acc_1")).scan_responses

    def test_a_policy_that_only_flags_or_allows_does_not_scan_answers(self) -> None:
        policy = document(account={**FLAG_ONLY, "rules": {**FLAG_ONLY["rules"], "email": "allow"}})
        assert not inspect(["hi"], policy).scan_responses

    def test_a_custom_detector_that_redacts_is_enough(self) -> None:
        custom = {"custom_detectors": [{"name": "custom:codename", "keywords": ["falcon"]}]}
        assert not inspect(["hi"], document(account={**FLAG_ONLY, **custom})).scan_responses
        ruled = {**FLAG_ONLY, **custom, "rules": {**FLAG_ONLY["rules"], "custom:codename": "redact"}}
        assert inspect(["hi"], document(account=ruled)).scan_responses

    def test_an_explicit_setting_wins_and_the_most_specific_scope_decides(self) -> None:
        policy = document(
            account={"responses": "off"},  # default rules redact, but the account said no
            team__ml={**FLAG_ONLY, "responses": "scan"},  # flag-only, but asked for it
            key__k1={"responses": "off"},
        )
        assert not inspect(["hi"], policy).scan_responses
        assert inspect(["hi"], policy, team="ml").scan_responses
        assert not inspect(["hi"], policy, team="ml", key_id="k1").scan_responses
        assert policy.to_json()["keys"] == {"k1": {"responses": "off"}}  # stored with the document

    @pytest.mark.parametrize("value", ["on", True, 1])
    def test_any_other_value_is_refused(self, value: object) -> None:
        with pytest.raises(InvalidArgument):
            parse_scope_document({"responses": value})


async def test_over_grpc_only_a_request_answer_says_scan_responses(stub: pb_grpc.PolicyServiceStub) -> None:
    async def scan_responses(account_id: str, direction: int) -> bool:
        request = pb.InspectRequest(request_id="r", account_id=account_id, texts=["hi"], direction=direction)
        reply: pb.InspectResponse = await stub.Inspect(request)
        return reply.scan_responses

    await stub.PutScopePolicy(
        pb.PutScopePolicyRequest(account_id="flags", scope="account", document_json=json.dumps(FLAG_ONLY))
    )
    assert await scan_responses("acc_default", pb.DIRECTION_REQUEST)
    assert await scan_responses("acc_default", pb.DIRECTION_UNSPECIFIED)
    assert not await scan_responses("acc_default", pb.DIRECTION_RESPONSE)
    assert not await scan_responses("flags", pb.DIRECTION_REQUEST)
    got = await stub.GetPolicy(pb.GetPolicyRequest(account_id="flags"))
    assert json.loads(got.effective_json)["scan_responses"] is False


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'policy.db'}", schema="policy")
    await PolicyRepository(engine, schema="policy").create_tables()
    yield engine
    await engine.dispose()


async def outbox_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(messaging.outbox))).scalar_one())


async def test_a_routing_only_inspect_is_answered_but_not_recorded(engine: AsyncEngine) -> None:
    repository = PolicyRepository(engine, schema="policy")
    service = PolicyService(repository, PolicyCache(30.0), decisions=DecisionLog(repository))
    await service.put_scope("acc_1", "account", '{"routing": {"allowed_models": ["m1"]}}', shadow=True)

    limits = await service.inspect("req_models", "acc_1", [], key_id="k1")  # what /v1/models asks
    assert limits.policy_version == 0 and limits.findings == ()
    assert await outbox_rows(engine) == 0, "no PolicyDecided (nor a shadow one) for a routing-only call"

    await service.inspect("req_chat", "acc_1", ["hello"], key_id="k1", model="m1")
    assert await outbox_rows(engine) == 2  # the decision and its shadow evaluation
    await service.inspect("req_empty", "acc_1", [], key_id="k1", model="m2")  # a model is a decision
    assert await outbox_rows(engine) == 4


async def test_set_policy_replaces_the_rules_and_keeps_the_responses_setting(engine: AsyncEngine) -> None:
    service = PolicyService(PolicyRepository(engine, schema="policy"), PolicyCache(30.0))
    await service.put_scope("acc_1", "account", '{"responses": "off"}', shadow=False)
    policy = await service.set_policy("acc_1", [("email", Action.BLOCK)])
    assert policy.to_json()["account"] == {"rules": {"email": "block"}, "responses": "off"}
    assert not (await service.inspect("req_1", "acc_1", ["hi"])).scan_responses
