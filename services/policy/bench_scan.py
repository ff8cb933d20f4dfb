"""DLP throughput on this machine: MB/s and p99 latency of scanning (and fully inspecting) a 4 KB prompt.

Not a test (DESIGN.md: benchmarks print figures, tests do not time). Budget: ≥ 50 MB/s per core and p99 ≤ 1 ms
for a 4 KB prompt. Run: ``.venv/bin/python services/policy/bench_scan.py [--seconds N]``.

Three prompt shapes, each exactly 4096 characters: ordinary chat prose with a few numbers and one card, one email
and one key planted (so redaction does real work); Python source; and digit-dense JSON, the slowest case for a
card detector.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable

from tollgate_policy.detectors import scan
from tollgate_policy.domain import PolicySet, inspect

SIZE = 4096
_WORDS = (
    "please summarize the following report about quarterly revenue growth customer retention and churn for each "
    "region then draft a short email to the team explaining what changed since last year and which metrics we "
    "should watch next quarter keep it friendly but precise"
).split()


def chat_prompt(rng: random.Random) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < SIZE:
        roll = rng.random()
        if roll < 0.03:
            words.append(str(rng.randint(1, 99_999)))
        elif roll < 0.035:
            words.append(f"{rng.randint(1, 12)}.{rng.randint(0, 9)}.{rng.randint(0, 30)}")
        else:
            words.append(rng.choice(_WORDS))
    planted = ["card 4111 1111 1111 1111,", "mail dana@example.com", "key AKIA" + "IOSFODNN7EXAMPLE"]
    for item in planted:
        words.insert(rng.randrange(len(words)), item)
    return " ".join(words)[:SIZE]


def code_prompt() -> str:
    import tollgate_policy.domain as module

    with open(module.__file__, encoding="utf-8") as source:
        text = source.read()
    return (text * (SIZE // len(text) + 1))[:SIZE]


def json_prompt(rng: random.Random) -> str:
    rows = [
        {
            "id": rng.randint(10**5, 10**12),
            "price": round(rng.random() * 100, 4),
            "sku": f"SKU-{rng.randint(1000, 9999)}-{rng.randint(100, 999)}",
            "ts": "2026-11-23T17:56:23Z",
        }
        for _ in range(80)
    ]
    return json.dumps(rows)[:SIZE]


def measure(work: Callable[[], object], seconds: float) -> tuple[float, float, float]:
    """(MB/s from the mean, p50 µs, p99 µs) over as many runs as fit in ``seconds``."""
    for _ in range(200):
        work()
    samples: list[float] = []
    clock = time.perf_counter
    deadline = clock() + seconds
    while clock() < deadline:
        started = clock()
        work()
        samples.append(clock() - started)
    samples.sort()
    mean = sum(samples) / len(samples)
    return SIZE / mean / 1e6, samples[len(samples) // 2] * 1e6, samples[int(len(samples) * 0.99)] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement (default 2)")
    args = parser.parse_args()
    rng = random.Random(7)
    prompts = {"chat": chat_prompt(rng), "code": code_prompt(), "json": json_prompt(rng)}
    policy = PolicySet.default("acc_bench")
    print(f"DLP on one core, {SIZE}-character prompts (budget: >= 50 MB/s, p99 <= 1000 us)")
    print(f"{'prompt':<8}{'work':<10}{'findings':>9}{'MB/s':>9}{'p50 us':>9}{'p99 us':>9}")
    for name, text in prompts.items():
        findings = len(scan(text))
        for label, work in (("scan", lambda t=text: scan(t)), ("inspect", lambda t=text: inspect([t], policy))):
            mb_s, p50, p99 = measure(work, args.seconds)
            print(f"{name:<8}{label:<10}{findings:>9}{mb_s:>9.1f}{p50:>9.1f}{p99:>9.1f}")


if __name__ == "__main__":
    main()
