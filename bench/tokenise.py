"""Tokenising a prompt on the event loop vs in a worker thread: what each costs, and what the loop suffers.

For prompts of several sizes this prints, per way of counting (``inline``: on the loop; ``thread``: the
tokeniser's worker thread, as ingress does above ``INLINE_MAX_BYTES``):

- ``count ms``: wall time of one count (median of the runs), what the request itself waits;
- ``loop stall ms``: the longest the event loop went without running a 1 ms ticker meanwhile, what every other
  request on the replica waits.

The threshold is where the hand-off to a thread (about constant) stops being large next to the count.
Figures, not a test: it asserts nothing.

    .venv/bin/python -m bench.tokenise
"""

from __future__ import annotations

import asyncio
import statistics
import time

from tollgate_ingress.tokens import INLINE_MAX_BYTES, PromptTokenCounter

SIZES = (1024, 4096, 16 * 1024, 32 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024)
#: English-like text with some numbers and punctuation: about 4 characters per token, as prompts are.
WORDS = ("the quick brown fox jumps over 12 lazy dogs, while invoice #4821 waits; "
         "résumé naïve café déjà vu — tokens per byte vary. ")


def _messages(size: int) -> list[dict[str, object]]:
    text = (WORDS * (size // len(WORDS) + 1))[:size]
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]


async def _ticker(stop: asyncio.Event, worst: list[float]) -> None:
    """Wakes every millisecond; ``worst[0]``: the longest it overslept (the loop was busy meanwhile)."""
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        worst[0] = max(worst[0], now - last - 0.001)
        last = now


async def _measure(counter: PromptTokenCounter, size: int, runs: int) -> tuple[float, float]:
    messages = _messages(size)
    stalls: list[float] = []
    times: list[float] = []
    for _ in range(runs):
        stop, worst = asyncio.Event(), [0.0]
        task = asyncio.create_task(_ticker(stop, worst))
        await asyncio.sleep(0.005)
        worst[0] = 0.0
        started = time.perf_counter()
        await counter.count(messages, (), size)
        times.append(time.perf_counter() - started)
        stop.set()
        await task
        stalls.append(worst[0])
    return statistics.median(times) * 1000, statistics.median(stalls) * 1000


async def main() -> None:
    inline = PromptTokenCounter(inline_max_bytes=1 << 62)
    threaded = PromptTokenCounter(inline_max_bytes=-1)
    inline.messages(_messages(1024))  # load the encoding once
    print(f"ingress counts inline up to INLINE_MAX_BYTES = {INLINE_MAX_BYTES} bytes of request body")
    print(f"{'prompt':>10} {'inline count ms':>16} {'inline stall ms':>16} {'thread count ms':>16} "
          f"{'thread stall ms':>16}")
    for size in SIZES:
        runs = 30 if size <= 64 * 1024 else 7
        i_count, i_stall = await _measure(inline, size, runs)
        t_count, t_stall = await _measure(threaded, size, runs)
        print(f"{size:>10} {i_count:>16.3f} {i_stall:>16.3f} {t_count:>16.3f} {t_stall:>16.3f}")
    threaded.close()


if __name__ == "__main__":
    asyncio.run(main())
