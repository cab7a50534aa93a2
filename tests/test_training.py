"""The training pipeline's parts, and the trained model it ships: loads, equals model2vec, beats its base."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import numpy as np
import pytest

from swiftembed import Embedder
from swiftembed.core.model import DEFAULT_MODEL_DIR
from swiftembed.eval.quality import SUITE_COUNTS, Pair, accuracy, check_suite, evaluate_sts, read_pairs, run_suite
from tests.conftest import STSB_DIR
from training.corpus import WORDNET_DIR, sample_sentences, wordnet_antonyms, wordnet_sentences
from training.train import split_pairs

TRAINED_DIR = DEFAULT_MODEL_DIR.parent / "swiftembed-potion-sts-8M"
STSB = STSB_DIR
needs_wordnet = pytest.mark.skipif(not (WORDNET_DIR / "data.noun").exists(), reason="Debian wordnet-base absent")
needs_stsb = pytest.mark.skipif(not (STSB / "sts-dev.csv").exists(), reason="../shared/data/stsb absent")
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch (eval extra) absent")


@pytest.fixture(scope="module")
def trained() -> Embedder:
    return Embedder.load(TRAINED_DIR)


@pytest.fixture(scope="module")
def base() -> Embedder:
    return Embedder.load()


# The shipped model ---------------------------------------------------------------------------------------------
def test_trained_model_files_match_their_checksums():
    for line in (TRAINED_DIR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((TRAINED_DIR / name).read_bytes()).hexdigest() == digest, name


def test_trained_model_costs_what_the_base_costs(trained, base):
    """Same tokenizer plus the "not X" phrase tokens; one row per token id; the table within 32 MB."""
    rows, dim = base.model.embeddings.shape
    summary = json.loads((TRAINED_DIR / "training.json").read_text())
    assert trained.model.embeddings.shape == (rows + summary["negation_phrases"], dim)
    assert trained.vocab_size == len(trained.model.embeddings)
    assert trained.tokenizer._tokenizer.get_vocab(with_added_tokens=False) == \
        base.tokenizer._tokenizer.get_vocab(with_added_tokens=False)
    assert trained.tokenizer.has_fast_path
    assert (TRAINED_DIR / "model.safetensors").stat().st_size <= 32e6
    expected = base.tokenize("The food was .")[0]
    expected.insert(3, trained.tokenizer._tokenizer.token_to_id("not good"))
    assert trained.tokenize("The food was not good.") == [expected]


def test_trained_model_vectors_equal_model2vec(trained):
    from model2vec import StaticModel

    texts = ["A man is playing a flute.", "The food was not good.", "naïve café owners", "", "Bank of the river",
             "It is NOT open, not safe and not cold.", "cannot goodness"]
    stored = StaticModel.from_pretrained(str(TRAINED_DIR))
    # model2vec averages a float16 table in float16; given the same rows widened, it agrees to float32 rounding.
    np.testing.assert_allclose(trained.encode(texts), stored.encode(texts), rtol=0, atol=2e-3)
    widened = StaticModel(vectors=stored.embedding.astype(np.float32), tokenizer=stored.tokenizer, normalize=True)
    np.testing.assert_allclose(trained.encode(texts), widened.encode(texts), rtol=0, atol=1e-6)
    assert [list(ids) for ids in widened.tokenize(texts)] == trained.tokenize(texts)


@needs_stsb
def test_trained_model_beats_its_base_on_stsb_dev_by_two_points(trained, base):
    dev = read_pairs(STSB / "sts-dev.csv")
    ours, theirs = evaluate_sts(trained.encode, dev).spearman, evaluate_sts(base.encode, dev).spearman
    assert ours >= theirs + 2, (ours, theirs)


def test_trained_model_loses_no_failure_mode_category_and_gains_on_negation(trained, base):
    cases = check_suite()
    ours, theirs = accuracy(run_suite(trained.encode, cases)), accuracy(run_suite(base.encode, cases))
    for category in [*SUITE_COUNTS, "overall"]:
        assert ours[category]["correct"] >= theirs[category]["correct"], category
    assert ours["negation"]["correct"] > theirs["negation"]["correct"]


def test_trained_model_loads_by_its_bundled_name(trained):
    by_name = Embedder.load("swiftembed-potion-sts-8M")
    assert by_name.model_id == "swiftembed-potion-sts-8M"
    np.testing.assert_array_equal(by_name.encode("a flute"), trained.encode("a flute"))


def test_trained_model_records_how_it_was_made():
    summary = json.loads((TRAINED_DIR / "training.json").read_text())
    assert summary["final_validation_spearman"] > summary["base_validation_spearman"] + 2
    assert "wordnet-base" in (TRAINED_DIR / "PROVENANCE.md").read_text()


# Pipeline parts ------------------------------------------------------------------------------------------------
def test_split_is_seeded_and_disjoint():
    pairs = [Pair(i, f"a{i}", f"b{i}", i % 6) for i in range(100)]
    fit, val = split_pairs(pairs, seed=3)
    assert (fit, val) == split_pairs(pairs, seed=3)
    assert len(val) == 10 and not {p.line for p in fit} & {p.line for p in val}
    assert split_pairs(pairs, seed=4)[1] != val


@needs_wordnet
def test_wordnet_corpus_reads_glosses_and_examples():
    sentences = set(wordnet_sentences())
    assert len(sentences) > 150_000
    assert "a cart for carrying small loads; has handles and one or more wheels" in sentences
    assert "he awoke with a painful stiffness in his neck" in sentences  # a quoted example
    assert not any(s.startswith(("1 This software", "  ")) for s in sentences)  # no licence header
    first = sample_sentences(50, seed=1, exclude={"he awoke with a painful stiffness in his neck"})
    assert first == sample_sentences(50, seed=1, exclude={"he awoke with a painful stiffness in his neck"})
    assert len(set(first)) == 50


@needs_wordnet
def test_wordnet_antonyms_take_the_most_frequent_sense():
    antonyms = wordnet_antonyms()
    assert antonyms["good"] == ["bad"] and antonyms["pass"] == ["fail"] and antonyms["cold"] == ["hot"]
    assert len(antonyms) > 3000 and all(w.isalpha() and all(a.isalpha() for a in v) for w, v in antonyms.items())


@needs_torch
def test_cosent_loss_prefers_the_gold_order():
    import torch

    from training.train import cosent_loss

    labels = torch.tensor([5.0, 3.0, 1.0, 0.0])
    right = cosent_loss(torch.tensor([0.9, 0.6, 0.3, 0.1]), labels)
    wrong = cosent_loss(torch.tensor([0.1, 0.3, 0.6, 0.9]), labels)
    assert right < 0.1 < wrong
