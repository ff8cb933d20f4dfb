"""Canary sweep (issue 12, "Then measure"): secrets and prompt text never reach logs, events, traces or error bodies.

One platform of its own, every service at DEBUG, spans exported over OTLP to a collector in this test. Canary
values are planted where an attacker or a careless log line would find them: the tenant's API key, a wrong API
key, a wrong admin token, the provider key the router sends upstream, and prompt text with planted personal data,
sent through successful, streamed, refused and malformed requests in both wire formats. Then every sink is read:
each Tollgate process's log, every record (headers and value) on every topic, every exported span, every error
body, and every service's database file. Not one canary may appear in any of them.

What is NOT swept: the mock upstream's own log (it is the provider: it must see the prompt and the provider key)
and the broker's log (infrastructure, not ours; its records are swept through the topics).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import anthropic
import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from tollgate_common.events import Topics
from tollgate_dev.platform import SERVICES, Platform
from tollgate_dev.ports import free_port

from .conftest import _kafka, _start
from .tenant import Tenant

pytestmark = pytest.mark.e2e

TAG = secrets.token_hex(6)
PROMPT_CANARY = f"CanaryPrompt{TAG}"
EMAIL_CANARY = f"canary.{TAG}@example-corp.com"
PROVIDER_KEY = f"sk-canaryprovider{TAG}{secrets.token_hex(8)}"
WRONG_KEY = f"tg-canarywrongkey{TAG}{secrets.token_hex(8)}"
WRONG_ADMIN = f"tga-canarywrongadmin{TAG}{secrets.token_hex(8)}"
PROMPT = f"{PROMPT_CANARY}: please write to {EMAIL_CANARY} about the plan."

PROVIDERS = """currency: USD
providers:
  canary-mock: {{kind: openai, base_url: "{base}/v1", api_key_env: TOLLGATE_CANARY_PROVIDER_KEY}}
models:
  gpt-4o-mini:
    owned_by: openai
    deployments:
      - {{provider: canary-mock, upstream_model: gpt-4o-mini}}
"""


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace receiver: keeps the raw bytes of every export request."""

    def __init__(self) -> None:
        self.exports: list[bytes] = []
        self._lock = threading.Lock()

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        with self._lock:
            self.exports.append(request.SerializeToString())
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, _Collector]]:
    collector = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    otlp_port = free_port()
    server.add_insecure_port(f"127.0.0.1:{otlp_port}")
    server.start()
    tmp = tmp_path_factory.mktemp("canary")
    mock_port = free_port()
    (tmp / "providers.yaml").write_text(PROVIDERS.format(base=f"http://127.0.0.1:{mock_port}"))
    telemetry = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    extra = {svc: {f"{svc.upper()}_LOG_LEVEL": "DEBUG", **telemetry} for svc in SERVICES}
    extra["router"].update(ROUTER_PROVIDERS_FILE=str(tmp / "providers.yaml"),
                           TOLLGATE_CANARY_PROVIDER_KEY=PROVIDER_KEY)
    try:
        with _kafka(shared_ok=False) as kafka:
            platform = _start(tmp, kafka, ports={"mock": mock_port}, extra_env=extra)
            try:
                yield platform, collector
            finally:
                platform.stop()
        assert not platform.deaths, f"a service died during the sweep: {platform.deaths}"
    finally:
        server.stop(grace=None)


def _drive(platform: Platform, tenant: Tenant) -> list[tuple[str, int, bytes]]:
    """Every kind of request a canary can ride on; returns (what, status, body) of each answer."""
    answers: list[tuple[str, int, bytes]] = []
    base = platform.ingress_url
    good = {"Authorization": f"Bearer {tenant.api_key}"}
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
    with httpx.Client(timeout=30) as http:
        def call(what: str, method: str, path: str, **kw: object) -> None:
            r = http.request(method, base + path, **kw)  # type: ignore[arg-type]
            answers.append((what, r.status_code, r.content))

        call("chat", "POST", "/v1/chat/completions", headers=good, json=chat)
        call("chat stream", "POST", "/v1/chat/completions", headers=good,
             json={**chat, "stream": True, "stream_options": {"include_usage": True}})
        call("wrong key", "POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {WRONG_KEY}"},
             json=chat)
        call("wrong key (anthropic)", "POST", "/v1/messages", headers={"x-api-key": WRONG_KEY},
             json={"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": PROMPT}]})
        call("malformed json", "POST", "/v1/chat/completions", headers={**good, "Content-Type": "application/json"},
             content=('{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "' + PROMPT + '"').encode())
        call("bad field", "POST", "/v1/chat/completions", headers=good,
             json={**chat, "max_tokens": PROMPT})
        call("unknown model", "POST", "/v1/chat/completions", headers=good,
             json={**chat, "model": f"no-such-model-{TAG}"})  # a model name is echoed, as OpenAI does
        call("wrong admin token", "GET", f"/admin/v1/accounts/{tenant.account_id}/balance",
             headers={"Authorization": f"Bearer {WRONG_ADMIN}"})
        call("key info", "GET", "/v1/key", headers=good)
    # The official SDKs too, one of each format.
    tenant.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
    claude = anthropic.Anthropic(base_url=base, api_key=tenant.api_key, max_retries=0)
    claude.messages.create(model="gpt-4o-mini", max_tokens=32, messages=[{"role": "user", "content": PROMPT}])
    return answers


