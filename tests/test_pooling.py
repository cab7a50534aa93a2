"""Kernel options: normalization, dimensions, output precisions, per-token weights, empty texts."""

from __future__ import annotations

import numpy as np
import pytest

from swiftembed.core.pooling import mean_pool, quantize
from tests.conftest import VARIED_TEXTS


def reference_means(embedder, texts, token_weights=None):
    """The definition, one text at a time: mean over tokens of row * weight."""
    out = []
    for ids in embedder.tokenize(texts):
        if not ids:
            out.append(np.zeros(embedder.dim, np.float32))
            continue
        rows = embedder.table[ids].astype(np.float64)
        if token_weights is not None:
            rows = rows * token_weights[ids, None]
        out.append(rows.mean(axis=0))
    return np.array(out)


def test_unnormalized_means(embedder):
    ours = embedder.encode(VARIED_TEXTS, normalize=False)
    np.testing.assert_allclose(ours, reference_means(embedder, VARIED_TEXTS), rtol=2e-5, atol=1e-6)


def test_normalized_rows_have_unit_norm(embedder, sentences):
    texts = sentences[:500]
    vectors = embedder.encode(texts)
    # A text of only unknown characters (e.g. a lone emoji) has no tokens and is the zero vector, as in model2vec.
    expected = [1.0 if ids else 0.0 for ids in embedder.tokenize(texts)]
    assert sum(expected) > 400
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), expected, atol=1e-6)


def test_dense_and_sparse_paths_agree(embedder, sentences):
    batch = embedder.tokens(sentences[:64])
    sparse = mean_pool(embedder.table, batch)
    dense = np.vstack([mean_pool(embedder.table, batch.select(i, i + 1)) for i in range(len(batch))])
    np.testing.assert_allclose(sparse, dense, atol=1e-7)


@pytest.mark.parametrize("k", [1, 32, 64, 255, 256])
def test_dimensions_truncate_then_renormalize(embedder, k):
    full = embedder.encode(VARIED_TEXTS, normalize=False)
    expected = full[:, :k] / (np.linalg.norm(full[:, :k], axis=1, keepdims=True) + 1e-32)
    got = embedder.encode(VARIED_TEXTS, dimensions=k)
    assert got.shape == (len(VARIED_TEXTS), k)
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("k", [0, -1, 257])
def test_dimensions_out_of_range(embedder, k):
    with pytest.raises(ValueError, match="dimensions must be between 1 and 256"):
        embedder.encode(["x"], dimensions=k)


def test_token_weights_scale_rows(embedder):
    rng = np.random.default_rng(0)
    weights = rng.uniform(0, 2, embedder.vocab_size).astype(np.float32)
    got = embedder.encode(VARIED_TEXTS, normalize=False, token_weights=weights)
    np.testing.assert_allclose(got, reference_means(embedder, VARIED_TEXTS, weights), rtol=2e-5, atol=1e-6)
    with pytest.raises(ValueError, match="token_weights"):
        embedder.encode(["x"], token_weights=np.ones(3))


def test_binary_precisions_follow_sentence_transformers(embedder, sentences):
    vectors = embedder.encode(sentences[:100])
    ubinary = embedder.encode(sentences[:100], precision="ubinary")
    binary = embedder.encode(sentences[:100], precision="binary")
    # sentence-transformers: np.packbits(emb > 0).reshape(n, -1) (- 128 as int8 for "binary")
    expected = np.packbits(vectors > 0).reshape(100, -1)
    np.testing.assert_array_equal(ubinary, expected)
    np.testing.assert_array_equal(binary, (expected.astype(np.int16) - 128).astype(np.int8))
    assert ubinary.dtype == np.uint8 and binary.dtype == np.int8 and ubinary.shape == (100, 32)


