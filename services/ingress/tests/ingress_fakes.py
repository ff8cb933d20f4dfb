"""FAKE billing, policy and router gRPC servicers for ingress's own tests (the real services meet in tests/e2e),
and helpers that read what ingress published on the REAL broker.

A plain module (not conftest) so test modules can import it; conftest.py puts this directory on sys.path."""

from __future__ import annotations

import asyncio
import base64
import secrets
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import orjson
from aiokafka import AIOKafkaConsumer
from tollgate.billing.v1 import billing_service_pb2 as bpb
from tollgate.billing.v1 import billing_service_pb2_grpc as bgrpc
from tollgate.billing.v1 import key_admin_pb2
from tollgate.events.v1 import usage_pb2
from tollgate.policy.v1 import policy_service_pb2 as ppb
from tollgate.policy.v1 import policy_service_pb2_grpc as pgrpc
from tollgate.router.v1 import router_service_pb2 as rpb
from tollgate.router.v1 import router_service_pb2_grpc as rgrpc
from tollgate_common.events import Envelope, Topics
from tollgate_common.grpc import abort
from tollgate_ingress.config import Settings

Ctx = grpc.aio.ServicerContext

GOOD_KEY = "tg-good-key-0123456789"
ADMIN_TOKEN = "tga-admin-" + "x" * 20


# --- fakes ------------------------------------------------------------------------------------------------------
@dataclass
class Failure:
    code: grpc.StatusCode
    message: str
    reason: str
    retry_after: int | None = None
    #: The router's ``tollgate-usage-unknown`` trailer: a provider may bill the failed call.
    usage_unknown: bool = False


