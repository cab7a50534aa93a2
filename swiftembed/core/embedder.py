"""The library API: an `Embedder` turns texts into vectors with one model, in-process."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from swiftembed.core.model import StaticModel, load_model
from swiftembed.core.pooling import (
    DENSE_BELOW,
    PRECISIONS,
    Precision,
    SimilarityMode,
    finish,
    maxsim,
    mean_pool,
    pool_lists,
    token_rows,
)
from swiftembed.core.tokenizer import TextTokenizer, TokenBatch

if TYPE_CHECKING:
    from swiftembed.core.chunking import Chunk
    from swiftembed.core.sparse import SparseVector

# Texts per kernel call inside `encode`: bounds the temporary memory of very large inputs.
CHUNK_TEXTS = 8192


class Embedder:
    """Static-embedding encoder: tokenize, look up rows, mean, normalize.

    Vectors equal model2vec's `StaticModel.encode` for the same model directory (to float32 rounding). An
    empty text, or one made only of tokens the vocabulary lacks, encodes to the all-zero vector.
    """

    def __init__(
        self,
        model: StaticModel,
        *,
        max_tokens: int | None = -1,
        fast_tokenizer: bool = True,
        table: np.ndarray | None = None,
        own_tokenizer: bool = False,
    ) -> None:
        """`max_tokens=-1` takes the model's own limit (512 unless its config says otherwise); `None` disables it.

        `table` is an already widened float32 copy of the model's rows, for example a zero-copy view from Ray's
        object store shared by several replicas; by default it is made here (no copy for float32 models).
        `own_tokenizer` lets the Embedder configure the model's tokenizer in place: for a model nothing else uses.
        """
        self.model = model
        # Read on every request: plain attributes, not properties reaching into the model (a model never changes).
        self.dim: int = model.dim
        self.normalize: bool = model.normalize
        limit = model.max_tokens if max_tokens == -1 else max_tokens
        if limit is not None and limit < 1:
            raise ValueError(f"max_tokens must be positive or None, got {limit}")
        self.tokenizer = TextTokenizer(model.tokenizer, limit, fast_path=fast_tokenizer, in_place=own_tokenizer)
        self.vocab_size: int = self.tokenizer.vocab_size
        if table is None:
            table = model.embeddings.astype(np.float32, copy=False)
        elif table.dtype != np.float32 or table.shape != model.embeddings.shape:
            raise ValueError(f"table must be float32 {model.embeddings.shape}, got {table.dtype} {table.shape}")
        self.table = table
        self._ranges: dict[tuple[int, bool], np.ndarray] = {}

    @classmethod
    def load(
        cls, name_or_path: str | os.PathLike[str] | None = None, *, token: str | None = None, **options: object
    ) -> Embedder:
        """Load a model directory, bundled model name or Hub id (`None`: the vendored potion-base-8M) and wrap it."""
        return cls(load_model(name_or_path, token=token), **options)  # type: ignore[arg-type]

    # Model facts -------------------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.model.model_id

    @property
    def checksum(self) -> str:
        return self.model.checksum

    @property
    def max_tokens(self) -> int | None:
        return self.tokenizer.max_tokens

    # Encoding ----------------------------------------------------------------------------------------------
    def tokenize(self, texts: str | Sequence[str]) -> list[list[int]]:
        """The token ids each text is pooled from (after truncation and dropping unknown tokens)."""
        return self.tokenizer.tokenize([texts] if isinstance(texts, str) else texts)

    def tokens(self, texts: Sequence[str]) -> TokenBatch:
        return self.tokenizer.encode(texts)

    def pool(self, batch: TokenBatch, token_weights: np.ndarray | None = None, *, mean: bool = True) -> np.ndarray:
        """Unnormalized mean vectors (float32) for tokenized texts: the part request batching shares.

        `batch` comes from `tokens` or `tokenizer.from_ids`, which guarantee ids inside the vocabulary.
        `mean=False` gives sums: the same vectors once normalized, one pass cheaper.
        """
        weights = self.model.weights
        if token_weights is not None:
            token_weights = np.asarray(token_weights, dtype=np.float32)
            if token_weights.shape != (self.vocab_size,):
                raise ValueError(f"token_weights must hold {self.vocab_size} values, one per token id")
            weights = token_weights if weights is None else weights * token_weights
        return mean_pool(self.table, batch, rows=self.model.mapping, weights=weights, mean=mean)

    def pool_texts(self, texts: Sequence[str], *, mean: bool = True) -> tuple[np.ndarray, list[int]]:
        """Mean vectors (sums if not `mean`) and token counts of `texts`: what a serving backend computes per batch.

        A few texts skip the CSR batch: their id lists are gathered directly, a third of the cost of one query.
        The counts are a list: a request sums them, and for one text numpy would cost more than the sum.
        """
        if len(texts) < DENSE_BELOW:
            id_lists = self.tokenizer.id_lists(texts)
            means = pool_lists(self.table, id_lists, rows=self.model.mapping, weights=self.model.weights, mean=mean)
            return means, [len(ids) for ids in id_lists]
        batch = self.tokens(texts)
        return self.pool(batch, mean=mean), batch.lengths.tolist()

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        normalize: bool | None = None,
        dimensions: int | None = None,
        precision: Precision = "float32",
        token_weights: np.ndarray | None = None,
    ) -> np.ndarray:
        """Vectors for `texts`, one row each (a single string gives a 1-D vector).

        `normalize` defaults to the model's config; `dimensions` keeps the first k dimensions, then
        re-normalizes; `precision` quantizes as sentence-transformers' `quantize_embeddings` does, with
        per-model calibration ranges; `token_weights` (one per token id, e.g. SIF) scale each token's row.
        """
        if isinstance(texts, str):
            return self.encode(
                [texts], normalize=normalize, dimensions=dimensions, precision=precision, token_weights=token_weights
            )[0]
        self.check_options(dimensions, precision)
        normalize = self.normalize if normalize is None else normalize
        if token_weights is None and len(texts) < DENSE_BELOW:
            means = self.pool_texts(texts, mean=not normalize)[0]
        elif len(texts) <= CHUNK_TEXTS:
            means = self.pool(self.tokens(texts), token_weights, mean=not normalize)
        else:
            means = np.concatenate(
                [
                    self.pool(self.tokens(texts[i : i + CHUNK_TEXTS]), token_weights, mean=not normalize)
                    for i in range(0, len(texts), CHUNK_TEXTS)
                ]
            )
        return self.finish(means, normalize=normalize, dimensions=dimensions, precision=precision, inplace=True)

    def encode_one(self, text: str, **options: object) -> np.ndarray:
        """One text's vector, 1-D."""
        return self.encode([text], **options)[0]  # type: ignore[arg-type]

    def token_vectors(self, texts: str | Sequence[str] | TokenBatch) -> list[np.ndarray] | np.ndarray:
        """Each text's token vectors (tokens x dim, float32, not normalized), the same tokens `encode` averages: for
        late interaction (MaxSim) and TEI's /embed_all. A single string gives its array."""
        if isinstance(texts, str):
            return self.token_vectors([texts])[0]
        batch = texts if isinstance(texts, TokenBatch) else self.tokens(texts)
        return token_rows(self.table, batch, rows=self.model.mapping, weights=self.model.weights)

    def sparse(self, texts: str | Sequence[str], **options: object) -> list[SparseVector] | SparseVector:
        """Sparse lexical vectors (token id -> weight) from the same tokens as `encode`, one per text (a single
        string: its vector); options of `swiftembed.core.sparse.sparse_encode` (`normalize=True`)."""
        from swiftembed.core.sparse import sparse_encode

        if isinstance(texts, str):
            return sparse_encode(self, [texts], **options)[0]  # type: ignore[arg-type]
        return sparse_encode(self, texts, **options)  # type: ignore[arg-type]

    def chunk(
        self,
        texts: str | Sequence[str],
        chunk_tokens: int,
        overlap_tokens: int = 0,
        *,
        normalize: bool | None = None,
        dimensions: int | None = None,
        precision: Precision = "float32",
    ) -> list[list[Chunk]] | list[Chunk]:
        """Each text cut into chunks of whole words, at most `chunk_tokens` tokens each, consecutive chunks
        overlapping by at most `overlap_tokens`: `Chunk(start, end, embedding)` lists (a single string: its list).

        A chunk's embedding is `encode(text[start:end])` with the same options; see `swiftembed.core.chunking`.
        """
        from swiftembed.core.chunking import chunk_texts

        return chunk_texts(
            self, texts, chunk_tokens, overlap_tokens, normalize=normalize, dimensions=dimensions, precision=precision
        )

    def finish(
        self,
        means: np.ndarray,
        *,
        tokens: Sequence[int] | np.ndarray | None = None,
        normalize: bool | None = None,
        dimensions: int | None = None,
        precision: Precision = "float32",
        inplace: bool = False,
    ) -> np.ndarray:
        """Mean vectors from `pool` to the requested output (see `encode`); `inplace` may reuse `means`.

        With `tokens` (the token counts), `means` are the sums of `pool(mean=False)`: they are divided only if
        the output is not normalized, the one case where the mean itself is the answer.
        """
        normalize = self.normalize if normalize is None else normalize
        if tokens is not None and not normalize:
            means = means / np.maximum(tokens, 1).astype(np.float32)[:, None]
            inplace = True
        ranges = self.calibration_ranges(dimensions, normalize) if precision in ("int8", "uint8") else None
        return finish(
            means, normalize_rows=normalize, dimensions=dimensions, precision=precision, ranges=ranges, inplace=inplace
        )

    def check_options(self, dimensions: int | None, precision: str) -> None:
        if dimensions is not None and not 1 <= dimensions <= self.dim:
            raise ValueError(f"dimensions must be between 1 and {self.dim}, got {dimensions}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")

    def calibration_ranges(self, dimensions: int | None, normalize: bool) -> np.ndarray:
        """Per-dimension (low, high) of every vocabulary token encoded alone: fixed int8/uint8 ranges per model."""
        key = (dimensions or self.dim, normalize)
        if key not in self._ranges:
            vocab = self.vocab_size
            every_token = TokenBatch(np.arange(vocab, dtype=np.int32), np.arange(vocab + 1, dtype=np.int64))
            vectors = finish(self.pool(every_token), normalize_rows=normalize, dimensions=dimensions)
            self._ranges[key] = np.stack([vectors.min(axis=0), vectors.max(axis=0)])
        return self._ranges[key]

    def similarity(
        self, a: str | Sequence[str], b: str | Sequence[str], *, mode: SimilarityMode = "mean"
    ) -> np.ndarray:
        """Cosine similarity matrix between the texts of `a` and of `b`; `mode="maxsim"`: late interaction over
        their token vectors (`swiftembed.core.pooling.maxsim`)."""
        if mode == "maxsim":
            return maxsim(self.token_vectors([a] if isinstance(a, str) else a),  # type: ignore[arg-type]
                          self.token_vectors([b] if isinstance(b, str) else b), pairwise=False)  # type: ignore[arg-type]
        if mode != "mean":
            raise ValueError(f"mode must be 'mean' or 'maxsim', got {mode!r}")
        left = self.encode([a] if isinstance(a, str) else a, normalize=True)
        right = self.encode([b] if isinstance(b, str) else b, normalize=True)
        return left @ right.T