def test_int8_precisions_use_fixed_calibration(embedder, sentences):
    texts = sentences[:200]
    vectors = embedder.encode(texts)
    ranges = embedder.calibration_ranges(None, True)
    steps = (ranges[1] - ranges[0]) / 255
    expected_u8 = np.clip((vectors - ranges[0]) / steps, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(embedder.encode(texts, precision="uint8"), expected_u8)
    i8 = embedder.encode(texts, precision="int8")
    assert i8.dtype == np.int8
    # A text's code does not depend on the rest of its batch.
    np.testing.assert_array_equal(embedder.encode(texts[:1], precision="int8")[0], i8[0])
    # Quantized vectors keep the ranking of the float ones.
    sims = vectors @ vectors[0]
    q = i8.astype(np.float32) + 128
    qs = (q * steps + ranges[0]) @ (q[0] * steps + ranges[0])
    assert np.corrcoef(sims, qs)[0, 1] > 0.99


def test_unknown_precision(embedder):
    with pytest.raises(ValueError, match="precision must be one of"):
        embedder.encode(["x"], precision="float64")
    with pytest.raises(ValueError, match="unknown precision"):
        quantize(np.zeros((1, 8), np.float32), "int4")  # type: ignore[arg-type]


def test_empty_batch(embedder):
    assert embedder.encode([]).shape == (0, 256)


def test_token_ids_outside_vocabulary_are_rejected(embedder):
    for ids in ([[1, 2, 10**6]], [[-1]], [[5], [29528]]):
        with pytest.raises(ValueError, match="token ids must lie in"):
            embedder.tokenizer.from_ids(ids)
    batch = embedder.tokenizer.from_ids([[6598, 1094], [1, 1]])  # [UNK] (id 1) is dropped, as for text
    assert batch.to_lists() == [[6598, 1094], []]


def test_similarity(embedder):
    sims = embedder.similarity("a dog runs", ["a dog runs", "a puppy is running", "stock market report"])
    assert sims.shape == (1, 3)
    assert sims[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert sims[0, 1] > sims[0, 2]


def test_large_input_is_chunked(embedder, monkeypatch, sentences):
    import swiftembed.core.embedder as module

    whole = embedder.encode(sentences[:300])
    monkeypatch.setattr(module, "CHUNK_TEXTS", 64)
    np.testing.assert_array_equal(embedder.encode(sentences[:300]), whole)


def test_maxsim_is_mean_of_best_token_cosines(embedder, sentences):
    """Against a plain per-pair loop: each left token's best cosine with a right token, averaged with the token's row
    norm as weight; 0 without tokens."""
    from swiftembed.core.pooling import maxsim

    left, right = sentences[:4] + [""], sentences[4:10] + ["", "dog"]
    lv, rv = embedder.token_vectors(left), embedder.token_vectors(right)

    def naive(a: np.ndarray, b: np.ndarray) -> float:
        if not len(a) or not len(b):
            return 0.0
        best = [max(float(x @ y) / np.linalg.norm(x) / np.linalg.norm(y) for y in b) for x in a]
        return float(np.average(best, weights=np.linalg.norm(a, axis=1)))

    want = np.array([[naive(a, b) for b in rv] for a in lv])
    np.testing.assert_allclose(maxsim(lv, rv, pairwise=False), want, atol=1e-5)
    np.testing.assert_allclose(maxsim(lv, rv[:5], pairwise=True), np.diag(want[:, :5]), atol=1e-5)
    np.testing.assert_allclose(embedder.similarity(left, right, mode="maxsim"), want, atol=1e-5)
    with pytest.raises(ValueError, match="mode"):
        embedder.similarity("a", "b", mode="colbert")  # type: ignore[arg-type]


def test_token_vectors_limit_is_a_413(embedder):
    import asyncio

    from swiftembed.core.catalog import Catalog
    from swiftembed.service.batcher import Batcher
    from swiftembed.service.inputs import ApiError
    from swiftembed.service.service import EmbeddingService
    from swiftembed.service.settings import Settings

    service = EmbeddingService(Catalog.of(embedder), Batcher(), Settings(max_token_vectors=5))
    served = service.model(None)
    vectors, tokens = service.embed_all(["one two three four five"], served)
    assert tokens == 5 and vectors[0].shape == (5, 256)
    maxsim = service.similarity(["one two three"], ["four five six"], served, False, "maxsim")
    for call in (lambda: service.embed_all(["one two three four five six"], served), lambda: asyncio.run(maxsim)):
        with pytest.raises(ApiError) as raised:
            call()
        assert raised.value.status == 413 and raised.value.code == "too_many_tokens"
