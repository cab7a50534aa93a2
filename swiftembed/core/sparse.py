"""Sparse (lexical) vectors from the same tokens the dense vector is pooled from, for hybrid search.

A text's sparse vector holds one entry per distinct token id: `weight(token) x saturate(count)`. The default
weighting, `qnorm-sat` (chosen by measurement on STS-B train, see docs/quality.md "Hybrid search"), takes a
token's weight from the model itself: the fourth root of the L2 norm of its effective row
(`embeddings[mapping[id]] * weights[id]`). model2vec distillation scales rows by an SIF/Zipf-like importance, so
the norm ranks tokens ("a" 0.5, "the" 1.7, "dog" 79 in potion-base-8M); the fourth root keeps that order but
flattens it (0.84, 1.13, 2.98), which ranked better than the norm itself. It needs no corpus at serve time and
works for any model2vec-format directory. Repeats count with BM25's saturation `count (k1 + 1) / (count + k1)`,
k1 = 1.2, so a repeated word gains but cannot dominate.

Tokens: exactly `Embedder.encode`'s (same truncation to `max_tokens`, unknown-token id already dropped). Special
tokens of tokenizer.json ("[CLS]", "[SEP]" typed into a text) and tokens whose row is all zero get weight 0 and
are left out: they carry no lexical content to match on. So an empty text, or one of only such tokens, gives the
empty vector.
"""

from __future__ import annotations

import json
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from swiftembed.core.embedder import Embedder
    from swiftembed.core.tokenizer import TokenBatch

# Texts per tokenize + unique pass: bounds the temporary memory of very large inputs, as `Embedder.encode` does.
CHUNK_TEXTS = 8192
BM25_K1 = 1.2
# Below this many texts a Counter per text beats the batch's dozen numpy calls (~10 us vs ~35 us for one text).
SMALL_BATCH = 16


class SparseVector(NamedTuple):
    """One text's sparse vector: ascending unique token ids and their positive weights."""

    indices: np.ndarray  # int32 token ids, ascending, unique
    values: np.ndarray  # float32, > 0, same length


# Count transforms: how a token repeated in one text is weighted.
def _raw(counts: np.ndarray) -> np.ndarray:
    return counts.astype(np.float32)


def _binary(counts: np.ndarray) -> np.ndarray:
    return np.ones(len(counts), dtype=np.float32)


def _saturated(counts: np.ndarray) -> np.ndarray:
    c = counts.astype(np.float32)
    return c * np.float32(BM25_K1 + 1) / (c + np.float32(BM25_K1))


def _log(counts: np.ndarray) -> np.ndarray:
    return np.float32(1) + np.log(counts.astype(np.float32))


# Weightings measured (docs/quality.md): name -> (per-token weight kind, count transform). "rank" assumes a vocabulary
# ordered by frequency (true of BERT's WordPiece, not of every tokenizer), so it is for comparison only.
WEIGHTINGS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "binary": ("one", _binary),
    "tf": ("one", _raw),
    "rank": ("rank", _saturated),
    "norm": ("norm", _raw),
    "norm-sat": ("norm", _saturated),
    "norm-log": ("norm", _log),
    "norm-binary": ("norm", _binary),
    "norm2-sat": ("norm2", _saturated),
    "sqrtnorm-sat": ("sqrtnorm", _saturated),
    "qnorm-sat": ("qnorm", _saturated),
    "qnorm-binary": ("qnorm", _binary),
}
DEFAULT_WEIGHTING = "qnorm-sat"

_CACHE: weakref.WeakKeyDictionary[Embedder, dict[str, np.ndarray]] = weakref.WeakKeyDictionary()


def row_norms(embedder: Embedder) -> np.ndarray:
    """L2 norm of each token id's effective row (float32, one per token id), computed without widening the table
    to vocab x dim for vocabulary-quantized models."""
    model = embedder.model
    norms = np.linalg.norm(embedder.table, axis=1).astype(np.float32)
    if model.mapping is not None:
        norms = norms[model.mapping]
    if model.weights is not None:
        norms = norms * np.abs(model.weights).astype(np.float32)
    return norms


def special_ids(embedder: Embedder) -> list[int]:
    """Ids of tokenizer.json's special added tokens ([PAD], [CLS], <s>, ...)."""
    spec = json.loads(embedder.model.tokenizer.to_str())
    return [int(t["id"]) for t in spec.get("added_tokens", []) if t.get("special")]


