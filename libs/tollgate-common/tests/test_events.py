from __future__ import annotations

import pytest
from tollgate.events.v1 import billing_pb2, usage_pb2
from tollgate_common.events import EVENT_TYPES, Envelope, envelope_for


def test_envelope_round_trips_through_kafka_headers() -> None:
    event = usage_pb2.UsageRecorded(request_id="req_1", account_id="acct_1", model="gpt-4o-mini")
    event.usage.prompt_tokens = 12
    env = envelope_for(event, id="req_1", service="ingress", subject="acct_1", at_unix_ms=1_700_000_000_000)
    headers = dict(env.headers())
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_source"] == b"//tollgate/ingress"
    assert headers["ce_type"] == b"tollgate.usage.v1.usage.recorded"
    assert headers["ce_subject"] == b"acct_1"
    assert headers["ce_time"] == b"2023-11-14T22:13:20.000Z"

    back = Envelope.from_kafka(env.headers(), env.data)
    assert back.id == "req_1"
    decoded = back.message()
    assert isinstance(decoded, usage_pb2.UsageRecorded)
    assert decoded.usage.prompt_tokens == 12


def test_type_names_follow_the_convention() -> None:
    for name in EVENT_TYPES:
        parts = name.split(".")
        assert parts[0] == "tollgate" and parts[2] == "v1" and len(parts) == 5, name


def test_a_message_without_ce_headers_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a CloudEvent"):
        Envelope.from_kafka([("ce_id", b"x")], b"")


def test_unregistered_message_cannot_be_wrapped() -> None:
    with pytest.raises(ValueError):
        envelope_for(billing_pb2.Posting(), id="x", service="billing", subject="a")
