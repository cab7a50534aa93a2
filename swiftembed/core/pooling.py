"""The pooling kernel: token ids in, sentence vectors out, for a whole batch in one call.

A batch of texts is a sparse (texts x vocabulary) matrix whose entries are token weights, so the sum of
every text's rows is one sparse-dense product with the table; no Python loop runs per text. Means, L2
normalization, `dimensions` truncation and output quantization are then whole-array numpy operations.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Literal

import numpy as np
from scipy.sparse import csr_matrix

from swiftembed.core.tokenizer import TokenBatch

Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[str, ...] = ("float32", "int8", "uint8", "binary", "ubinary")
SimilarityMode = Literal["mean", "maxsim"]
SIMILARITY_MODES: tuple[str, ...] = ("mean", "maxsim")

# Below this many texts a dense gather beats building a sparse matrix (scipy's per-call overhead).
DENSE_BELOW = 4
# From this many tokens the product is split over threads (scipy's kernel releases the GIL).
_THREADED_FROM = 32_768
_THREADS = min(os.cpu_count() or 1, 4)
_F32 = np.dtype(np.float32)
_EPS = np.float32(1e-32)  # model2vec's, added to every norm
_TINY = 1e-20  # norm + _EPS == norm in float32 for any norm above this (its ulp is > 1e-27)


@cache
def _pool_executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_THREADS, thread_name_prefix="swiftembed-pool")


def mean_pool(
    table: np.ndarray,
    batch: TokenBatch,
    *,
    rows: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    mean: bool = True,
) -> np.ndarray:
    """Mean of each text's token rows, float32 (n, dim). A text with no tokens gets the zero vector.

    A token's row is `table[rows[id]] * weights[id]` (`rows` = vocabulary-quantization mapping, `weights` =
    model or caller per-token weights); the mean divides by the token count, as model2vec does. `mean=False`
    returns the sums, for callers that L2-normalize next and so need not pay for the division.
    """
    n = len(batch)
    if n < DENSE_BELOW:
        bounds = batch.offsets.tolist()
        out = np.zeros((n, table.shape[1]), dtype=np.float32)
        for i in range(n):
            if bounds[i + 1] > bounds[i]:
                _pool_into(out[i], table, batch.ids[bounds[i] : bounds[i + 1]], rows, weights, mean)
        return out
    cols = batch.ids if rows is None else rows[batch.ids]
    data = np.ones(len(cols), dtype=np.float32) if weights is None else weights[batch.ids].astype(np.float32)
    out = np.empty((n, table.shape[1]), dtype=np.float32)
    table = _as_float32(table)
    if len(cols) < _THREADED_FROM or _THREADS == 1:
        _sparse_sum(table, data, cols, batch.offsets, 0, n, out)
    else:
        # Row blocks with about equal token counts, one per thread.
        cuts = np.searchsorted(batch.offsets, np.linspace(0, len(cols), _THREADS + 1)[1:-1])
        bounds = [0, *sorted(set(cuts.tolist()) - {0, n}), n]
        jobs = [
            _pool_executor().submit(_sparse_sum, table, data, cols, batch.offsets, lo, hi, out)
            for lo, hi in zip(bounds[:-1], bounds[1:])
        ]
        for job in jobs:
            job.result()
    if mean:
        np.divide(out, np.maximum(batch.lengths, 1)[:, None].astype(np.float32), out=out)
    return out


def pool_lists(
    table: np.ndarray,
    id_lists: Sequence[Sequence[int]],
    *,
    rows: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    mean: bool = True,
) -> np.ndarray:
    """`mean_pool` for a few texts given as id lists (fewer than DENSE_BELOW): no CSR batch to build.

    One text's plain row sum is two numpy calls: on a one-text request every call counts (~1-2 us each live).
    """
    if len(id_lists) == 1 and id_lists[0] and rows is None and weights is None and not mean and table.dtype == _F32:
        return np.add.reduce(table.take(id_lists[0], axis=0), axis=0, keepdims=True)
    out = np.zeros((len(id_lists), table.shape[1]), dtype=np.float32)
    for i, ids in enumerate(id_lists):
        if ids:
            _pool_into(out[i], table, np.asarray(ids, dtype=np.intp), rows, weights, mean)
    return out


def token_rows(
    table: np.ndarray, batch: TokenBatch, *, rows: np.ndarray | None = None, weights: np.ndarray | None = None
) -> list[np.ndarray]:
    """Each text's token rows, float32 (tokens x dim): the rows `mean_pool` averages, one per token in order
    (model2vec's `encode_as_sequence`). For a static model a token's vector is its row: nothing to compute."""
    gathered = table.take(batch.ids if rows is None else rows[batch.ids], axis=0).astype(np.float32, copy=False)
    if weights is not None:
        gathered = gathered * weights[batch.ids, None].astype(np.float32)
    return np.split(gathered, batch.offsets[1:-1])


def _pool_into(
    out: np.ndarray, table: np.ndarray, ids: np.ndarray, rows: np.ndarray | None, weights: np.ndarray | None,
    mean: bool,
) -> None:
    """One text's (weighted) row sum or mean into `out`, by a dense gather."""
    gathered = table.take(ids if rows is None else rows[ids], axis=0).astype(np.float32, copy=False)
    if weights is not None:
        gathered = gathered * weights[ids, None]
    np.add.reduce(gathered, axis=0, out=out)
    if mean:
        out /= np.float32(len(ids))


def _sparse_sum(
    table: np.ndarray, data: np.ndarray, cols: np.ndarray, offsets: np.ndarray, lo: int, hi: int, out: np.ndarray
) -> None:
    """Row sums of texts lo:hi into out[lo:hi] as one sparse (texts x vocabulary) @ table product."""
    start, stop = offsets[lo], offsets[hi]
    matrix = csr_matrix((data[start:stop], cols[start:stop], offsets[lo : hi + 1] - start), shape=(hi - lo, len(table)))
    out[lo:hi] = matrix @ table


def _as_float32(table: np.ndarray) -> np.ndarray:
    # int8 and float16 tables are widened once per call; Embedder keeps a float32 copy to avoid even that.
    return table if table.dtype == np.float32 else table.astype(np.float32)


def maxsim(left: list[np.ndarray], right: list[np.ndarray], pairwise: bool) -> np.ndarray:
    """Late interaction (ColBERT's MaxSim) for static token vectors: for each token of the left text its best cosine
    with any token of the right text, averaged with the token's row norm as its weight, so scores stay in [-1, 1]
    like a cosine. A static model's row norm is the weight the mean vector gives the token: weighting by it ranked
    paraphrases far better than ColBERT's plain sum (STS-B train, docs/quality.md). A text without tokens scores 0.
    Pairwise: left[i] with right[i]; else the matrix of every left with every right."""
    weights = [np.linalg.norm(v, axis=1) for v in left]
    left, right = [_unit_rows(v) for v in left], [_unit_rows(v) for v in right]
    if pairwise:
        return np.array([_maxsim_one(a, w, b) for a, w, b in zip(left, weights, right)], dtype=np.float32)
    scores = np.zeros((len(left), len(right)), dtype=np.float32)
    sizes = np.array([len(b) for b in right])
    keep = np.flatnonzero(sizes)  # reduceat cannot take empty segments
    if not len(keep):
        return scores
    stacked = np.concatenate([right[j] for j in keep])
    starts = np.concatenate([[0], np.cumsum(sizes[keep])[:-1]])
    for i, (a, w) in enumerate(zip(left, weights)):
        if len(a) and w.sum() > 0:
            scores[i, keep] = w @ np.maximum.reduceat(a @ stacked.T, starts, axis=1) / w.sum()
    return scores


def _maxsim_one(a: np.ndarray, weights: np.ndarray, b: np.ndarray) -> float:
    if not len(a) or not len(b) or weights.sum() <= 0:
        return 0.0
    return float(weights @ (a @ b.T).max(axis=1) / weights.sum())


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


def normalize(vectors: np.ndarray) -> np.ndarray:
    """L2-normalize rows in place (zero rows stay zero), with model2vec's epsilon."""
    if len(vectors) == 1:  # the same float32 operations on scalars: bitwise the batch's row, at half the calls
        # (`dot` runs vecdot's inner loop; a double square root rounded to float32 is the correctly rounded
        # float32 root, as np.sqrt gives; above _TINY, adding _EPS leaves a float32 norm unchanged)
        row = vectors[0]
        norm = np.float32(math.sqrt(row.dot(row)))
        vectors /= norm if norm > _TINY else norm + _EPS
        return vectors
    # vecdot is a gufunc: one inner loop per row, so a row's norm is the same alone or in a batch; einsum's
    # Python-level dispatch cost three times as much on a one-text request.
    norms = np.sqrt(np.vecdot(vectors, vectors))
    norms += _EPS
    np.divide(vectors, norms[:, None], out=vectors)
    return vectors


def finish(
    means: np.ndarray,
    *,
    normalize_rows: bool = True,
    dimensions: int | None = None,
    precision: Precision = "float32",
    ranges: np.ndarray | None = None,
    inplace: bool = False,
) -> np.ndarray:
    """Mean vectors to what the caller asked for: first `dimensions` dims, normalized, quantized.

    `means` is modified only if `inplace`. Quantizing to int8/uint8 needs `ranges` (2 x dim: low, high).
    """
    vectors = means if dimensions is None or dimensions >= means.shape[1] else means[:, :dimensions]
    if not (inplace and vectors.flags.c_contiguous):
        vectors = np.array(vectors, dtype=np.float32, copy=True)
    if normalize_rows:
        normalize(vectors)
    if precision == "float32":
        return vectors
    return quantize(vectors, precision, ranges)


def quantize(vectors: np.ndarray, precision: Precision, ranges: np.ndarray | None = None) -> np.ndarray:
    """sentence-transformers' `quantize_embeddings` meanings, with fixed calibration ranges.

    binary/ubinary pack the sign bits (binary as int8, offset by -128); int8/uint8 map each dimension's
    [low, high] range onto 256 steps. Unlike sentence-transformers, values outside the range are clipped
    rather than wrapped, and the ranges are fixed per model, so a text's code does not depend on its batch.
    """
    if precision == "ubinary":
        return np.packbits(vectors > 0, axis=-1)
    if precision == "binary":
        return (np.packbits(vectors > 0, axis=-1).astype(np.int16) - 128).astype(np.int8)
    if precision not in ("int8", "uint8"):
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if ranges is None:
        raise ValueError(f"precision {precision!r} needs calibration ranges")
    starts = ranges[0, : vectors.shape[1]]
    steps = (ranges[1, : vectors.shape[1]] - starts) / 255
    steps = np.where(steps > 0, steps, np.float32(1))
    scaled = np.clip((vectors - starts) / steps, 0, 255)
    if precision == "uint8":
        return scaled.astype(np.uint8)
    return (scaled - 128).astype(np.int8)
