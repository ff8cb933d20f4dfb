"""An incremental decoder for server-sent events, as upstream providers stream chat completions.

Network reads split events anywhere (mid-line, mid-UTF-8 character), so bytes are buffered until a blank line
completes an event. Only ``data`` fields matter here; comments (``: keep-alive``, OpenRouter's
``: OPENROUTER PROCESSING``) and the ``event``/``id``/``retry`` fields are skipped.

Linear in the bytes fed, however a line is split: the pieces of an unfinished line are kept in a list and joined
once, when its end arrives (joining the tail to every new piece was quadratic on a long line sent in small reads).
An event whose data (with the line still arriving) exceeds ``max_event_bytes`` raises :class:`EventTooLarge`
before it is held in full: an upstream cannot make the router buffer without bound.
"""

from __future__ import annotations

__all__ = ["EventTooLarge", "SseDecoder"]


class EventTooLarge(ValueError):
    """One event (or a line of it) exceeded the decoder's ``max_event_bytes``."""


class SseDecoder:
    def __init__(self, max_event_bytes: int = 8 * 2**20) -> None:
        self.max_event_bytes = max_event_bytes
        self._pieces: list[bytes] = []  # of the unfinished line
        self._pending = 0  # bytes in _pieces
        self._data: list[bytes] = []
        self._data_size = 0  # bytes in _data
        #: Met while events completed earlier in the same read were still to be returned: raised next time.
        self._error: EventTooLarge | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Bytes in; the ``data`` payload of each event completed by them out (multi-line data joined by LF).

        An oversized event raises :class:`EventTooLarge`, after the events completed before it were returned."""
        if self._error is not None:
            raise self._error
        events: list[bytes] = []
        try:
            self._feed(data, events)
        except EventTooLarge as exc:
            if not events:
                raise
            self._error = exc
        return events

    def _feed(self, data: bytes, events: list[bytes]) -> None:
        start = 0
        end = data.find(b"\n")
        while end >= 0:
            piece = data[start:end]
            if self._pieces:
                self._check(len(piece))
                self._pieces.append(piece)
                piece = b"".join(self._pieces)
                self._pieces, self._pending = [], 0
            else:
                self._check(len(piece))
            self._line(piece, events)
            start = end + 1
            end = data.find(b"\n", start)
        if start < len(data):
            self._check(len(data) - start)
            self._pieces.append(data[start:])
            self._pending += len(data) - start

    def close(self) -> list[bytes]:
        """Events left at the end of the stream (a last event the upstream did not terminate with a blank line)."""
        if self._error is not None:
            raise self._error
        events: list[bytes] = []
        if self._pieces:
            tail, self._pieces, self._pending = b"".join(self._pieces), [], 0
            self._line(tail, events)
        self._line(b"", events)
        return events

    def _check(self, more: int) -> None:
        if self._data_size + self._pending + more > self.max_event_bytes:
            raise EventTooLarge(f"a server-sent event exceeded {self.max_event_bytes} bytes")

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if self._data:
                events.append(b"\n".join(self._data))
                self._data, self._data_size = [], 0
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if name == b"data":
            value = value[1:] if value.startswith(b" ") else value
            self._data.append(value)
            self._data_size += len(value) + 1