class FakeBilling(bgrpc.BillingServiceServicer):
    def __init__(self) -> None:
        self.keys: dict[str, dict[str, Any]] = {
            GOOD_KEY: {"account_id": "acct_1", "key_id": "key_1", "team": "team-a", "project": "proj-x",
                       "label": "default", "has_limit": False, "limit_nanos": 0}
        }
        self.authorize_calls: list[bpb.AuthorizeRequest] = []
        #: The ``traceparent`` metadata of each Authorize call ("" when none came).
        self.traceparents: list[str] = []
        self.authorize_failure: Failure | None = None
        #: Seconds Authorize takes before answering (a billing slower than ingress's deadline).
        self.authorize_delay = 0.0
        self.key_info_calls = 0
        #: What Authorize says the hold's output cap is when the request gave none (billing: the model's cap).
        self.model_output_cap = 0
        self.balance_nanos = 10 * 10**9
        self.usage_nanos = 0
        self.accounts: dict[str, bpb.Account] = {}
        self.credit_calls: list[bpb.AddCreditsRequest] = []
        self.key_calls: list[bpb.CreateApiKeyRequest] = []
        self._applied: dict[str, str] = {}

    async def Authorize(self, request: bpb.AuthorizeRequest, context: Ctx) -> bpb.AuthorizeResponse:
        self.authorize_calls.append(request)
        if self.authorize_delay:
            await asyncio.sleep(self.authorize_delay)
        self.traceparents.append(next((v for k, v in context.invocation_metadata() or () if k == "traceparent"), ""))
        if self.authorize_failure:
            f = self.authorize_failure
            await abort(context, f.code, f.message, reason=f.reason, retry_after=f.retry_after)
        key = self.keys.get(request.api_key)
        if key is None:
            await abort(context, grpc.StatusCode.UNAUTHENTICATED, "unknown API key", reason="invalid_api_key")
        return bpb.AuthorizeResponse(
            account_id=key["account_id"], key_id=key["key_id"], hold_id=request.request_id,
            hold_amount_nanos=1000, currency="USD", team=key["team"], project=key["project"],
            hold_model=(list(request.fallback_models) or [request.model])[-1],
            hold_output_tokens=request.max_output_tokens or self.model_output_cap,
        )

    async def GetKeyInfo(self, request: bpb.GetKeyInfoRequest, context: Ctx) -> bpb.GetKeyInfoResponse:
        self.key_info_calls += 1
        key = self.keys.get(request.api_key)
        if key is None:
            await abort(context, grpc.StatusCode.UNAUTHENTICATED, "unknown API key", reason="invalid_api_key")
        return bpb.GetKeyInfoResponse(
            key_id=key["key_id"], account_id=key["account_id"], label=key["label"], currency="USD",
            balance_nanos=self.balance_nanos, usage_nanos=self.usage_nanos, has_limit=key["has_limit"],
            limit_nanos=key["limit_nanos"], limit_remaining_nanos=key["limit_nanos"] - self.usage_nanos,
        )

    async def GetApiKey(self, request: key_admin_pb2.GetApiKeyRequest, context: Ctx) -> key_admin_pb2.ApiKey:
        """As billing: the key id looked up within the request's account (another account's key: NOT_FOUND)."""
        for key in self.keys.values():
            if (key["account_id"], key["key_id"]) == (request.account_id, request.key_id):
                return key_admin_pb2.ApiKey(key_id=key["key_id"], account_id=key["account_id"], label=key["label"])
        await abort(context, grpc.StatusCode.NOT_FOUND, "no such key", reason="key_not_found")
        raise AssertionError("unreachable")

    async def CreateAccount(self, request: bpb.CreateAccountRequest, context: Ctx) -> bpb.CreateAccountResponse:
        account_id = request.account_id or f"acct_{len(self.accounts) + 100}"
        account = self.accounts.setdefault(account_id, bpb.Account(
            account_id=account_id, name=request.name, currency=request.currency or "USD", created_at_unix_ms=1))
        return bpb.CreateAccountResponse(account=account)

    def _account(self, account_id: str) -> bpb.Account | None:
        return self.accounts.get(account_id)

    async def CreateApiKey(self, request: bpb.CreateApiKeyRequest, context: Ctx) -> bpb.CreateApiKeyResponse:
        self.key_calls.append(request)
        if self._account(request.account_id) is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, "no such account", reason="account_not_found")
        key = "tg-" + secrets.token_urlsafe(16)
        self.keys[key] = {"account_id": request.account_id, "key_id": f"key_{len(self.keys)}", "team": request.team,
                          "project": request.project, "label": request.label, "has_limit": request.has_limit,
                          "limit_nanos": request.limit_nanos}
        return bpb.CreateApiKeyResponse(key_id=self.keys[key]["key_id"], api_key=key, prefix=key[:8])

    async def AddCredits(self, request: bpb.AddCreditsRequest, context: Ctx) -> bpb.AddCreditsResponse:
        self.credit_calls.append(request)
        if self._account(request.account_id) is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, "no such account", reason="account_not_found")
        if request.idempotency_key in self._applied:
            return bpb.AddCreditsResponse(transaction_id=self._applied[request.idempotency_key],
                                          balance_nanos=self.balance_nanos, replayed=True)
        self.balance_nanos += request.amount_nanos
        self._applied[request.idempotency_key] = f"txn_{len(self._applied)}"
        return bpb.AddCreditsResponse(transaction_id=self._applied[request.idempotency_key],
                                      balance_nanos=self.balance_nanos)

    async def GetBalance(self, request: bpb.GetBalanceRequest, context: Ctx) -> bpb.GetBalanceResponse:
        if self._account(request.account_id) is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, "no such account", reason="account_not_found")
        held = 250_000_000
        return bpb.GetBalanceResponse(account_id=request.account_id, currency="USD", balance_nanos=self.balance_nanos,
                                      held_nanos=held, available_nanos=self.balance_nanos - held)

    async def ListLedgerEntries(
        self, request: bpb.ListLedgerEntriesRequest, context: Ctx
    ) -> bpb.ListLedgerEntriesResponse:
        return bpb.ListLedgerEntriesResponse(entries=[
            bpb.LedgerEntry(transaction_id="txn_0", kind="credit_purchase",
                            ledger_account=f"wallet:{request.account_id}",
                            amount_nanos=10 * 10**9, reference="seed", created_at_unix_ms=5),
            bpb.LedgerEntry(transaction_id="txn_0", kind="credit_purchase", ledger_account="funding:external",
                            amount_nanos=-10 * 10**9, reference="seed", created_at_unix_ms=5),
        ][: request.limit or None])


