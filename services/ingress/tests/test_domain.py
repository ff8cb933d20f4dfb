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
        (raw(n=2), "n", "invalid_value"),
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


def test_n_greater_than_one_says_not_supported_yet() -> None:
    with pytest.raises(InvalidRequest, match="not supported yet"):
        parse_chat_request(raw(n=4))
    assert parse_chat_request(raw(n=1)).model == "gpt-4o-mini"


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
    out = orjson.loads(req.redacted_body(["S", "B", "C", "D"]))
    assert out["messages"][0]["content"] == "S"
    assert out["messages"][2]["content"] == [{"type": "text", "text": "B"}, IMAGE,
                                             {"type": "text", "text": "C", "extra": 1}]
    assert out["messages"][3]["content"] == "D"
    assert out["messages"][1] == messages[1] and out["temperature"] == 0
    # The parsed request itself is untouched (it is what the client sent).
    assert req.prompt_texts() == ["sys A", "part B", "part C", "tool D"]
    with pytest.raises(ValueError):
        req.redacted_body(["too few"])


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
