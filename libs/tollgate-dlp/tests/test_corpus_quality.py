"""Detection quality on the labelled corpus (bench/dlp_corpus.py, fixed seed): the issue's precision and recall
targets, per detector and for every API-key format. Quality only: speed is measured by ``python -m bench.dlp``."""

from __future__ import annotations

from tollgate_dlp.engine import build_scanner

from bench.dlp import TARGET_PRECISION, TARGET_RECALL, evaluate
from bench.dlp_corpus import generate


def test_corpus_is_deterministic_and_mixed() -> None:
    first, again = generate(300), generate(300)
    assert first == again
    assert generate(300, seed=1) != first
    with_data = sum(1 for s in first if s.labels)
    assert 0.3 < with_data / len(first) < 0.7  # sentences with and without sensitive data
    for sample in first:  # labels point at real spans of their sentence
        for label in sample.labels:
            assert 0 <= label.start < label.end <= len(sample.text)


def test_precision_and_recall_meet_the_targets() -> None:
    scores, kinds = evaluate(generate(1000), build_scanner(engine="hyperscan"))
    assert set(scores) == set(TARGET_RECALL)  # every detector is exercised
    for name, score in scores.items():
        assert score.recall >= TARGET_RECALL[name], (name, score.recall)
        assert score.precision >= TARGET_PRECISION, (name, score.precision)
    api_keys = {"aws", "openai", "anthropic", "google", "github", "slack"}
    assert api_keys <= set(kinds)
    for kind in api_keys:
        assert kinds[kind].recall >= 0.99, (kind, kinds[kind].recall)