def _topic_bytes(platform: Platform) -> list[bytes]:
    """Every record on every Tollgate topic: key, each header and the value, raw."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def read() -> list[bytes]:
        consumer = AIOKafkaConsumer(bootstrap_servers=platform.bootstrap, enable_auto_commit=False, group_id=None)
        await consumer.start()
        out: list[bytes] = []
        try:
            await consumer.topics()
            tps = [TopicPartition(t, p) for t in Topics.ALL for p in sorted(consumer.partitions_for_topic(t) or ())]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            idle_until = time.monotonic() + 3.0
            while time.monotonic() < idle_until:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    idle_until = time.monotonic() + 3.0
                    for r in records:
                        out.append((r.key or b"") + b"\0" + b"\0".join(k.encode() + b"=" + v for k, v in r.headers)
                                   + b"\0" + (r.value or b""))
        finally:
            await consumer.stop()
        return out

    return asyncio.run(read())


def _canaries(tenant: Tenant) -> dict[str, bytes]:
    secret_part = tenant.api_key.split("-", 1)[-1]
    return {
        "tenant api key": tenant.api_key.encode(),
        "tenant api key (secret part)": secret_part.encode(),
        "wrong api key": WRONG_KEY.encode(),
        "wrong admin token": WRONG_ADMIN.encode(),
        "provider key": PROVIDER_KEY.encode(),
        "prompt text": PROMPT_CANARY.encode(),
        "planted e-mail": EMAIL_CANARY.encode(),
    }


def _hits(canaries: dict[str, bytes], where: str, blob: bytes) -> list[str]:
    return [f"{name} in {where}" for name, value in canaries.items() if value in blob]


def test_no_secret_or_prompt_text_reaches_any_log_event_trace_error_body_or_database(
    sweep: tuple[Platform, _Collector],
) -> None:
    platform, collector = sweep
    tenant = Tenant.create(platform, label=f"canary-{uuid.uuid4().hex[:6]}")
    answers = _drive(platform, tenant)
    tenant.settle()
    time.sleep(2.0)  # the span processors export every 200 ms; the outbox relays publish within a second

    statuses = {what: status for what, status, _ in answers}
    # The sweep is only worth something if each request did what it was meant to do.
    assert statuses["chat"] == 200 and statuses["chat stream"] == 200 and statuses["key info"] == 200, statuses
    assert statuses["wrong key"] == 401 and statuses["wrong key (anthropic)"] == 401, statuses
    assert statuses["malformed json"] == 400 and statuses["bad field"] == 400, statuses
    assert statuses["unknown model"] == 404 and statuses["wrong admin token"] == 401, statuses

    canaries = _canaries(tenant)
    hits: list[str] = []
    for what, status, body in answers:
        if status >= 400:
            hits += _hits(canaries, f"the {status} body of '{what}'", body)
        elif what == "key info":
            hits += _hits(canaries, "GET /v1/key", body)

    logs = {name: (platform.logs_dir / f"{name}.log").read_bytes() for name in SERVICES}
    assert all(logs.values()), "every service must have logged something at DEBUG"
    assert any(b"DEBUG" in log or b'"debug"' in log.lower() for log in logs.values()), "no DEBUG line was logged"
    for name, log in logs.items():
        hits += _hits(canaries, f"{name}'s log", log)

    records = _topic_bytes(platform)
    assert len(records) >= 10, f"too few events to mean anything: {len(records)}"
    for i, record in enumerate(records):
        hits += _hits(canaries, f"event #{i} on the topics", record)

    assert collector.exports, "no span was exported: the trace sweep would prove nothing"
    for i, export in enumerate(collector.exports):
        hits += _hits(canaries, f"trace export #{i}", export)

    for db in sorted(Path(platform.config.var_dir).glob("*.db*")):
        hits += _hits(canaries, f"database file {db.name}", db.read_bytes())

    assert not hits, "canaries leaked:\n" + "\n".join(sorted(set(hits)))
