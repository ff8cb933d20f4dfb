"""A hold whose placement is unknown is closed anyway (ingress's unknown_holds): when Authorize times out or
billing fails without a refusal, ingress publishes the zero-usage event that releases the hold if billing placed it,
so a caller answered 504/503 never pays the request's maximum cost at the hold's TTL."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx2
import pytest
from ingress_fakes import GOOD_KEY, Failure, Fakes, auth, make_settings, usage_events
from tollgate.events.v1 import usage_pb2
from tollgate_ingress.config import Settings

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello world"}]}


@pytest.fixture
def settings(fakes: Fakes, broker: str, tmp_path: Path) -> Settings:
    return make_settings(fakes, broker, tmp_path, rpc_timeout_seconds=0.5)


def _assert_releases_the_hold(event: usage_pb2.UsageRecorded, request_id: str) -> None:
    assert event.hold_id == request_id and event.request_id == request_id
    assert (event.account_id, event.key_id) == ("acct_1", "key_1")  # from GetKeyInfo: the failed call said nothing
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_FAILED
    assert (event.usage.prompt_tokens, event.usage.completion_tokens) == (0, 0)
    assert event.model == "gpt-4o-mini"


async def test_an_authorize_past_the_deadline_is_closed_by_a_zero_usage_event(
    client: httpx2.AsyncClient, fakes: Fakes, broker: str
) -> None:
    fakes.billing.authorize_delay = 2.0  # billing still places the hold, after ingress stopped waiting
    resp = await client.post(CHAT, json=BODY, headers=auth())
    assert resp.status_code == 504, resp.text
    request_id = resp.headers["x-request-id"]
    found = await usage_events(broker, {request_id})
    assert len(found[request_id]) == 1
    _assert_releases_the_hold(found[request_id][0][1], request_id)
    assert not fakes.router.requests, "nothing may be sent upstream for a request that was not authorized"


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE])
async def test_a_billing_failure_that_is_not_a_refusal_is_closed_too(
    client: httpx2.AsyncClient, fakes: Fakes, broker: str, code: grpc.StatusCode
) -> None:
    fakes.billing.authorize_failure = Failure(code, "internal error", "")
    resp = await client.post(CHAT, json=BODY, headers=auth())
    assert resp.status_code == 503, resp.text
    request_id = resp.headers["x-request-id"]
    found = await usage_events(broker, {request_id})
    _assert_releases_the_hold(found[request_id][0][1], request_id)


async def test_a_refusal_places_no_hold_and_publishes_nothing_for_it(
    client: httpx2.AsyncClient, fakes: Fakes, broker: str
) -> None:
    """402 is billing's answer that it placed nothing; only a later, successful request's event appears."""
    fakes.billing.authorize_failure = Failure(grpc.StatusCode.FAILED_PRECONDITION, "no money", "insufficient_balance")
    refused = await client.post(CHAT, json=BODY, headers=auth())
    assert refused.status_code == 402
    fakes.billing.authorize_failure = None
    served = await client.post(CHAT, json=BODY, headers=auth(GOOD_KEY))
    assert served.status_code == 200
    ids = {refused.headers["x-request-id"], served.headers["x-request-id"]}
    with pytest.raises(AssertionError, match="never arrived"):
        await usage_events(broker, ids, timeout=5.0)
    found = await usage_events(broker, {served.headers["x-request-id"]})
    assert len(found) == 1
