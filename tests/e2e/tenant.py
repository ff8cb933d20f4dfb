"""What an operator and a developer do against a running platform: an account, its key, its money, its calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from decimal import Decimal

import grpc
import openai
from tollgate.metering.v1 import metering_service_pb2, metering_service_pb2_grpc
from tollgate_dev.platform import Platform

NANOS = 10**9


@dataclass
class Tenant:
    platform: Platform
    account_id: str
    api_key: str

    @classmethod
    def create(cls, platform: Platform, *, credit: str | None = "10.00", label: str = "e2e") -> Tenant:
        account_id = f"acct_e2e_{uuid.uuid4().hex[:10]}"
        platform.admin("POST", "/admin/v1/accounts", {"id": account_id, "name": label})
        if credit is not None:
            platform.admin("POST", f"/admin/v1/accounts/{account_id}/credits",
                           {"amount": credit, "idempotency_key": f"seed-{account_id}"})
        key = platform.admin("POST", f"/admin/v1/accounts/{account_id}/keys", {"label": label})
        return cls(platform, account_id, str(key["key"]))

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.platform.ingress_url}/v1", api_key=self.api_key, max_retries=0,
                             timeout=30)

    def balance(self) -> dict[str, int]:
        b = self.platform.admin("GET", f"/admin/v1/accounts/{self.account_id}/balance")
        return {k: int(b[k]) for k in ("balance_nanos", "held_nanos", "available_nanos")}  # type: ignore[call-overload]

    def ledger(self) -> list[dict[str, object]]:
        body = self.platform.admin("GET", f"/admin/v1/accounts/{self.account_id}/ledger")
        return list(body["entries"])  # type: ignore[call-overload]

    def settle(self, timeout: float = 60.0) -> dict[str, int]:
        """Wait until no hold is open: every usage event has been rated and captured."""
        deadline = time.monotonic() + timeout
        while True:
            b = self.balance()
            if b["held_nanos"] == 0:
                return b
            if time.monotonic() > deadline:
                raise AssertionError(f"holds still open after {timeout}s: {b}")
            time.sleep(0.2)


def mock_calls(platform: Platform) -> list[dict[str, object]]:
    with urllib.request.urlopen(f"{platform.mock_url}/_mock/calls", timeout=10) as resp:
        body = json.loads(resp.read())
    return list(body["data"] if isinstance(body, dict) else body)


def price_book(platform: Platform) -> metering_service_pb2.GetPriceBookResponse:
    with grpc.insecure_channel(platform.grpc_addr("metering")) as channel:
        return metering_service_pb2_grpc.MeteringServiceStub(channel).GetPriceBook(
            metering_service_pb2.GetPriceBookRequest(), timeout=10, metadata=platform.caller_metadata("ops")
        )


def resale_price(platform: Platform, model: str, prompt_tokens: int, completion_tokens: int) -> int:
    """The rated price, computed independently from the price book: ceil(cost × (1 + markup))."""
    book = price_book(platform)
    price = next(p for p in book.prices if p.model == model)
    cost = prompt_tokens * price.input_price_nanos + completion_tokens * price.output_price_nanos
    return -(-cost * (10_000 + book.markup_bps) // 10_000)


def operator_env(platform: Platform) -> dict[str, str]:
    """The environment an operator's tool runs with on this platform: the deployment's internal secret, with which
    rebuilds and the ``tollgate`` command check each Kafka record's producer signature as the live consumers do."""
    return {**os.environ, "TOLLGATE_INTERNAL_SECRET": platform.config.internal_secret}


def rebuild(platform: Platform, service: str, into: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"tollgate_{service}", "rebuild", "--kafka", platform.bootstrap, "--into", into,
         "--compare-with", platform.database_url(service)],
        capture_output=True, text=True, timeout=120, env=operator_env(platform),
    )


def dollars(nanos: int) -> Decimal:
    return Decimal(nanos) / NANOS
