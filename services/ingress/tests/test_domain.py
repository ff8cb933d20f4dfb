"""Parsing and validating a chat request, its prompt texts, redaction in place, and the usage chunk."""

from __future__ import annotations

import orjson
import pytest
from tollgate_ingress.domain import StreamMeta, Usage, parse_chat_request, usage_chunk
from tollgate_ingress.errors import InvalidRequest


def raw(**body: object) -> bytes:
    return orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **body})


def test_minimal_request() -> None:
    req = parse_chat_request(raw())
    assert (req.model, req.stream, req.include_usage, req.max_output_tokens, req.tags) == (
        "gpt-4o-mini", False, False, 0, {})
    assert req.prompt_texts() == ["hi"]


def test_output_cap_prefers_max_completion_tokens() -> None:
    assert parse_chat_request(raw(max_tokens=50)).max_output_tokens == 50
    assert parse_chat_request(raw(max_tokens=50, max_completion_tokens=70)).max_output_tokens == 70
    assert parse_chat_request(raw(max_tokens=None)).max_output_tokens == 0


def test_stream_options_and_tags() -> None:
    req = parse_chat_request(raw(stream=True, stream_options={"include_usage": True},
                                 metadata={"team": "search", "count": 3, "flag": True}))
    assert req.stream and req.include_usage
    assert req.tags == {"team": "search"}  # string values only


def test_tags_come_from_metadata_the_user_field_and_the_tags_header_in_that_order() -> None:
    req = parse_chat_request(raw(metadata={"env": "dev", "feature": "search"}, user="user-42"),
                             "env=prod, cost-center=cc%2F7 ,team.name=ml")
    assert req.tags == {"env": "prod", "feature": "search", "user": "user-42", "cost-center": "cc/7",
                        "team.name": "ml"}
    assert parse_chat_request(raw(user=""), "").tags == {}
    full = parse_chat_request(raw(metadata={f"m{i}": "v" for i in range(16)}, user="u"),
                              ",".join(f"h{i}=v" for i in range(16)))
    assert len(full.tags) == 33  # each source bounded on its own


