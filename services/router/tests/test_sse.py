"""Server-sent events arrive split anywhere by the network; the decoder must yield the same events regardless."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st
from tollgate_router.sse import SseDecoder

STREAM = (
    b": keep-alive comment\n\n"
    b'data: {"id":"1","choices":[{"delta":{"content":"h\xc3\xa9"}}]}\n\n'
    b"event: message\r\n"
    b'data: {"id":"2",\r\n'
    b'data: "x":1}\r\n\r\n'
    b"data: [DONE]\n\n"
)
EVENTS = [
    b'{"id":"1","choices":[{"delta":{"content":"h\xc3\xa9"}}]}',
    b'{"id":"2",\n"x":1}',
    b"[DONE]",
]


def test_whole_stream() -> None:
    decoder = SseDecoder()
    assert decoder.feed(STREAM) + decoder.close() == EVENTS


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_yields_the_same_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    decoder = SseDecoder()
    events: list[bytes] = []
    for start, end in pairwise(bounds):
        events += decoder.feed(STREAM[start:end])
    assert events + decoder.close() == EVENTS


def test_an_unterminated_last_event_is_flushed_on_close() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b'data: {"a":1}') == []
    assert decoder.close() == [b'{"a":1}']
