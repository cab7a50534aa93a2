"""The general model's training code (training/general.py): its corpus readers and the proxies it selects with.

The model itself is not bundled (docs/quality.md: it misses the classification target); `python -m
training.general --out DIR --seed 0` rebuilds it byte for byte.
"""

from __future__ import annotations

import numpy as np
import pytest


def test_fortune_corpus_and_lemmas():
    from training.corpus import FORTUNES_DIR, WORDNET_DIR, fortune_sentences, wordnet_lemmas

    if not (FORTUNES_DIR / "fortunes").exists() or not (WORDNET_DIR / "index.noun").exists():
        pytest.skip("Debian fortunes or wordnet-base absent")
    sentences = list(fortune_sentences())
    assert len(set(sentences)) > 15_000
    assert not any(s.startswith("--") or "\x08" in s or len(s) > 300 for s in sentences)
    lemmas = wordnet_lemmas()
    assert "kick the bucket" in lemmas and "dog" in lemmas and lemmas == sorted(set(lemmas))


def test_readout_proxies_reward_agreement():
    from training.general import proxies

    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(400, 12))
    teacher /= np.linalg.norm(teacher, axis=1, keepdims=True)
    pairs = rng.integers(0, 400, size=(2000, 2))
    same = proxies(teacher @ rng.normal(size=(12, 12)), teacher, pairs)  # an invertible linear map of the teacher
    noise = proxies(rng.normal(size=(400, 12)), teacher, pairs)
    assert same["readout"] > 95 and noise["readout"] < 30 and same["agreement"] > noise["agreement"]


def test_sentiment_proxy_reads_a_polarity_direction():
    pytest.importorskip("sklearn")
    from training.general import sentiment_proxy

    rng = np.random.default_rng(0)
    scores = rng.uniform(-1, 1, size=600).astype(np.float32)
    noise = rng.normal(size=(600, 16))
    readable = noise.copy()
    readable[:, 3] += 4 * np.sign(scores)  # one direction carries the polarity
    assert sentiment_proxy(readable, scores, seed=0) > 95
    assert 30 < sentiment_proxy(noise, scores, seed=0) < 70  # nothing to read: about a coin's accuracy


def test_polarity_signs():
    pytest.importorskip("vaderSentiment")
    from training.general import polarity

    scores = polarity(["a wonderful, moving film", "dull, boring and far too long", "a table with four legs"])
    assert scores[0] > 0.3 and scores[1] < -0.3 and scores[2] == 0