class FakePolicy(pgrpc.PolicyServiceServicer):
    """Finds the substrings in :attr:`rules` and acts on them as a real DLP policy would."""

    def __init__(self) -> None:
        self.rules: dict[str, tuple[str, int]] = {}
        self.inspected: list[list[str]] = []
        self.verdict_override: int | None = None
        self.policies: dict[str, ppb.PolicySet] = {}

    async def Inspect(self, request: ppb.InspectRequest, context: Ctx) -> ppb.InspectResponse:
        self.inspected.append(list(request.texts))
        findings: list[ppb.Finding] = []
        redacted = list(request.texts)
        for i, text in enumerate(request.texts):
            for needle, (kind, action) in self.rules.items():
                start = text.find(needle)
                if start >= 0:
                    findings.append(ppb.Finding(type=kind, text_index=i, start=start, end=start + len(needle),
                                                action=action))
                    redacted[i] = redacted[i].replace(needle, f"[{kind.upper()}_1]")
        actions = {f.action for f in findings}
        if self.verdict_override is not None:
            return ppb.InspectResponse(verdict=self.verdict_override)
        if ppb.ACTION_BLOCK in actions:
            return ppb.InspectResponse(verdict=ppb.VERDICT_BLOCK, findings=findings)
        if ppb.ACTION_REDACT in actions:
            return ppb.InspectResponse(verdict=ppb.VERDICT_REDACT, findings=findings, redacted_texts=redacted)
        return ppb.InspectResponse(verdict=ppb.VERDICT_ALLOW, findings=findings)

    async def SetPolicy(self, request: ppb.SetPolicyRequest, context: Ctx) -> ppb.SetPolicyResponse:
        old = self.policies.get(request.account_id)
        version = (old.version if old else 0) + 1
        policy = ppb.PolicySet(account_id=request.account_id, rules=request.rules, version=version)
        self.policies[request.account_id] = policy
        return ppb.SetPolicyResponse(policy=policy)

    async def GetPolicy(self, request: ppb.GetPolicyRequest, context: Ctx) -> ppb.GetPolicyResponse:
        empty = ppb.PolicySet(account_id=request.account_id)
        return ppb.GetPolicyResponse(policy=self.policies.get(request.account_id, empty))


STREAM_PIECES = ["Hel", "lo", " there", "!"]


def _chunk(piece: str, i: int) -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-upstream42", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "gpt-fake-2024", "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": ({"role": "assistant", "content": piece} if i == 0 else {"content": piece}),
                     "finish_reason": None}],
    })


@dataclass
class FakeRouter(rgrpc.RouterServiceServicer):
    bodies: list[dict[str, Any]] = field(default_factory=list)
    failure: Failure | None = None
    #: Fail the stream after this many chunks (None: never).
    fail_after_chunks: int | None = None
    #: When set, the stream waits for it after its first chunk.
    gate: asyncio.Event | None = None
    usage: rpb.Usage = field(default_factory=lambda: rpb.Usage(prompt_tokens=12, completion_tokens=7, total_tokens=19,
                                                               cached_prompt_tokens=2, reasoning_tokens=1))
    requests: list[rpb.CompleteRequest] = field(default_factory=list)
    #: The public model the fake reports as served ("" = the requested one).
    served_model: str = ""
    #: The streamed answer's pieces, one chunk each.
    pieces: list[str] = field(default_factory=lambda: list(STREAM_PIECES))
    embed_requests: list[rpb.EmbedRequest] = field(default_factory=list)

    async def Complete(self, request: rpb.CompleteRequest, context: Ctx) -> rpb.CompleteResponse:
        self.requests.append(request)
        self.bodies.append(orjson.loads(request.body_json))
        if self.failure:
            await abort(context, self.failure.code, self.failure.message, reason=self.failure.reason,
                        retry_after=self.failure.retry_after, usage_unknown=self.failure.usage_unknown)
        last = self.bodies[-1]["messages"][-1]["content"]
        text = last if isinstance(last, str) else " ".join(p.get("text", "") for p in last)
        body = {
            "id": "chatcmpl-upstream1", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-fake-2024",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"echo: {text}"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": self.usage.prompt_tokens, "completion_tokens": self.usage.completion_tokens,
                      "total_tokens": self.usage.total_tokens},
        }
        return rpb.CompleteResponse(body_json=orjson.dumps(body), usage=self.usage, provider="fakeai",
                                    upstream_model="gpt-fake-2024", upstream_request_id="up_1",
                                    model=self.served_model or request.model)

    async def StreamComplete(
        self, request: rpb.CompleteRequest, context: Ctx
    ) -> AsyncIterator[rpb.StreamCompleteResponse]:
        self.requests.append(request)
        self.bodies.append(orjson.loads(request.body_json))
        if self.failure:
            await abort(context, self.failure.code, self.failure.message, reason=self.failure.reason,
                        retry_after=self.failure.retry_after, usage_unknown=self.failure.usage_unknown)
        for i, piece in enumerate(self.pieces):
            if self.fail_after_chunks is not None and i == self.fail_after_chunks:
                await abort(context, grpc.StatusCode.UNAVAILABLE, "upstream connection reset", reason="upstream_error")
            yield rpb.StreamCompleteResponse(chunk_json=_chunk(piece, i))
            if i == 0 and self.gate is not None:
                await self.gate.wait()
        yield rpb.StreamCompleteResponse(end=rpb.StreamEnd(usage=self.usage, provider="fakeai",
                                                           upstream_model="gpt-fake-2024", upstream_request_id="up_2",
                                                           model=self.served_model or request.model))

    async def Embed(self, request: rpb.EmbedRequest, context: Ctx) -> rpb.EmbedResponse:
        """One 3-dimension vector per input (OpenAI's body, either encoding), 5 prompt tokens per input."""
        self.embed_requests.append(request)
        body = orjson.loads(request.body_json)
        if self.failure:
            await abort(context, self.failure.code, self.failure.message, reason=self.failure.reason,
                        retry_after=self.failure.retry_after, usage_unknown=self.failure.usage_unknown)
        inputs = body["input"] if isinstance(body["input"], list) and not isinstance(body["input"][0], int) else [0]
        vector = [0.6, 0.8, 0.0]
        encoded: Any = vector
        if body.get("encoding_format") == "base64":
            encoded = base64.b64encode(struct.pack("<3f", *vector)).decode()
        tokens = 5 * len(inputs)
        reply = {"object": "list", "model": "text-embedding-3-small", "usage": {"prompt_tokens": tokens,
                                                                                 "total_tokens": tokens},
                 "data": [{"object": "embedding", "index": i, "embedding": encoded} for i in range(len(inputs))]}
        return rpb.EmbedResponse(body_json=orjson.dumps(reply), usage=rpb.Usage(prompt_tokens=tokens,
                                                                                total_tokens=tokens),
                                 provider="fakeai", upstream_model="text-embedding-3-small",
                                 upstream_request_id="up_e", model=request.model)

    async def ListModels(self, request: rpb.ListModelsRequest, context: Ctx) -> rpb.ListModelsResponse:
        return rpb.ListModelsResponse(models=[rpb.Model(id="gpt-4o-mini", provider="openai", owned_by="openai"),
                                              rpb.Model(id="claude-3-5-haiku", provider="anthropic", owned_by="",
                                                        aliases=["haiku-latest"])])


