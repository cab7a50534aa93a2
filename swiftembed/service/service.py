"""The embedding service: what every way in does once a request is parsed.

HTTP routes (swiftembed/http/routes.py) and Ray handle methods (swiftembed/ray/deployment.py) are thin adapters
over one `EmbeddingService`: they check their inputs with swiftembed/service/inputs.py, call it, and encode what
it returns. So a handle call and an HTTP request with the same input get the same vectors and the same errors.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from swiftembed import __version__
from swiftembed.core.catalog import Catalog, Served, UnknownModel
from swiftembed.core.chunking import finish_chunks
from swiftembed.core.embedder import Embedder
from swiftembed.core.pooling import Precision, SimilarityMode, maxsim
from swiftembed.core.sparse import SparseVector
from swiftembed.service.batcher import Backend, Pooled
from swiftembed.service.inputs import DEFAULT_OPTIONS, ApiError, Options, invalid
from swiftembed.service.settings import Settings


class Embedded(NamedTuple):
    """A request's vectors (or scores) and the tokens they cost."""

    vectors: np.ndarray
    tokens: int


class Chunked(NamedTuple):
    """Per document its chunks' (start, end) spans, every chunk's vector in document order, and the tokens."""

    spans: list[list[tuple[int, int]]]
    vectors: np.ndarray
    tokens: int


