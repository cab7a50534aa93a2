"""The larger-vocabulary recipe (training/larger.py) and, when bundled, its model.

The model directory is checked against model2vec itself (same ids, same vectors) because its tokenizer is not
potion-base-8M's: all-MiniLM-L6-v2's WordPiece vocabulary plus whole English words and "not X" added tokens.
"""

from __future__ import annotations

import numpy as np
import pytest

from swiftembed.core.model import MODELS_DIR
from tests.conftest import VARIED_TEXTS

NAME = "swiftembed-words-28M"
MODEL_DIR = MODELS_DIR / NAME


def test_english_words_are_plain_and_ordered():
    pytest.importorskip("wordfreq")
    from training.larger import english_words

    words = english_words(2_000)
    assert len(words) == len(set(words)) == 2_000
    assert words[:3] == ["the", "to", "and"] and all(w.isascii() and w.isalpha() and w.islower() for w in words)


def test_distilled_table_is_model2vecs_post_processing():
    """PCA first, then each row times its Zipf/SIF weight, exactly as `distill_from_model` orders them."""
    pytest.importorskip("torch")  # model2vec.distill raises a plain ImportError without it
    pytest.importorskip("model2vec.distill")
    from model2vec.distill.inference import apply_pca, compute_weights

    from training.larger import distilled_table

    raw = np.random.default_rng(0).normal(size=(500, 24)).astype(np.float32)
    expected = apply_pca(raw.astype(np.float64), 8) * compute_weights(500, sif_coefficient=1e-4)[:, None]
    np.testing.assert_allclose(distilled_table(raw, 8, 1e-4), expected, rtol=1e-5, atol=1e-6)
    assert distilled_table(raw, 24, 1e-4).shape == (500, 24)  # the teacher's width: no reduction


def test_int8_storage_keeps_rows(tmp_path):
    pytest.importorskip("safetensors")
    from training.larger import store

    table = np.random.default_rng(1).normal(size=(300, 32)).astype(np.float32)
    assert store(tmp_path, table, "int8") > 0.9999
    assert store(tmp_path, table, "float16") > 0.99999


def test_start_from_takes_the_shared_rows():
    """--start: a token the trained model also has gets its trained row; the others are mapped into its space."""
    import json

    from swiftembed import Embedder
    from training.larger import start_from

    base = Embedder.load()
    vocab = base.model.tokenizer.get_vocab()
    words = ["the", "good", "film", "zzyzxqq"]
    tokenizer_json = json.dumps({"model": {"vocab": {w: i for i, w in enumerate(words)}}})
    table = np.random.default_rng(2).normal(size=(len(words), base.dim)).astype(np.float32)
    out, taken = start_from(table, tokenizer_json, base)
    assert taken == 3 and out.shape == table.shape and out.dtype == np.float32
    for i, word in enumerate(words[:3]):
        np.testing.assert_array_equal(out[i], base.table[vocab[word]])
    assert np.isfinite(out[3]).all() and not np.allclose(out[3], table[3])


bundled = pytest.mark.skipif(not (MODEL_DIR / "model.safetensors").exists(), reason=f"{NAME} is not bundled")


@bundled
def test_bundled_model_equals_model2vec(sentences):
    model2vec = pytest.importorskip("model2vec")
    from swiftembed import Embedder

    texts = VARIED_TEXTS + sentences[:2000] + ["The food was not good.", "it is not open", "fragrant racemes"]
    ours = Embedder.load(NAME)
    theirs = model2vec.StaticModel.from_pretrained(str(MODEL_DIR))
    cut = [t[: 512 * theirs.median_token_length] for t in texts]
    assert ours.tokenize(texts) == theirs.tokenize(cut)
    np.testing.assert_allclose(ours.encode(texts), theirs.encode(texts), rtol=0, atol=1e-6)


@bundled
def test_bundled_model_has_whole_words_and_phrases():
    from swiftembed import Embedder

    embedder = Embedder.load(NAME)
    vocab = embedder.model.tokenizer.get_vocab()
    assert all(w in vocab for w in ("fragrant", "inhabitant", "not good", "not open"))
    assert [len(ids) for ids in embedder.tokenize(["fragrant", "The food was not good."])] == [1, 5]
    assert embedder.model.table_dtype == "int8" and embedder.model.weights is not None and embedder.dim == 256
