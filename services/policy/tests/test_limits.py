"""One tenant cannot exhaust policy (issue 12): Inspect's input and policy documents are capped with clear statuses,
large inputs are scanned off the event loop, and each account gets a fair share of the scan threads."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import MappingProxyType

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate.policy.v1 import policy_service_pb2 as pb
from tollgate.policy.v1 import policy_service_pb2_grpc as pb_grpc
from tollgate_common.db import create_engine
from tollgate_common.grpc import error_reason, retry_after
from tollgate_dlp.domain import PolicySet, ScopePolicy
from tollgate_dlp.engine import build_scanner
from tollgate_dlp.errors import LimitExceeded, ScanCapacityExhausted
from tollgate_dlp.limits import DOCUMENT_CAPS, MAX_DOCUMENT_CHARS, Limits, check_document
from tollgate_policy import PolicyApp, Settings, application
from tollgate_policy.application import PolicyCache, PolicyService
from tollgate_policy.repository import PolicyRepository

#: Digits that look like card numbers but fail Luhn: the slowest text for the card detector (~0.3 MB/s).
SLOW = "id 1234 5678 9012 3457 x " * 8000  # 200 KB


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'policy.db'}")
    await PolicyRepository(engine).create_tables()
    yield engine
    await engine.dispose()


def service(engine: AsyncEngine, **limits: int) -> PolicyService:
    return PolicyService(PolicyRepository(engine), PolicyCache(30.0), limits=Limits(**limits))


@pytest.fixture
async def small_app(tmp_path: Path) -> AsyncIterator[PolicyApp]:
    running = PolicyApp(
        Settings(
            database_url=f"sqlite:///{tmp_path / 'policy.db'}",
            grpc_host="127.0.0.1",
            grpc_port=0,
            limits=Limits(
                max_texts=3,
                max_chars=1000,
                offload_chars=100,
                large_scans_per_account=1,
                large_scan_queue_per_account=0,
            ),
        )
    )
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def stub(small_app: PolicyApp) -> AsyncIterator[pb_grpc.PolicyServiceStub]:
    async with grpc.aio.insecure_channel(small_app.address) as channel:
        yield pb_grpc.PolicyServiceStub(channel)


class TestInspectInput:
    @pytest.mark.parametrize("texts", [["x" * 1001], ["a", "b", "c", "d"]], ids=["characters", "texts"])
    async def test_too_much_input_is_invalid_argument_before_any_scan(
        self, stub: pb_grpc.PolicyServiceStub, texts: list[str]
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Inspect(pb.InspectRequest(request_id="r1", account_id="acc_1", texts=texts))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(err.value) == "input_too_large"
        assert "x" * 20 not in (err.value.details() or "")  # the text itself is never quoted

    async def test_input_at_the_limit_is_inspected(self, stub: pb_grpc.PolicyServiceStub) -> None:
        reply = await stub.Inspect(pb.InspectRequest(request_id="r1", account_id="acc_1", texts=["x" * 1000]))
        assert reply.verdict == pb.VERDICT_ALLOW


class TestDocumentCaps:
    async def test_too_many_custom_detectors_is_limit_exceeded(self, stub: pb_grpc.PolicyServiceStub) -> None:
        n = DOCUMENT_CAPS["custom_detectors"] + 1
        document = {"custom_detectors": [{"name": f"custom:d{i}", "keywords": [f"word{i}"]} for i in range(n)]}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PutScopePolicy(
                pb.PutScopePolicyRequest(account_id="acc_1", scope="account", document_json=json.dumps(document))
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(err.value) == "limit_exceeded"
        assert f"{n} custom detectors" in (err.value.details() or "")

    async def test_too_many_keywords_in_one_detector_is_limit_exceeded(self, engine: AsyncEngine) -> None:
        words = [f"w{i}" for i in range(DOCUMENT_CAPS["keywords"] + 1)]
        document = {"custom_detectors": [{"name": "custom:many", "keywords": words}]}
        with pytest.raises(LimitExceeded, match="custom:many has 501 keywords"):
            await service(engine).put_scope("acc_1", "account", json.dumps(document), shadow=False)

    async def test_a_document_longer_than_the_cap_is_refused_unparsed(self, engine: AsyncEngine) -> None:
        document = json.dumps({"routing": {"allowed_models": ["m" * 100] * (MAX_DOCUMENT_CHARS // 100)}})
        with pytest.raises(LimitExceeded, match="document_json is longer"):
            await service(engine).put_scope("acc_1", "account", document, shadow=False)

    async def test_routing_lists_and_conditionals_are_capped_per_scope(self, engine: AsyncEngine) -> None:
        models = [f"m{i}" for i in range(DOCUMENT_CAPS["routing_entries"] + 1)]
        with pytest.raises(LimitExceeded, match="routing entries"):
            await service(engine).put_scope(
                "acc_1", "team:ml", json.dumps({"routing": {"allowed_models": models}}), shadow=True
            )
        when = [{"types": ["email"], "allowed_regions": ["eu"]}] * (DOCUMENT_CAPS["when_found"] + 1)
        with pytest.raises(LimitExceeded, match="when found"):
            await service(engine).put_scope("acc_1", "key:k1", json.dumps({"when_found": when}), shadow=False)

    def test_the_number_of_team_and_key_scopes_is_capped(self) -> None:
        scopes = {f"key:k{i}": ScopePolicy(responses="off") for i in range(DOCUMENT_CAPS["scopes"] + 1)}
        with pytest.raises(LimitExceeded, match="1001 scopes"):
            check_document(PolicySet("acc_1", 1, MappingProxyType(scopes)))

    async def test_a_document_within_every_cap_is_stored(self, engine: AsyncEngine) -> None:
        document = {"custom_detectors": [{"name": "custom:ok", "keywords": ["alpha", "beta"]}]}
        stored = await service(engine).put_scope("acc_1", "account", json.dumps(document), shadow=False)
        assert stored.policy.version == 1


class TestLargeScans:
    async def test_a_large_input_is_scanned_off_the_event_loop(
        self, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The large scan is held until the small Inspect has been answered: deterministic, where racing a real
        # 200 KB scan against a small Inspect's database write was not. Were the scan on the loop, holding it would
        # block the loop (for up to 10 s), and the small Inspect could only finish after the large one.
        release = threading.Event()
        real_scan = application.scan_texts

        def held_scan(scanners, texts):  # type: ignore[no-untyped-def]
            if texts and texts[0] is SLOW:
                release.wait(timeout=10)
            return real_scan(scanners, texts)

        monkeypatch.setattr(application, "scan_texts", held_scan)
        policy = service(engine, offload_chars=64 * 1024)
        try:
            large = asyncio.create_task(policy.inspect("big", "acc_big", [SLOW]))
            await asyncio.sleep(0)  # the large Inspect starts first
            await policy.inspect("small", "acc_small", ["hello"])
            assert not large.done()  # another account's small Inspect was not held up by the large scan
            release.set()
            await large
        finally:
            release.set()
            policy.close()

    async def test_an_account_past_its_share_gets_resource_exhausted_while_others_keep_theirs(
        self, engine: AsyncEngine
    ) -> None:
        policy = service(engine, offload_chars=1024, large_scans_per_account=1, large_scan_queue_per_account=1)
        try:
            mine = [asyncio.create_task(policy.inspect(f"a{i}", "acc_a", [SLOW])) for i in range(3)]
            other = asyncio.create_task(policy.inspect("b0", "acc_b", [SLOW]))
            results = await asyncio.gather(*mine, other, return_exceptions=True)
        finally:
            policy.close()
        refused = [r for r in results[:3] if isinstance(r, ScanCapacityExhausted)]
        assert len(refused) == 1  # one running, one waiting, the third refused
        assert not isinstance(results[3], BaseException)  # another account is not refused for acc_a's load
        assert refused[0].retry_after == 1

    async def test_over_grpc_the_refusal_is_resource_exhausted_with_retry_after(
        self, stub: pb_grpc.PolicyServiceStub, small_app: PolicyApp
    ) -> None:
        assert small_app.service is not None
        small_app.service.limits = Limits(max_chars=len(SLOW), offload_chars=100)  # this test needs a big input
        calls = [stub.Inspect(pb.InspectRequest(request_id=f"r{i}", account_id="acc_1", texts=[SLOW])) for i in (1, 2)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(errors) == 1 and errors[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(errors[0]) == "scan_capacity_exhausted"
        assert retry_after(errors[0]) == 1

    def test_one_scanner_scans_in_several_threads_at_once(self) -> None:
        scanner = build_scanner(engine="hyperscan")
        texts = [f"card 4111 1111 1111 1111 mail u{i}@example.com " * 200 for i in range(8)]
        expected = [scanner.scan(t) for t in texts]
        found: dict[int, list[object]] = {}
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                found[i] = [scanner.scan(t) for t in texts * 5]
            except BaseException as exc:  # a shared Hyperscan scratch fails with "scratch in use"
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert all(result == expected * 5 for result in found.values())
