"""An incremental decoder for server-sent events, as upstream providers stream chat completions.

Network reads split events anywhere (mid-line, mid-UTF-8 character), so bytes are buffered until a blank line
completes an event. Only ``data`` fields matter here; comments (``: keep-alive``, OpenRouter's
``: OPENROUTER PROCESSING``) and the ``event``/``id``/``retry`` fields are skipped.
"""

from __future__ import annotations

__all__ = ["SseDecoder"]


class SseDecoder:
    def __init__(self) -> None:
        self._tail = b""
        self._data: list[bytes] = []

    def feed(self, data: bytes) -> list[bytes]:
        """Bytes in; the ``data`` payload of each event completed by them out (multi-line data joined by LF)."""
        lines = (self._tail + data).split(b"\n")
        self._tail = lines.pop()
        events: list[bytes] = []
        for line in lines:
            self._line(line, events)
        return events

    def close(self) -> list[bytes]:
        """Events left at the end of the stream (a last event the upstream did not terminate with a blank line)."""
        events: list[bytes] = []
        if self._tail:
            self._line(self._tail, events)
            self._tail = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if self._data:
                events.append(b"\n".join(self._data))
                self._data = []
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if name == b"data":
            self._data.append(value[1:] if value.startswith(b" ") else value)