def token_weights(embedder: Embedder, kind: str = "norm") -> np.ndarray:
    """Per-token-id weight array of one kind, built once per embedder and cached (weakly keyed on it)."""
    cache = _CACHE.setdefault(embedder, {})
    if kind not in cache:
        vocab = embedder.vocab_size
        norms = row_norms(embedder)
        if kind == "one":
            weights = np.ones(vocab, dtype=np.float32)
        elif kind == "rank":  # Zipf: -log p(rank) grows like log(rank)
            weights = np.log(np.arange(vocab, dtype=np.float32) + 2)
        else:
            power = {"norm": 1.0, "norm2": 2.0, "sqrtnorm": 0.5, "qnorm": 0.25}[kind]
            weights = norms if power == 1.0 else norms**power
        weights = np.array(weights, dtype=np.float32)
        weights[special_ids(embedder)] = 0.0
        weights[norms == 0] = 0.0
        cache[kind] = weights
    return cache[kind]


def sparse_encode(
    embedder: Embedder, texts: Sequence[str], *, normalize: bool = True, weighting: str = DEFAULT_WEIGHTING
) -> list[SparseVector]:
    """One sparse vector per text, from `embedder.tokenizer`'s tokens (see the module docstring).

    `normalize` L2-normalizes the values, so that a dot product of two vectors is the cosine of their weighted
    token bags (in [0, 1]): a text's length does not inflate its scores, and the score sits on the same scale as
    the dense cosine it is fused with. `normalize=False` gives the raw weights (e.g. to normalize otherwise).
    """
    return sparse_counted(embedder, texts, normalize=normalize, weighting=weighting)[0]


def sparse_counted(
    embedder: Embedder, texts: Sequence[str], *, normalize: bool = True, weighting: str = DEFAULT_WEIGHTING
) -> tuple[list[SparseVector], int]:
    """`sparse_encode`, and the number of tokens read: what the servers count in their metrics."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    kind, transform = WEIGHTINGS[weighting]
    weights = token_weights(embedder, kind)
    if len(texts) < SMALL_BATCH:
        id_lists = embedder.tokenizer.id_lists(texts)
        return [_from_ids(ids, weights, transform, normalize) for ids in id_lists], sum(map(len, id_lists))
    out: list[SparseVector] = []
    tokens = 0
    for start in range(0, len(texts), CHUNK_TEXTS):
        batch = embedder.tokens(texts[start : start + CHUNK_TEXTS])
        out.extend(sparse_from_batch(batch, weights, transform, normalize=normalize))
        tokens += len(batch.ids)
    return out, tokens


def sparse_from_batch(
    batch: TokenBatch,
    weights: np.ndarray,
    transform: Callable[[np.ndarray], np.ndarray] = _saturated,
    *,
    normalize: bool = True,
) -> list[SparseVector]:
    """Sparse vectors of tokenized texts: one np.unique over the (text, token) keys of the whole batch."""
    n = len(batch)
    vocab = len(weights)
    owner = np.repeat(np.arange(n, dtype=np.int64), batch.lengths)
    keys, counts = np.unique(owner * vocab + batch.ids, return_counts=True)
    ids = (keys % vocab).astype(np.int32)
    text = keys // vocab
    values = weights[ids] * transform(counts)
    keep = values > 0
    if not keep.all():
        ids, text, values = ids[keep], text[keep], values[keep]
    if normalize and len(values):
        norms = np.sqrt(np.bincount(text, weights=np.square(values, dtype=np.float64), minlength=n))
        values = (values / norms[text]).astype(np.float32)
    bounds = np.searchsorted(text, np.arange(n + 1)).tolist()
    return [SparseVector(ids[a:b], values[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _from_ids(
    ids: list[int], weights: np.ndarray, transform: Callable[[np.ndarray], np.ndarray], normalize: bool
) -> SparseVector:
    """One text's vector from its id list: the same arithmetic as `sparse_from_batch`, without the batch setup."""
    counts = Counter(ids)
    indices = np.array(sorted(counts), dtype=np.int32)
    values = weights[indices] * transform(np.array([counts[i] for i in indices.tolist()], dtype=np.int64))
    keep = values > 0
    if not keep.all():
        indices, values = indices[keep], values[keep]
    if normalize and len(values):
        values = (values / np.sqrt(np.square(values, dtype=np.float64).sum())).astype(np.float32)
    return SparseVector(indices, values)