@pytest.mark.parametrize(
    ("header", "user"),
    [
        ("novalue", None), ("=v", None), ("bad key=v", None), ("k=v,k=w", None), ("k=%0Aline", None),
        ("k=" + "v" * 513, None), (",".join(f"h{i}=v" for i in range(17)), None), ("k=v" + " " * 5000, None),
        (None, 7), (None, "u" * 513),
    ],
)
def test_bad_tags_are_400_naming_where(header: str | None, user: object) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_chat_request(raw(**({} if user is None else {"user": user})), header)
    assert err.value.status == 400 and err.value.param == ("X-Tollgate-Tags" if header else "user")


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b"{", None, "invalid_json"),
        (b"", None, "invalid_json"),
        (b"[]", None, "invalid_type"),
        (b'"text"', None, "invalid_type"),
        (orjson.dumps({"messages": [{"role": "user", "content": "x"}]}), "model", "missing_required_parameter"),
        (orjson.dumps({"model": "", "messages": [{"role": "user", "content": "x"}]}), "model", "invalid_type"),
        (orjson.dumps({"model": "m"}), "messages", "missing_required_parameter"),
        (orjson.dumps({"model": "m", "messages": {}}), "messages", "invalid_type"),
        (orjson.dumps({"model": "m", "messages": []}), "messages", "invalid_value"),
        (orjson.dumps({"model": "m", "messages": ["hi"]}), "messages[0]", "invalid_type"),
        (orjson.dumps({"model": "m", "messages": [{"role": "robot", "content": "x"}]}), "messages[0].role",
         "invalid_value"),
        (orjson.dumps({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}),
         "messages[0].content[0].text", "invalid_type"),
        (orjson.dumps({"model": "m", "messages": [{"role": "user", "content": ["x"]}]}),
         "messages[0].content[0]", "invalid_type"),
        (orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x", "name": 1}]}),
         "messages[0].name", "invalid_type"),
        (raw(max_tokens=-1), "max_tokens", "invalid_value"),
        (raw(max_tokens=0), "max_tokens", "invalid_value"),
        (raw(max_tokens=1.5), "max_tokens", "invalid_type"),
        (raw(max_tokens=True), "max_tokens", "invalid_type"),
        (raw(max_completion_tokens=-3), "max_completion_tokens", "invalid_value"),
        (raw(n=129), "n", "invalid_value"),
        (raw(n=0), "n", "invalid_value"),
        (raw(stream=1), "stream", "invalid_type"),
        (raw(stream=True, stream_options=[]), "stream_options", "invalid_type"),
        (raw(stream=True, stream_options={"include_usage": "yes"}), "stream_options.include_usage", "invalid_type"),
        (raw(metadata=["a"]), "metadata", "invalid_type"),
        (raw(metadata={f"k{i}": "v" for i in range(17)}), "metadata", "invalid_value"),
        (raw(metadata={"": "v"}), "metadata", "invalid_value"),
    ],
)
def test_invalid_requests_name_the_param(body: bytes, param: str | None, code: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_chat_request(body)
    assert (err.value.param, err.value.code, err.value.status) == (param, code, 400)
    assert err.value.payload()["error"]["type"] == "invalid_request_error"


def test_n_choices_are_held_for_n_times_the_cap_and_share_a_cap_the_client_did_not_give() -> None:
    request = parse_chat_request(raw(n=4, max_tokens=50))
    assert (request.choices, request.held_output_tokens) == (4, 200)
    assert orjson.loads(request.forwarded_body(None, 200))["max_tokens"] == 50  # the client's per-choice cap
    uncapped = parse_chat_request(raw(n=3))
    assert uncapped.held_output_tokens == 0  # billing holds for the model's cap, once
    assert orjson.loads(uncapped.forwarded_body(None, 16384))["max_completion_tokens"] == 16384 // 3
    with pytest.raises(InvalidRequest) as err:
        uncapped.forwarded_body(None, 2)
    assert err.value.param == "n"
    for bad in (0, 129, "2"):
        with pytest.raises(InvalidRequest) as err:
            parse_chat_request(raw(n=bad))
        assert err.value.param == "n"
    assert parse_chat_request(raw(n=1)).held_output_tokens == 0


IMAGE = {"type": "image_url", "image_url": {"url": "u"}}


def test_prompt_texts_in_order_and_redaction_in_place() -> None:
    messages = [
        {"role": "system", "content": "sys A"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
        {"role": "user", "content": [{"type": "text", "text": "part B"}, IMAGE,
                                     {"type": "text", "text": "part C", "extra": 1}]},
        {"role": "tool", "content": "tool D", "tool_call_id": "c"},
    ]
    req = parse_chat_request(orjson.dumps({"model": "m", "messages": messages, "temperature": 0}))
    assert req.prompt_texts() == ["sys A", "part B", "part C", "tool D"]
    out = orjson.loads(req.forwarded_body(["S", "B", "C", "D"]))
    assert out["messages"][0]["content"] == "S"
    assert out["messages"][2]["content"] == [{"type": "text", "text": "B"}, IMAGE,
                                             {"type": "text", "text": "C", "extra": 1}]
    assert out["messages"][3]["content"] == "D"
    assert out["messages"][1] == messages[1] and out["temperature"] == 0
    # The parsed request itself is untouched (it is what the client sent).
    assert req.prompt_texts() == ["sys A", "part B", "part C", "tool D"]
    with pytest.raises(ValueError):
        req.forwarded_body(["too few"])


def test_usage_chunk_carries_the_stream_identity() -> None:
    first = orjson.dumps({"id": "chatcmpl-1", "model": "up-model", "created": 17, "system_fingerprint": "fp",
                          "choices": []})
    meta = StreamMeta.from_chunk(first, fallback_id="x", fallback_model="y")
    chunk = orjson.loads(usage_chunk(meta, Usage(3, 4, 7, 1, 2)))
    assert chunk == {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 17, "model": "up-model",
                     "system_fingerprint": "fp", "choices": [],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
                               "prompt_tokens_details": {"cached_tokens": 1},
                               "completion_tokens_details": {"reasoning_tokens": 2}}}
    fallback = StreamMeta.from_chunk(b"not json", fallback_id="chatcmpl-req", fallback_model="m")
    assert (fallback.id, fallback.model) == ("chatcmpl-req", "m")


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens", "n"])
@pytest.mark.parametrize("value", [2**63, 2**63 - 1, 2**31, -1, -(2**63)])
def test_token_counts_out_of_range_are_400(name: str, value: int) -> None:
    """A count that does not fit downstream (int64 holds, token × price products) is the client's error, not a 500."""
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(raw(**{name: value}))
    assert info.value.param == name


def test_a_count_beyond_64_bits_is_400() -> None:
    with pytest.raises(InvalidRequest):
        parse_chat_request(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1'
                           + b"0" * 30 + b"}")


@pytest.mark.parametrize(
    ("field", "value"),
    [("service_tier", "priority"), ("service_tier", "flex"), ("service_tier", "auto"), ("store", True),
     ("modalities", ["text", "audio"]), ("audio", {"voice": "alloy", "format": "wav"})],
)
def test_fields_that_change_the_operators_cost_or_retention_are_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(raw(**{field: value}))
    assert (info.value.param, info.value.code) == (field, "unsupported_parameter")


@pytest.mark.parametrize(
    "fields", [{"service_tier": "default"}, {"store": False}, {"modalities": ["text"]}, {}]
)
def test_their_defaults_are_accepted(fields: dict[str, object]) -> None:
    assert parse_chat_request(raw(**fields)).model == "gpt-4o-mini"


def test_the_forwarded_body_carries_only_the_cap_the_hold_used() -> None:
    both = parse_chat_request(raw(max_tokens=5000, max_completion_tokens=10))
    assert both.max_output_tokens == 10
    forwarded = orjson.loads(both.forwarded_body())
    assert forwarded["max_completion_tokens"] == 10 and "max_tokens" not in forwarded
    # Equal caps, or one of them: forwarded byte for byte.
    same = parse_chat_request(raw(max_tokens=10, max_completion_tokens=10))
    assert same.forwarded_body() == same.raw
    # No cap from the client: billing's cap for the held model goes upstream.
    none = parse_chat_request(raw())
    assert orjson.loads(none.forwarded_body(output_cap=16384))["max_completion_tokens"] == 16384
    assert none.forwarded_body() == none.raw
    assert parse_chat_request(raw(max_tokens=7)).forwarded_body(output_cap=16384) == raw(max_tokens=7)


def test_billed_request_parts_are_prompt_extras() -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    extras = {"tools": [{"type": "function", "function": {"name": "f"}}], "functions": [{"name": "g"}],
              "response_format": schema, "prediction": {"type": "content", "content": "long predicted text"}}
    req = parse_chat_request(raw(**extras, temperature=0.5))
    assert req.prompt_extras == list(extras.values())


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", "hot"), ("temperature", 2.5), ("temperature", -0.1), ("temperature", True), ("top_p", 1.5),
     ("frequency_penalty", -3), ("presence_penalty", "0"), ("seed", 1.5), ("seed", 2**63)],
)
def test_sampling_parameters_outside_openais_ranges_are_400_naming_them(field: str, value: object) -> None:
    """A lenient upstream would take a string temperature (the canary sweep found the mock did); OpenAI answers 400."""
    with pytest.raises(InvalidRequest) as err:
        parse_chat_request(raw(**{field: value}))
    assert err.value.param == field and err.value.status == 400


def test_sampling_parameters_within_range_pass_through() -> None:
    parsed = parse_chat_request(raw(temperature=0, top_p=0.5, frequency_penalty=-2, presence_penalty=2.0, seed=-7))
    assert parsed.body["temperature"] == 0 and parsed.body["seed"] == -7