class LoadMeter:
    """Requests in progress, and for how long at least one was: the share of time the server is busy, which shows
    saturation whatever share of a CPU the server gets (a request that never yields keeps `in_flight` at 1 while
    the others wait in the socket queue)."""

    __slots__ = ("in_flight", "_busy_s", "_since")

    def __init__(self) -> None:
        self.in_flight = 0
        self._busy_s = 0.0
        self._since = 0.0

    def enter(self) -> None:
        if not self.in_flight:
            self._since = time.perf_counter()
        self.in_flight += 1

    def exit(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._busy_s += time.perf_counter() - self._since

    def busy_seconds(self) -> float:
        """Seconds with a request in progress since the meter started."""
        return self._busy_s + (time.perf_counter() - self._since if self.in_flight else 0.0)


class EmbeddingService:
    """The served models, the batcher that pools their texts, the limits, and the load (HTTP requests and handle
    calls alike: the concurrency bound and the autoscaler read it)."""

    def __init__(self, catalog: Catalog, backend: Backend, settings: Settings) -> None:
        self.catalog, self.backend, self.settings = catalog, backend, settings
        self.load = LoadMeter()
        self.started = int(time.time())

    def model(self, name: object) -> Served:
        """The served model a request names (None: the default), or 404 `model_not_found`."""
        if name is not None and not isinstance(name, str):
            raise invalid("'model' must be a string", "model")
        served = self.catalog.names.get(name)
        if served is None:
            raise ApiError(404, str(UnknownModel(name, list(self.catalog.models))), param="model",
                           code="model_not_found")
        return served

    async def embed(self, texts: list[str], served: Served, options: Options = DEFAULT_OPTIONS) -> Embedded:
        pooled = await self.backend.pool(texts, served)
        return Embedded(finish(pooled, options, served.embedder), sum(pooled.tokens))

    async def embed_precisions(self, texts: list[str], served: Served, dimensions: int | None,
                               precisions: Sequence[Precision]) -> tuple[dict[Precision, np.ndarray], int]:
        """The texts' vectors in each of `precisions` (normalized as the model's default), pooled once: what
        `Embedder.encode(texts, dimensions=..., precision=p)` gives for each."""
        pooled = await self.backend.pool(texts, served)
        vectors = functools.partial(served.embedder.finish, pooled.sums, tokens=pooled.tokens, dimensions=dimensions)
        return {p: vectors(precision=p) for p in dict.fromkeys(precisions)}, sum(pooled.tokens)

    def embed_ids(self, ids: list[list[int]], served: Served, options: Options = DEFAULT_OPTIONS) -> Embedded:
        """Vectors of token id lists (OpenAI's pre-tokenized input): no tokenizer, no batching."""
        embedder = served.embedder
        batch = embedder.tokenizer.from_ids(ids)
        pooled = Pooled(embedder.pool(batch, mean=False), batch.lengths.tolist())
        return Embedded(finish(pooled, options, embedder), sum(pooled.tokens))

    async def chunk(self, texts: list[str], chunk_tokens: int, overlap_tokens: int, served: Served,
                    options: Options = DEFAULT_OPTIONS) -> Chunked:
        """Long documents cut into overlapping chunks of whole words, every chunk's vector from one pass over its
        document: chunk i's vector is what `embed` gives for `text[start:end]`."""
        chunked = await self.backend.chunk(texts, chunk_tokens, overlap_tokens, served)
        vectors = finish_chunks(served.embedder, chunked, normalize=options.normalize,
                                dimensions=options.dimensions, precision=options.precision)
        return Chunked([text.spans for text in chunked], vectors, sum(sum(text.counts) for text in chunked))

    async def sparse(self, texts: list[str], served: Served) -> tuple[list[SparseVector], int]:
        """Per text its distinct token ids with weights (swiftembed/core/sparse.py), and the tokens."""
        return await self.backend.sparse(texts, served)

    def embed_all(self, texts: list[str], served: Served) -> tuple[list[np.ndarray], int]:
        """Per text its token vectors (tokens x dim, not normalized: TEI's /embed_all), and the tokens; 413 beyond
        `max_token_vectors` tokens. No batching: there is no pooling to share, only rows to copy out."""
        embedder = served.embedder
        batch = embedder.tokens(texts)
        if len(batch.ids) > self.settings.max_token_vectors:
            raise ApiError(413, f"the texts have {len(batch.ids)} tokens; the limit is "
                                f"{self.settings.max_token_vectors} token vectors per request", code="too_many_tokens")
        return embedder.token_vectors(batch), len(batch.ids)  # type: ignore[return-value]

    async def similarity(self, left: list[str], right: list[str], served: Served, pairwise: bool,
                         mode: SimilarityMode = "mean") -> Embedded:
        """Cosine similarities: left[i] with right[i] (`pairwise`), else the matrix of every left with every right;
        both sides pooled in one kernel call. `maxsim` scores late interaction instead (see `maxsim`)."""
        if mode == "maxsim":
            vectors, tokens = self.embed_all(left + right, served)
            return Embedded(maxsim(vectors[: len(left)], vectors[len(left) :], pairwise), tokens)
        pooled = await self.backend.pool(left + right, served)
        vectors = served.embedder.finish(pooled.sums, normalize=True, inplace=True)
        a, b = vectors[: len(left)], vectors[len(left) :]
        return Embedded(np.vecdot(a, b) if pairwise else a @ b.T, sum(pooled.tokens))

    def tokenize(self, texts: list[str], served: Served) -> list[list[int]]:
        return served.embedder.tokenize(texts)

    def facts(self, served: Served) -> dict[str, Any]:
        """A served model's facts, as /info and the handle's `info` give them."""
        e = served.embedder
        return {
            "model": served.model_id,
            "name": served.name,
            "default": served is self.catalog.default,
            "checksum": e.checksum,
            "dimension": e.dim,
            "vocab_size": e.vocab_size,
            "max_tokens": e.max_tokens,
            "normalize": e.normalize,
            "table_dtype": e.model.table_dtype,
        }

    def info(self, served: Served) -> dict[str, Any]:
        """`served`'s facts, every served model's, and the limits."""
        return {**self.facts(served), "models": [self.facts(model) for model in self.catalog],
                "limits": self.settings.public(), "version": __version__}


def finish(pooled: Pooled, options: Options, embedder: Embedder) -> np.ndarray:
    """A request's vectors from its pooled sums: the batch's normalized rows where those are what it asks (the
    batcher normalized the whole batch in one call), else `Embedder.finish` (dimensions, precision) in place."""
    if pooled.unit is not None and options.dimensions is None and options.precision == "float32":
        if embedder.normalize if options.normalize is None else options.normalize:
            return pooled.unit
    return embedder.finish(pooled.sums, tokens=pooled.tokens, normalize=options.normalize,
                           dimensions=options.dimensions, precision=options.precision, inplace=True)
