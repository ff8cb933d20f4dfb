"""Unpriced models are refused, never served free (issue 13, "Money depth"), through real processes.

A platform whose providers file routes a model that metering's price book does not price: with
``ROUTER_PRICE_CHECK=warn`` the router starts anyway, and a request for that model is 400 ``model_not_priced``
before any upstream call (billing refuses the hold); a model neither routed nor priced is OpenAI's 404
``model_not_found``. With the default ``required`` the router refuses to start: exit 2 naming the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tollgate_dev.platform import Platform
from tollgate_dev.ports import free_port

from .conftest import _kafka, _start
from .tenant import NANOS, Tenant, mock_calls

pytestmark = pytest.mark.e2e

PROVIDERS = """currency: USD
providers:
  mock: {{kind: openai, base_url: "{base}/v1"}}
models:
  gpt-4o-mini: {{provider: mock, upstream_model: gpt-4o-mini}}
  house-model: {{provider: mock, upstream_model: gpt-4o-mini}}
"""


@pytest.fixture(scope="module")
def unpriced_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tmp: Path = tmp_path_factory.mktemp("unpriced")
    mock_port = free_port()
    (tmp / "providers.yaml").write_text(PROVIDERS.format(base=f"http://127.0.0.1:{mock_port}"))
    extra = {"router": {"ROUTER_PROVIDERS_FILE": str(tmp / "providers.yaml"), "ROUTER_PRICE_CHECK": "warn"}}
    with _kafka(shared_ok=False) as kafka:
        platform = _start(tmp, kafka, ports={"mock": mock_port}, extra_env=extra)
        try:
            yield platform
        finally:
            platform.stop()


def _chat(platform: Platform, tenant: Tenant, model: str) -> httpx.Response:
    return httpx.post(f"{platform.ingress_url}/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {tenant.api_key}"},
                      json={"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})


def test_a_routable_model_without_a_price_is_refused_before_the_upstream(unpriced_platform: Platform) -> None:
    platform = unpriced_platform
    assert "house-model" in platform.log_tail("router", 500)  # the warning names it
    tenant = Tenant.create(platform)
    before = len(mock_calls(platform))

    refused = _chat(platform, tenant, "house-model")
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "model_not_priced"
    assert refused.json()["error"]["param"] == "model"
    unknown = _chat(platform, tenant, "no-such-model")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    served = _chat(platform, tenant, "gpt-4o-mini")
    assert served.status_code == 200, served.text

    assert len(mock_calls(platform)) == before + 1  # only the priced model reached the upstream
    assert 10 * NANOS - tenant.settle()["balance_nanos"] > 0  # the priced call was charged


def test_the_router_refuses_to_start_when_a_routable_model_has_no_price(unpriced_platform: Platform) -> None:
    platform = unpriced_platform
    platform.config.extra_env["router"]["ROUTER_PRICE_CHECK"] = "required"
    with pytest.raises(RuntimeError, match="exited with status 2") as caught:
        platform.restart("router")
    assert "house-model" in str(caught.value) and "without a price" in str(caught.value)
