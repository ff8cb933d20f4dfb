"""Ingress as a real HTTP server (uvicorn + httptools): clients that leave mid-stream, graceful stop, the command."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import orjson
import pytest
from ingress_fakes import ADMIN_TOKEN, GOOD_KEY, Fakes, auth, make_settings, usage_event
from tollgate.events.v1 import usage_pb2
from tollgate_dev.ports import free_port
from tollgate_ingress.__main__ import serve
from tollgate_ingress.config import Settings

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "tell me a story"}], "stream": True}


async def wait_until(predicate, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """A bounded wait for something that happens elsewhere (not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Running:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.url = f"http://127.0.0.1:{settings.port}"
        self.metrics_url = f"http://127.0.0.1:{settings.metrics_port}/metrics"

    async def answers(self) -> bool:
        try:
            async with httpx2.AsyncClient() as c:
                return (await c.get(self.url + "/healthz")).status_code == 200
        except httpx2.TransportError:
            return False

    async def metric(self, name: str) -> float:
        async with httpx2.AsyncClient() as c:
            text = (await c.get(self.metrics_url)).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0


@pytest.fixture
async def server(fakes: Fakes, broker: str, tmp_path: Path) -> AsyncIterator[Running]:
    running = Running(make_settings(fakes, broker, tmp_path, port=free_port(), metrics_port=free_port()))
    running.task = asyncio.create_task(serve(running.settings, running.stop))
    await wait_until(running.answers, "ingress to answer")
    yield running
    running.stop.set()
    if fakes.router.gate is not None:
        fakes.router.gate.set()
    await asyncio.wait_for(running.task, 30)


async def test_client_leaving_mid_stream_is_still_billed_for_the_whole_answer(
    server: Running, fakes: Fakes, broker: str
) -> None:
    fakes.router.gate = asyncio.Event()  # the upstream pauses after its first chunk
    client = httpx2.AsyncClient(timeout=10)
    async with client.stream("POST", server.url + "/v1/chat/completions", json=BODY, headers=auth()) as resp:
        assert resp.status_code == 200
        request_id = resp.headers["x-request-id"]
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                assert orjson.loads(line[6:])["choices"][0]["delta"]["content"] == "Hel"
                break
    await client.aclose()  # the client hangs up while the upstream is still generating

    async def disconnect_seen() -> bool:
        return await server.metric("tollgate_ingress_stream_client_disconnects_total") == 1.0

    await wait_until(disconnect_seen, "ingress to notice the disconnect")
    fakes.router.gate.set()  # the upstream finishes; ingress drains it and bills the exact usage
    _env, event, _key = await usage_event(broker, request_id)
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_CLIENT_CANCELLED
    assert event.streamed
    assert (event.usage.prompt_tokens, event.usage.completion_tokens) == (12, 7)


async def test_graceful_stop_finishes_the_stream_in_flight(server: Running, fakes: Fakes, broker: str) -> None:
    fakes.router.gate = asyncio.Event()
    first_chunk = asyncio.Event()

    async def read_stream() -> tuple[str, list[str]]:
        async with httpx2.AsyncClient(timeout=20) as client, client.stream(
            "POST", server.url + "/v1/chat/completions", json=BODY, headers=auth()
        ) as resp:
            lines = []
            async for line in resp.aiter_lines():
                if line:
                    lines.append(line)
                    first_chunk.set()
            return resp.headers["x-request-id"], lines

    reader = asyncio.create_task(read_stream())
    await asyncio.wait_for(first_chunk.wait(), 20)
    server.stop.set()  # what SIGTERM does

    async def refuses_new_connections() -> bool:
        return not await server.answers()

    await wait_until(refuses_new_connections, "the server to stop accepting")
    assert not server.task.done()  # type: ignore[union-attr]
    fakes.router.gate.set()
    request_id, lines = await asyncio.wait_for(reader, 20)
    assert lines[-1] == "data: [DONE]"
    assert len(lines) == 5
    await asyncio.wait_for(server.task, 30)  # type: ignore[arg-type]
    _env, event, _key = await usage_event(broker, request_id)
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_SUCCEEDED


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGRESS_")}
    env["OTEL_SDK_DISABLED"] = "true"
    env.update(extra)
    return env


def test_command_without_admin_token_exits_2_with_a_clear_message() -> None:
    result = subprocess.run([sys.executable, "-m", "tollgate_ingress"], env=_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "INGRESS_ADMIN_TOKEN is required" in result.stderr
    assert "Traceback" not in result.stderr


def test_command_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    nothing = f"127.0.0.1:{free_port()}"  # no gRPC service, no Kafka: ingress still starts, and says not ready
    env = _env(INGRESS_ADMIN_TOKEN=ADMIN_TOKEN, INGRESS_PORT=str(port), INGRESS_BILLING_ADDR=nothing,
               INGRESS_POLICY_ADDR=nothing, INGRESS_ROUTER_ADDR=nothing, INGRESS_KAFKA_BOOTSTRAP_SERVERS=nothing,
               INGRESS_OUTBOX_DATABASE_URL=f"sqlite:///{tmp_path}/outbox.db")
    proc = subprocess.Popen([sys.executable, "-m", "tollgate_ingress"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx2.TransportError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "ingress did not start"
                time.sleep(0.1)
        assert health.status_code == 200 and health.headers["x-request-id"].startswith("req_")
        ready = httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["checks"]["kafka_producer"] is False
        # The key is checked before the body is read (admission), and with billing unreachable it cannot be:
        # a clear 503 in OpenAI's error shape, never a 500 or a hang.
        resp = httpx2.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=b"{", headers=auth(), timeout=15)
        assert resp.status_code == 503, resp.text
        assert set(resp.json()["error"]) >= {"message", "type"}
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert '"level"' in err, "logs are JSON lines"
        assert GOOD_KEY not in err, "API keys never reach the logs"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()



async def test_metrics_are_served_on_their_own_port_not_beside_the_api(server: Running) -> None:
    """Issue 12: /metrics shared the public port (so a catch-all Ingress path published it). It is on
    INGRESS_METRICS_PORT, on loopback by default; the public port answers 404."""
    async with httpx2.AsyncClient() as c:
        assert (await c.get(server.url + "/healthz")).status_code == 200
        public = await c.get(server.url + "/metrics")
        assert public.status_code == 404
        assert public.json()["error"]["code"] == "not_found"
        served = await c.get(server.metrics_url)
    assert served.status_code == 200
    assert "tollgate_ingress_requests_total" in served.text
