"""Our vectors equal model2vec's `StaticModel.encode` for the same model directory and texts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from swiftembed import Embedder
from swiftembed.core.model import DEFAULT_MODEL_DIR, load_model
from tests.conftest import VARIED_TEXTS, unigram_tokenizer, wordlevel_tokenizer, write_model

model2vec = pytest.importorskip("model2vec")

FLOAT32_ATOL = 5e-7  # float32 rounding: our kernel sums in another order than np.mean


def assert_parity(directory: Path, texts: list[str], atol: float, **kwargs) -> None:
    ours = Embedder.load(directory, **kwargs).encode(texts)
    theirs = np.asarray(model2vec.StaticModel.from_pretrained(str(directory)).encode(texts), dtype=np.float32)
    assert ours.shape == theirs.shape
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=atol)
    assert_token_parity(directory, texts, atol, **kwargs)


def assert_token_parity(directory: Path, texts: list[str], atol: float, **kwargs) -> None:
    """Token vectors (/embed_all) equal model2vec's `encode_as_sequence` at our token limit."""
    embedder = Embedder.load(directory, **kwargs)
    reference = model2vec.StaticModel.from_pretrained(str(directory))
    ours = embedder.token_vectors(texts)
    theirs = reference.encode_as_sequence(texts, max_length=embedder.max_tokens)
    assert len(ours) == len(theirs) == len(texts)
    for mine, other in zip(ours, theirs):
        assert mine.dtype == np.float32 and mine.shape == other.shape
        np.testing.assert_allclose(mine, other, rtol=0, atol=atol)


def test_default_model_token_vectors(sentences):
    texts = VARIED_TEXTS + ["word " * 700] + sentences[:500]
    assert_token_parity(DEFAULT_MODEL_DIR, texts, atol=0)
    assert Embedder.load().token_vectors("word " * 700).shape == (512, 256)


def test_default_model_varied_texts(embedder, reference):
    ours = embedder.encode(VARIED_TEXTS)
    theirs = reference.encode(VARIED_TEXTS)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=FLOAT32_ATOL)


def test_default_model_thousands_of_sentences(embedder, reference, sentences):
    texts = sentences + VARIED_TEXTS * 20
    assert len(texts) > 5000
    np.testing.assert_allclose(embedder.encode(texts), reference.encode(texts), rtol=0, atol=FLOAT32_ATOL)


def test_tokenize_matches(embedder, reference, sentences):
    texts = VARIED_TEXTS + sentences[:2000]
    # model2vec.tokenize applies the tokenizer's truncation but not the character pre-cut that encode does.
    cut = [t[: 512 * reference.median_token_length] for t in texts]
    assert embedder.tokenize(texts) == reference.tokenize(cut)


def test_long_text_is_truncated_to_512_tokens(embedder):
    ids = embedder.tokenize("word " * 700)[0]
    assert len(ids) == 512
    assert embedder.max_tokens == 512


def test_empty_and_unknown_only_texts_are_zero_vectors(embedder):
    vectors = embedder.encode(["", "   ", "\u200b"])
    assert not vectors.any()


def test_single_text_matches_batch(embedder, sentences):
    """Bitwise: a text's vector must not depend on whether it came alone (gather + scalar norm) or in a batch."""
    texts = VARIED_TEXTS + sentences[:500]
    batch = embedder.encode(texts)
    for text, row in zip(texts, batch):
        np.testing.assert_array_equal(embedder.encode(text), row)
        np.testing.assert_array_equal(embedder.encode_one(text), row)


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_quantized_tables(tmp_path, dtype, sentences):
    quantized = model2vec.StaticModel.from_pretrained(str(DEFAULT_MODEL_DIR), quantize_to=dtype)
    quantized.save_pretrained(str(tmp_path))
    assert load_model(tmp_path).embeddings.dtype == np.dtype(dtype)
    texts = VARIED_TEXTS + sentences[:1000]
    # model2vec returns float16 vectors for a float16 table; int8 tables are averaged in float64.
    assert_parity(tmp_path, texts, atol=2e-3 if dtype == "float16" else 1e-6)


def test_vocabulary_quantized_model(tmp_path, sentences):
    rng = np.random.default_rng(1)
    model = load_model(None)
    vocab = model.vocab_size
    write_model(
        tmp_path,
        model.tokenizer,
        rng.normal(size=(300, 64)).astype(np.float32),
        mapping=rng.integers(0, 300, size=vocab).astype(np.int64),
        weights=rng.uniform(0.1, 3.0, size=vocab).astype(np.float32),
        config={"normalize": True},
    )
    assert_parity(tmp_path, VARIED_TEXTS + sentences[:1000], atol=FLOAT32_ATOL)


def test_weights_without_mapping(tmp_path, sentences):
    rng = np.random.default_rng(2)
    model = load_model(None)
    write_model(
        tmp_path,
        model.tokenizer,
        rng.normal(size=(model.vocab_size, 32)).astype(np.float32),
        weights=rng.uniform(0.0, 2.0, size=model.vocab_size).astype(np.float32),
    )
    assert_parity(tmp_path, VARIED_TEXTS + sentences[:500], atol=FLOAT32_ATOL)


def test_unnormalized_model(tmp_path):
    rng = np.random.default_rng(3)
    model = load_model(None)
    write_model(
        tmp_path,
        model.tokenizer,
        rng.normal(size=(model.vocab_size, 16)).astype(np.float32),
        config={"normalize": False, "max_length": 8},
    )
    embedder = Embedder.load(tmp_path)
    assert embedder.max_tokens == 8 and not embedder.normalize
    assert_parity(tmp_path, VARIED_TEXTS, atol=1e-6)


def test_wordlevel_tokenizer_model(tmp_path):
    words = "the a man woman dog is running on beach quick brown fox".split()
    rng = np.random.default_rng(4)
    write_model(tmp_path, wordlevel_tokenizer(words), rng.normal(size=(len(words) + 1, 24)).astype(np.float32))
    texts = VARIED_TEXTS + ["The man is running", "a quick brown fox, on the beach", "unknown words only"]
    embedder = Embedder.load(tmp_path)
    assert not embedder.tokenizer.has_fast_path
    assert_parity(tmp_path, texts, atol=FLOAT32_ATOL)


def test_unigram_tokenizer_model(tmp_path):
    pieces = ["▁the", "▁a", "▁man", "▁dog", "▁run", "ning", "▁on", "▁be", "ach", "▁", "t", "h", "e", "a", "n", "s"]
    rng = np.random.default_rng(5)
    write_model(tmp_path, unigram_tokenizer(pieces), rng.normal(size=(len(pieces) + 1, 24)).astype(np.float32))
    texts = VARIED_TEXTS + ["the man running on the beach", "zzz"]
    assert_parity(tmp_path, texts, atol=FLOAT32_ATOL)