@dataclass
class Fakes:
    billing: FakeBilling
    policy: FakePolicy
    router: FakeRouter
    addr: str


def make_settings(fakes: Fakes, bootstrap: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        admin_token=ADMIN_TOKEN,
        billing_addr=fakes.addr,
        policy_addr=fakes.addr,
        router_addr=fakes.addr,
        kafka_bootstrap_servers=bootstrap,
        outbox_database_url=f"sqlite:///{tmp_path}/outbox.db",
        kafka_send_timeout_seconds=2.0,
        shutdown_grace_seconds=10.0,
        metrics_port=0,  # in-process apps serve no metrics port (test_server.py serves one)
    )
    values.update(overrides)
    return Settings(**values)


def auth(key: str = GOOD_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


# --- reading what ingress published -----------------------------------------------------------------------------
Published = tuple[Envelope, usage_pb2.UsageRecorded, bytes]


async def usage_events(bootstrap: str, request_ids: set[str], timeout: float = 30.0) -> dict[str, list[Published]]:
    """Every message on tollgate.usage.v1 for these request ids, read from the beginning of the topic.

    Waits until each id has been seen at least once (a bounded wait, not a timing assertion). Subscribed rather
    than assigned, so a topic that a restarted broker creates only later is still found."""
    deadline = time.monotonic() + timeout
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest", metadata_max_age_ms=500)
    consumer.subscribe([Topics.USAGE])
    await consumer.start()
    found: dict[str, list[Published]] = {}
    try:
        while not request_ids <= found.keys():
            if time.monotonic() > deadline:
                raise AssertionError(f"usage events never arrived for {sorted(request_ids - found.keys())}")
            batches = await consumer.getmany(timeout_ms=300)
            for records in batches.values():
                for record in records:
                    env = Envelope.from_kafka(record.headers, record.value)
                    if env.id in request_ids:
                        msg = env.message()
                        assert isinstance(msg, usage_pb2.UsageRecorded)
                        found.setdefault(env.id, []).append((env, msg, record.key))
    finally:
        await consumer.stop()
    return found


async def usage_event(bootstrap: str, request_id: str) -> Published:
    events = await usage_events(bootstrap, {request_id})
    return events[request_id][0]
