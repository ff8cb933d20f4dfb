"""Server-sent events arrive split anywhere by the network; the decoder must yield the same events regardless."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tollgate_router.sse import EventTooLarge, SseDecoder

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


@pytest.mark.timeout(60)
def test_a_long_line_in_small_reads_is_decoded_in_linear_time() -> None:
    """8 MiB of one data line in 16-byte reads: joining the tail to every read (the old decoder) copies ~2 TB and
    never finishes; holding the pieces until the line ends does it in one pass."""
    line = b"x" * (8 * 2**20)
    decoder = SseDecoder(max_event_bytes=16 * 2**20)
    stream = b"data: " + line + b"\n\n"
    events: list[bytes] = []
    for start in range(0, len(stream), 16):
        events += decoder.feed(stream[start : start + 16])
    assert events == [line]


def test_an_event_beyond_the_limit_is_refused_before_it_is_buffered() -> None:
    decoder = SseDecoder(max_event_bytes=1000)
    assert decoder.feed(b"data: " + b"a" * 500 + b"\n") == []
    with pytest.raises(EventTooLarge):
        for _ in range(100):  # the second line pushes the event's data past 1000 bytes, long before it ends
            decoder.feed(b"b" * 100)


def test_a_line_without_end_beyond_the_limit_is_refused() -> None:
    decoder = SseDecoder(max_event_bytes=1000)
    decoder.feed(b"data: " + b"a" * 900)
    with pytest.raises(EventTooLarge):
        decoder.feed(b"a" * 200)


def test_events_under_the_limit_pass_and_the_count_restarts_per_event() -> None:
    decoder = SseDecoder(max_event_bytes=100)
    events: list[bytes] = []
    for _ in range(50):  # 50 events of 80 bytes: 4000 bytes in all, each under the limit
        events += decoder.feed(b"data: " + b"z" * 80 + b"\n\n: keep-alive\n\n")
    assert events == [b"z" * 80] * 50


def test_events_completed_before_an_oversized_one_in_the_same_read_are_returned_first() -> None:
    decoder = SseDecoder(max_event_bytes=100)
    assert decoder.feed(b"data: first\n\ndata: " + b"x" * 200) == [b"first"]
    with pytest.raises(EventTooLarge):
        decoder.feed(b"more")
    with pytest.raises(EventTooLarge):
        decoder.close()
