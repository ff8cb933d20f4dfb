"""The DLP benchmark (``python -m bench.dlp``, also part of ``make bench``): quality and speed of the detectors.

Prints, for the labelled corpus of :mod:`bench.dlp_corpus` (fixed seed):
- precision and recall per detector, and recall per secret kind. A finding is a true positive when a label of the
  same detector overlaps it; a label is found when a finding of its detector overlaps it;
- scan throughput in MB/s on one core for each engine (Hyperscan, pure ``re``) over the whole corpus and over
  4 KB prompts made of it (dense: nearly every sentence holds a candidate);
- the same, with p50/p99, for three 4 KB prompt shapes closer to real traffic: chat prose with one card, one email
  and one key planted, Python source, and digit-dense JSON (the slowest shape for a card detector); plus the whole
  in-process inspection (scan, policy, redaction) for each;
- p99 latency for a 4 KB prompt: the in-process scan, and ``Inspect`` over gRPC against a real policy process
  (``python -m tollgate_policy`` on a fresh SQLite file), which adds the policy lookup, redaction and gRPC.
Asserts nothing: the targets are checked for quality by ``test_corpus_quality.py``; speed lives here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tollgate_dlp import document, domain
from tollgate_dlp.detectors import Match
from tollgate_dlp.engine import Scanner, build_scanner

from bench.dlp_corpus import Sample, generate

__all__ = ["Score", "evaluate", "main"]

TARGET_RECALL = {"payment_card": 0.99, "iban": 0.99, "email": 0.99, "secret": 0.99,
                 "phone": 0.95, "ip_address": 0.95, "ssn": 0.95}  # fmt: skip
TARGET_PRECISION = 0.95


class Score:
    """True positives, false positives and false negatives for one detector (or one secret kind)."""

    def __init__(self) -> None:
        self.tp = self.fp = self.fn = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def evaluate(samples: Iterable[Sample], scanner: Scanner) -> tuple[dict[str, Score], dict[str, Score]]:
    """(scores per detector, recall scores per secret kind) of ``scanner`` on ``samples``."""
    scores: dict[str, Score] = defaultdict(Score)
    kinds: dict[str, Score] = defaultdict(Score)
    for sample in samples:
        found = scanner.scan(sample.text)
        for label in sample.labels:
            hit = any(_overlap(m, label.detector, label.start, label.end) for m in found)
            score = scores[label.detector]
            if hit:
                score.tp += 1
            else:
                score.fn += 1
            if label.detector == "secret":
                kind = kinds[label.kind]
                kind.tp += hit
                kind.fn += not hit
        for m in found:
            if not any(_overlap(m, label.detector, label.start, label.end) for label in sample.labels):
                scores[m.detector.name].fp += 1
    return dict(scores), dict(kinds)


def _overlap(match: Match, detector: str, start: int, end: int) -> bool:
    return match.detector.name == detector and match.start < end and start < match.end


def _prompts_4k(samples: Sequence[Sample]) -> list[str]:
    prompts, current = [], ""
    for sample in samples:
        current += sample.text + "\n"
        if len(current) >= 4096:
            prompts.append(current[:4096])
            current = ""
    return prompts


SIZE = 4096
_WORDS = (
    "please summarize the following report about quarterly revenue growth customer retention and churn for each "
    "region then draft a short email to the team explaining what changed since last year and which metrics we "
    "should watch next quarter keep it friendly but precise"
).split()


def _chat_prompt(rng: random.Random) -> str:
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


def _code_prompt() -> str:
    text = Path(document.__file__).read_text(encoding="utf-8")
    return (text * (SIZE // len(text) + 1))[:SIZE]


def _json_prompt(rng: random.Random) -> str:
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


def shaped_prompts() -> dict[str, str]:
    """The three 4 KB prompt shapes (fixed seed)."""
    rng = random.Random(7)
    return {"chat": _chat_prompt(rng), "code": _code_prompt(), "json": _json_prompt(rng)}


def _measure(
    work: Callable[[], object], size: int, seconds: float, *, warm_up: int = 200
) -> tuple[float, float, float]:
    """(MB/s from the mean, p50 µs, p99 µs) of ``work`` over ``size`` bytes, run as often as fits in ``seconds``."""
    for _ in range(warm_up):
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
    return size / mean / 1e6, samples[len(samples) // 2] * 1e6, samples[int(len(samples) * 0.99)] * 1e6


def _throughput(scanner: Scanner, texts: Sequence[str], seconds: float = 1.0) -> float:
    """MB/s on one core scanning every text of ``texts`` in turn."""
    size = sum(len(t.encode()) for t in texts)
    return _measure(lambda: [scanner.scan(t) for t in texts], size, seconds, warm_up=1)[0]


def _p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def _scan_latency_ms(scanner: Scanner, prompts: Sequence[str], n: int) -> float:
    latencies = []
    for i in range(n):
        prompt = prompts[i % len(prompts)]
        start = time.perf_counter()
        scanner.scan(prompt)
        latencies.append((time.perf_counter() - start) * 1000)
    return _p99(latencies)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _grpc_latency_ms(prompts: Sequence[str], n: int) -> tuple[float, float]:
    """(p50, p99) of Inspect over gRPC against a real ``python -m tollgate_policy`` process."""
    import grpc
    from tollgate.policy.v1 import policy_service_pb2 as pb
    from tollgate.policy.v1 import policy_service_pb2_grpc as pb_grpc

    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "POLICY_DATABASE_URL": f"sqlite:///{Path(tmp) / 'policy.db'}",
               "POLICY_GRPC_HOST": "127.0.0.1", "POLICY_GRPC_PORT": str(port),
               "POLICY_METRICS_PORT": str(_free_port()), "POLICY_LOG_LEVEL": "WARNING"}  # fmt: skip
        process = subprocess.Popen([sys.executable, "-m", "tollgate_policy"], env=env)  # noqa: ASYNC220
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await asyncio.wait_for(channel.channel_ready(), 30)
                stub = pb_grpc.PolicyServiceStub(channel)
                latencies = []
                for i in range(n + 50):
                    request = pb.InspectRequest(request_id=f"bench-{i}", account_id="acct-bench",
                                                texts=[prompts[i % len(prompts)]])  # fmt: skip
                    start = time.perf_counter()
                    await stub.Inspect(request)
                    if i >= 50:  # warm-up: the first calls load the policy and fill caches
                        latencies.append((time.perf_counter() - start) * 1000)
        finally:
            process.terminate()
            process.wait(10)
    ordered = sorted(latencies)
    return ordered[len(ordered) // 2], _p99(latencies)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=2400)
    parser.add_argument("--latency-requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per prompt-shape measurement")
    parser.add_argument("--no-grpc", action="store_true", help="skip the Inspect-over-gRPC measurement")
    args = parser.parse_args(argv)

    samples = generate(args.sentences)
    engines = {name: build_scanner(engine=name) for name in ("hyperscan", "python")}
    scores, kinds = evaluate(samples, engines["hyperscan"])
    labelled = sum(1 for s in samples if s.labels)
    print(f"DLP corpus: {len(samples)} sentences ({labelled} with sensitive data), seed fixed")
    print(f"{'detector':<14}{'labels':>8}{'found':>8}{'precision':>11}{'recall':>9}   target")
    for name, score in sorted(scores.items()):
        target = f"recall ≥ {TARGET_RECALL.get(name, 0):.2f}, precision ≥ {TARGET_PRECISION:.2f}"
        print(f"{name:<14}{score.tp + score.fn:>8}{score.tp + score.fp:>8}{score.precision:>11.3f}"
              f"{score.recall:>9.3f}   {target}")  # fmt: skip
    print("secret recall by kind: " + ", ".join(f"{k} {s.recall:.3f}" for k, s in sorted(kinds.items())))
    agree = all(engines["hyperscan"].scan(s.text) == engines["python"].scan(s.text) for s in samples)
    print(f"engines agree on every sentence: {agree}")

    prompts = _prompts_4k(samples)
    texts = [s.text for s in samples]
    for name, scanner in engines.items():
        print(
            f"throughput {name:<9}: {_throughput(scanner, texts):7.1f} MB/s (sentences), "
            f"{_throughput(scanner, prompts):7.1f} MB/s (4 KB prompts), one core; "
            f"in-process p99 for 4 KB: {_scan_latency_ms(scanner, prompts, args.latency_requests):.3f} ms"
        )
    policy = domain.PolicySet.default("acct-bench")
    print(f"4 KB prompt shapes, one core: {'shape':<6}{'engine':<11}{'work':<9}{'MB/s':>8}{'p50 us':>9}{'p99 us':>9}")
    for shape, text in shaped_prompts().items():
        size = len(text.encode())
        for name, scanner in engines.items():
            runs: list[tuple[str, Callable[[], object]]] = [("scan", lambda s=scanner, t=text: s.scan(t))]
            if name == "hyperscan":  # the service's default engine: the whole decision too (policy, redaction)
                runs.append(("inspect", lambda t=text: domain.inspect([t], policy)))
            for work_name, work in runs:
                mb_s, p50, p99 = _measure(work, size, args.seconds)
                print(f"{'':<30}{shape:<6}{name:<11}{work_name:<9}{mb_s:>8.1f}{p50:>9.1f}{p99:>9.1f}")
    if not args.no_grpc:
        p50, p99 = asyncio.run(_grpc_latency_ms(prompts, args.latency_requests))
        print(f"Inspect over gRPC, real policy process, 4 KB prompt: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
