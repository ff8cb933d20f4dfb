"""Policy documents: inheritance account → team → key, routing limits, versions, shadow mode (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate.events.v1 import policy_pb2 as ev
from tollgate.policy.v1 import policy_service_pb2 as pb
from tollgate.policy.v1 import policy_service_pb2_grpc as pb_grpc
from tollgate_common.db import create_engine
from tollgate_common.events import Envelope
from tollgate_common.grpc import error_reason
from tollgate_dlp.domain import Action, PolicySet, Verdict, inspect, parse_scope_document
from tollgate_dlp.errors import InvalidArgument, NoShadowPolicy, UnknownDetector
from tollgate_policy.application import PolicyCache, PolicyService
from tollgate_policy.events import DecisionLog
from tollgate_policy.repository import PolicyRepository
from tollgate_policy.tables import messaging

CARD = "4111 1111 1111 1111"
EMAIL = "carol@example.com"


def document(**scopes: dict[str, object]) -> PolicySet:
    """A PolicySet from scope documents: document(account={...}, **{"team:ml": {...}})."""
    policy = PolicySet.default("acc_1")
    for version, (scope, raw) in enumerate(scopes.items(), start=1):
        policy = policy.with_scope(scope.replace("__", ":"), parse_scope_document(raw), version)
    return policy


class TestInheritance:
    def test_the_most_specific_scope_naming_a_detector_wins_and_sources_say_where_it_came_from(self) -> None:
        policy = document(
            account={"rules": {"email": "redact", "payment_card": "block"}},
            team__ml={"rules": {"email": "flag"}},
            key__k1={"rules": {"payment_card": "allow"}},
        )
        resolved = policy.resolve("ml", "k1")
        assert (resolved.actions["email"], resolved.sources["email"]) == (Action.FLAG, "team:ml")
        assert (resolved.actions["payment_card"], resolved.sources["payment_card"]) == (Action.ALLOW, "key:k1")
        assert (resolved.actions["secret"], resolved.sources["secret"]) == (Action.REDACT, "default")
        assert resolved.scope == "key:k1"
        other_team = policy.resolve("sales", "k2")
        assert other_team.actions["email"] is Action.REDACT and other_team.scope == "account"

    def test_flag_keeps_the_text_and_is_the_verdict(self) -> None:
        result = inspect([f"mail {EMAIL}"], document(account={"rules": {"email": "flag"}}))
        assert result.verdict is Verdict.FLAG and not result.redacted_texts
        assert result.actions == {"email": Action.FLAG}


class TestRouting:
    def test_allow_lists_narrow_down_the_chain_and_denials_add_up(self) -> None:
        policy = document(
            account={"routing": {"allowed_regions": ["eu", "us"], "denied_providers": ["cheap"]}},
            team__ml={"routing": {"allowed_regions": ["eu"], "denied_providers": ["other"]}},
        )
        result = inspect(["hello"], policy, team="ml")
        assert result.routing.allowed_regions == ("eu",)
        assert result.routing.denied_providers == ("cheap", "other")
        assert result.verdict is Verdict.ALLOW and result.scope == "team:ml"

    def test_a_model_outside_the_allow_list_is_blocked_with_the_rule(self) -> None:
        policy = document(account={"routing": {"allowed_models": ["gpt-4o-mini"]}})
        assert inspect(["hi"], policy, model="gpt-4o-mini").verdict is Verdict.ALLOW
        blocked = inspect(["hi"], policy, model="gpt-4o")
        assert (blocked.verdict, blocked.rule) == (Verdict.BLOCK, "model_not_allowed")

    def test_a_finding_can_restrict_where_the_request_may_go(self) -> None:
        policy = document(account={"when_found": [{"types": ["email", "payment_card"], "allowed_regions": ["eu"]}]})
        assert inspect(["no data here"], policy).routing.allowed_regions == ()
        assert inspect([f"write to {EMAIL}"], policy).routing.allowed_regions == ("eu",)

    def test_limits_that_exclude_each_other_block(self) -> None:
        policy = document(
            account={"routing": {"allowed_regions": ["us"]}},
            key__k1={"when_found": [{"types": ["email"], "allowed_regions": ["eu"]}]},
        )
        assert inspect(["plain"], policy, key_id="k1").verdict is Verdict.ALLOW
        result = inspect([EMAIL], policy, key_id="k1")
        assert (result.verdict, result.rule) == (Verdict.BLOCK, "region_not_allowed")

    @pytest.mark.parametrize(
        ("raw", "error"),
        [
            ({"rule": {}}, InvalidArgument),
            ({"rules": {"email": "shout"}}, InvalidArgument),
            # Found by the fuzz run (tests/e2e/test_fuzz_api.py): an unhashable action was a TypeError → 503.
            ({"rules": {"email": {}}}, InvalidArgument),
            ({"rules": {"email": ["block"]}}, InvalidArgument),
            ({"rules": {"passport": "block"}}, UnknownDetector),
            ({"routing": {"allowed_regions": "eu"}}, InvalidArgument),
            ({"when_found": [{"allowed_regions": ["eu"]}]}, InvalidArgument),
            ({"when_found": [{"types": ["passport"]}]}, UnknownDetector),
        ],
    )
    def test_a_bad_document_is_refused_not_ignored(self, raw: dict[str, object], error: type[Exception]) -> None:
        with pytest.raises(error):
            parse_scope_document(raw)


async def outbox_events(engine: AsyncEngine) -> list[ev.PolicyDecided]:
    t = messaging.outbox
    async with engine.connect() as conn:
        rows = (await conn.execute(select(t.c.headers, t.c.value).order_by(t.c.id))).all()
    out = []
    for row in rows:
        env = Envelope.from_kafka([(k, v.encode()) for k, v in json.loads(row.headers)], row.value)
        message = env.message()
        assert isinstance(message, ev.PolicyDecided)
        out.append(message)
    return out


class VersionsContract:
    """Subclasses provide ``engine_args`` (url, schema)."""

    @pytest.fixture
    def engine_args(self) -> tuple[str, str]:
        raise NotImplementedError

    @pytest.fixture
    async def engine(self, engine_args: tuple[str, str]) -> AsyncIterator[AsyncEngine]:
        url, schema = engine_args
        engine = create_engine(url, schema=schema)
        await PolicyRepository(engine, schema=schema).create_tables()
        yield engine
        await engine.dispose()

    @pytest.fixture
    def service(self, engine: AsyncEngine, engine_args: tuple[str, str]) -> PolicyService:
        repository = PolicyRepository(engine, schema=engine_args[1])
        return PolicyService(repository, PolicyCache(30.0), decisions=DecisionLog(repository))

    async def test_every_change_is_a_version_and_the_history_keeps_them(self, service: PolicyService) -> None:
        await service.put_scope("acc_1", "account", '{"rules": {"email": "redact"}}', shadow=False)
        await service.put_scope("acc_1", "team:ml", '{"rules": {"email": "allow"}}', shadow=False)
        await service.put_scope("acc_1", "key:k1", '{"routing": {"allowed_models": ["m1"]}}', shadow=False)
        history = await service.versions("acc_1")
        assert [(v.policy.version, v.kind) for v in history] == [(3, "enforced"), (2, "enforced"), (1, "enforced")]
        assert history[-1].policy.to_json() == {"account": {"rules": {"email": "redact"}}, "teams": {}, "keys": {}}
        assert history[0].policy.to_json()["keys"] == {"k1": {"routing": {"allowed_models": ["m1"]}}}
        fresh = PolicyService(service.repository, PolicyCache(30.0))  # as after a restart
        result = await fresh.inspect("req_1", "acc_1", [EMAIL], team="ml", key_id="k1", model="m2")
        assert (result.verdict, result.rule, result.policy_version, result.scope) == (
            Verdict.BLOCK,
            "model_not_allowed",
            3,
            "key:k1",
        )
        assert (await fresh.inspect("req_2", "acc_1", [EMAIL], team="ml")).verdict is Verdict.ALLOW
        await service.put_scope("acc_1", "key:k1", "{}", shadow=False)  # back to inheriting
        assert (await service.get_policy("acc_1")).to_json()["keys"] == {}

    async def test_a_shadow_version_is_only_recorded_until_promoted(
        self, service: PolicyService, engine: AsyncEngine
    ) -> None:
        await service.put_scope("acc_1", "account", '{"rules": {"payment_card": "redact"}}', shadow=False)
        shadow = await service.put_scope("acc_1", "account", '{"rules": {"payment_card": "block"}}', shadow=True)
        assert (shadow.kind, shadow.policy.version) == ("shadow", 2)

        result = await service.inspect("req_1", "acc_1", [f"card {CARD}"])
        assert (result.verdict, result.policy_version) == (Verdict.REDACT, 1)  # the enforced one decides
        enforced, shadowed = await outbox_events(engine)
        assert (enforced.shadow, enforced.verdict, enforced.policy_version) == (False, ev.POLICY_VERDICT_REDACT, 1)
        assert (shadowed.shadow, shadowed.verdict, shadowed.policy_version) == (True, ev.POLICY_VERDICT_BLOCK, 2)
        assert [(f.type, f.count, f.action) for f in shadowed.findings] == [("payment_card", 1, "block")]

        promoted = await service.promote_shadow("acc_1")
        assert (promoted.kind, promoted.policy.version) == ("enforced", 3)
        assert (await service.inspect("req_2", "acc_1", [CARD])).verdict is Verdict.BLOCK
        assert len(await outbox_events(engine)) == 3  # no shadow left: one event
        with pytest.raises(NoShadowPolicy):
            await service.promote_shadow("acc_1")

    async def test_a_discarded_shadow_stops_being_evaluated(self, service: PolicyService, engine: AsyncEngine) -> None:
        await service.put_scope("acc_1", "team:ml", '{"rules": {"email": "block"}}', shadow=True)
        discarded = await service.discard_shadow("acc_1")
        assert (discarded.kind, discarded.policy.version) == ("discard", 2)
        fresh = PolicyService(service.repository, PolicyCache(30.0), decisions=service.decisions)
        result = await fresh.inspect("req_1", "acc_1", [EMAIL], team="ml")
        assert (result.verdict, result.policy_version) == (Verdict.ALLOW, 0)
        assert [e.shadow for e in await outbox_events(engine)] == [False]
        with pytest.raises(NoShadowPolicy):
            await service.discard_shadow("acc_1")
        assert [v.kind for v in await service.versions("acc_1")] == ["discard", "shadow"]


class TestVersionsOnSqlite(VersionsContract):
    @pytest.fixture
    def engine_args(self, tmp_path: Path) -> tuple[str, str]:
        return f"sqlite:///{tmp_path / 'policy.db'}", "policy"


@pytest.mark.postgres
class TestVersionsOnPostgres(VersionsContract):
    @pytest.fixture
    def engine_args(self, postgres: tuple[str, str]) -> tuple[str, str]:
        return postgres


async def test_over_grpc_scopes_effective_policy_constraints_and_errors(stub: pb_grpc.PolicyServiceStub) -> None:
    put = await stub.PutScopePolicy(
        pb.PutScopePolicyRequest(
            account_id="acc_1",
            scope="account",
            document_json=json.dumps(
                {
                    "rules": {"email": "redact"},
                    "routing": {"denied_providers": ["cheap"]},
                    "when_found": [{"types": ["email"], "allowed_regions": ["eu"]}],
                }
            ),
        )
    )
    assert (put.version, put.kind) == (1, "enforced")
    await stub.PutScopePolicy(
        pb.PutScopePolicyRequest(account_id="acc_1", scope="team:ml", document_json='{"rules": {"email": "flag"}}')
    )
    got = await stub.GetPolicy(pb.GetPolicyRequest(account_id="acc_1", team="ml"))
    sources = {r.detector: (r.action, r.source) for r in got.policy.rules}
    assert sources["email"] == (pb.ACTION_FLAG, "team:ml")
    assert sources["payment_card"] == (pb.ACTION_REDACT, "default")
    effective = json.loads(got.effective_json)
    assert effective["scope"] == "team:ml" and effective["version"] == 2 and effective["shadow_version"] is None
    assert effective["routing"] == {"denied_providers": ["cheap"]}

    reply = await stub.Inspect(
        pb.InspectRequest(request_id="req_1", account_id="acc_1", texts=[f"to {EMAIL}"], team="ml", model="m")
    )
    assert (reply.verdict, reply.policy_scope, reply.rule) == (pb.VERDICT_FLAG, "team:ml", "")
    assert list(reply.constraints.allowed_regions) == ["eu"]
    assert list(reply.constraints.denied_providers) == ["cheap"]

    versions = await stub.ListPolicyVersions(pb.ListPolicyVersionsRequest(account_id="acc_1"))
    assert [v.version for v in versions.versions] == [2, 1]
    for bad in (
        pb.PutScopePolicyRequest(account_id="acc_1", scope="group:x", document_json="{}"),
        pb.PutScopePolicyRequest(account_id="acc_1", scope="account", document_json="{not json"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PutScopePolicy(bad)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PromoteShadow(pb.ShadowRequest(account_id="acc_1"))
    assert (caught.value.code(), error_reason(caught.value)) == (
        grpc.StatusCode.NOT_FOUND,
        "no_shadow_policy",
    )


async def put(stub: pb_grpc.PolicyServiceStub, scope: str, doc: dict[str, object]) -> pb.PolicyVersion:
    request = pb.PutScopePolicyRequest(account_id="acc_1", scope=scope, document_json=json.dumps(doc))
    reply: pb.PolicyVersion = await stub.PutScopePolicy(request)
    return reply


async def test_custom_detectors_are_compiled_per_account_and_ruled_like_built_ins(
    stub: pb_grpc.PolicyServiceStub,
) -> None:
    await put(
        stub,
        "account",
        {
            "custom_detectors": [
                {"name": "custom:employee_id", "pattern": r"EMP-[0-9]{6}", "label": "EMPLOYEE_ID"},
                {"name": "custom:codename", "keywords": ["falcon", "osprey"]},
            ],
            "rules": {"custom:employee_id": "redact"},
        },
    )
    await put(stub, "team:secret", {"rules": {"custom:codename": "block"}})
    texts = ["EMP-123456 and EMP-654321 met EMP-123456 about Falcon"]
    reply = await stub.Inspect(pb.InspectRequest(request_id="req_1", account_id="acc_1", texts=texts))
    assert reply.verdict == pb.VERDICT_REDACT
    assert list(reply.redacted_texts) == ["[EMPLOYEE_ID_1] and [EMPLOYEE_ID_2] met [EMPLOYEE_ID_1] about Falcon"]
    actions = {(f.type, f.action) for f in reply.findings}
    assert actions == {("custom:employee_id", pb.ACTION_REDACT), ("custom:codename", pb.ACTION_FLAG)}
    assert all(0 < f.confidence <= 1 for f in reply.findings)
    blocked = await stub.Inspect(pb.InspectRequest(request_id="req_2", account_id="acc_1", texts=texts, team="secret"))
    assert blocked.verdict == pb.VERDICT_BLOCK
    other = await stub.Inspect(pb.InspectRequest(request_id="req_3", account_id="acc_2", texts=texts))
    assert not other.findings  # another account does not have them


@pytest.mark.parametrize(
    ("scope", "doc", "reason"),
    [
        ("account", {"custom_detectors": [{"name": "custom:bad", "pattern": "(unclosed"}]}, "invalid_argument"),
        ("account", {"custom_detectors": [{"name": "employee", "pattern": "x"}]}, "invalid_argument"),
        ("team:ml", {"custom_detectors": [{"name": "custom:x", "keywords": ["x"]}]}, "invalid_argument"),
        ("key:k1", {"rules": {"custom:undefined": "block"}}, "unknown_detector"),
    ],
)
async def test_bad_custom_detectors_are_invalid_argument_and_store_nothing(
    stub: pb_grpc.PolicyServiceStub, scope: str, doc: dict[str, object], reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await put(stub, scope, doc)
    assert (caught.value.code(), error_reason(caught.value)) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    versions = await stub.ListPolicyVersions(pb.ListPolicyVersionsRequest(account_id="acc_1"))
    assert not versions.versions
