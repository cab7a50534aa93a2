"""The HTTP API's routes: a plain ASGI app that knows nothing of Ray.

Each route takes its body from the front door (swiftembed/http/frontdoor.py: read, limited, parsed as JSON),
checks its fields with `wire`, calls the `EmbeddingService` (swiftembed/service/service.py: the model, pooling
through the batcher, finishing), and encodes what it returns into an `Answer` for the front door to send.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope

from swiftembed.core.catalog import Catalog, Served
from swiftembed.core.embedder import Embedder
from swiftembed.http import wire
from swiftembed.http.frontdoor import (
    Answer,
    FrontDoor,
    Route,
    Stream,
    body_chunks,
    check_length,
    error_answer,
    header,
    media_type,
    too_large,
)
from swiftembed.http.openapi import openapi_spec
from swiftembed.service.batcher import Backend, Batcher
from swiftembed.service.inputs import ApiError, Options, invalid, text
from swiftembed.service.metrics import Metrics, NoMetrics
from swiftembed.service.service import EmbeddingService
from swiftembed.service.settings import Settings

OCTET = "application/octet-stream"
OCTET_BYTES = OCTET.encode()  # compared with the raw Accept header on every embedding request
JSONL = "application/jsonl"
JSONL_TYPES = (JSONL, "application/x-ndjson", "application/x-jsonlines", "application/json-lines")
JSONL_CHUNK = 1024  # lines encoded per kernel call on /embed/jsonl
JSONL_ACCEPT = tuple(kind.encode() for kind in JSONL_TYPES)  # Accept values that ask /embed/chunks for JSONL
# Response headers a browser script may read under CORS (the raw route's shape is only in headers).
EXPOSED_HEADERS = ["X-Processing-Time-Ms", "X-Token-Count", "X-Embedding-Count", "X-Embedding-Dimension",
                   "X-Embedding-Dtype", "Retry-After"]


def create_app(
    models: Catalog | Embedder,
    *,
    backend: Backend | None = None,
    settings: Settings | None = None,
    metrics: Metrics | None = None,
) -> ASGIApp:
    """The SwiftEmbed ASGI app around the served models (one Embedder: that model alone)."""
    return build_api(models, backend=backend, settings=settings, metrics=metrics).app


def build_api(
    models: Catalog | Embedder,
    *,
    backend: Backend | None = None,
    settings: Settings | None = None,
    metrics: Metrics | None = None,
) -> EmbeddingApi:
    """The routes over a service of the served models, pooling through a Batcher of the settings' batch size."""
    catalog = models if isinstance(models, Catalog) else Catalog.of(models)
    settings, metrics = settings or Settings(), metrics or NoMetrics()
    return EmbeddingApi(EmbeddingService(catalog, backend or Batcher.from_settings(settings, metrics.batch), settings),
                        metrics)


class EmbeddingApi:
    """The routes over an `EmbeddingService`: parse with `wire`, call the service, encode the answer."""

    def __init__(self, service: EmbeddingService, metrics: Metrics) -> None:
        self.service, self.metrics = service, metrics
        self.catalog, self.settings = service.catalog, service.settings
        settings = self.settings
        self.table = [
            Route("/v1/embeddings", "POST", self.openai_embeddings, "EmbeddingsRequest", "EmbeddingsResponse"),
            Route("/embed", "POST", self.embed, "EmbedRequest", "EmbedResponse"),
            Route("/v2/embed", "POST", self.cohere_embed, "CohereEmbedRequest", "CohereEmbedResponse",
                  errors="cohere"),
            Route("/embed/jsonl", "POST", self.embed_jsonl),  # JSON lines in and out, streamed
            Route("/embed/chunks", "POST", self.embed_chunks, "ChunksRequest", "ChunksResponse"),
            Route("/embed_sparse", "POST", self.embed_sparse, "InputsRequest", "SparseResponse"),
            Route("/embed_all", "POST", self.embed_all, "InputsRequest", "EmbedAllResponse"),
            Route("/similarity", "POST", self.similarity, "SimilarityRequest", "SimilarityResponse"),
            Route("/tokenize", "POST", self.tokenize, "TokenizeRequest", "TokenizeResponse"),
            Route("/v1/models", "GET", self.list_models, answer="ModelList"),
            Route("/v1/models/{id}", "GET", self.get_model, answer="Model"),
            Route("/health", "GET", self.health, answer="Health", open=True),
            Route("/info", "GET", self.info, answer="Info"),
            Route("/metrics", "GET", self.metrics_route, open=True),  # Prometheus text
            Route("/openapi.json", "GET", self.openapi),
        ]
        self.front = FrontDoor(self.table, settings, metrics, service.load)
        self.app: ASGIApp = self.front
        if settings.cors_origins:  # outermost: preflights carry no API key, and 401/503 answers need CORS headers too
            self.app = CORSMiddleware(
                self.app, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "Accept"], expose_headers=EXPOSED_HEADERS,
            )
        self._openapi = orjson.dumps(openapi_spec(self.catalog, settings, self.table))
        self.model = service.model

    # Embedding routes --------------------------------------------------------------------------------------
    async def openai_embeddings(self, scope: Scope, body: dict[str, Any]) -> Answer:
        served = self.model(body.get("model"))
        embedder = served.embedder
        req = wire.parse_openai(body, self.settings, embedder.dim, embedder.vocab_size)
        if req.texts is not None:
            vectors, tokens = await self.service.embed(req.texts, served, req.options)
        else:
            vectors, tokens = self.service.embed_ids(req.token_ids or [], served, req.options)
        body = wire.openai_body(vectors, served.model_id, tokens, req.encoding_format)
        return Answer(body, texts=len(vectors), tokens=tokens, model=served.name)

    async def embed(self, scope: Scope, body: dict[str, Any]) -> Answer:
        style: wire.ErrorStyle = "tei" if "inputs" in body else "openai"
        try:
            served = self.model(body.get("model"))
            req, style = wire.parse_embed(body, self.settings, served.embedder.dim)
        except ApiError as error:
            return error_answer(error, style)
        assert req.texts is not None
        vectors, tokens = await self.service.embed(req.texts, served, req.options)
        texts = len(vectors)
        if OCTET_BYTES in header(scope, b"accept"):
            shape = ((b"x-embedding-count", b"%d" % texts), (b"x-embedding-dimension", b"%d" % vectors.shape[1]),
                     (b"x-embedding-dtype", wire.RAW_DTYPES[req.options.precision]))
            return Answer(wire.raw_body(vectors), OCTET, headers=shape, texts=texts, tokens=tokens, model=served.name)
        if style == "tei":
            return Answer(wire.json_bytes(vectors), texts=texts, tokens=tokens, model=served.name)
        payload = {"embeddings": vectors, "model": served.model_id, "dimensions": vectors.shape[1], "tokens": tokens}
        return Answer(wire.json_bytes(payload), texts=texts, tokens=tokens, model=served.name)

    async def cohere_embed(self, scope: Scope, body: dict[str, Any]) -> Answer:
        """Cohere's embed API (v2): every asked `embedding_types` of the same texts, pooled once; errors in
        Cohere's shape (its route's `errors`), so its SDK raises its own error types."""
        served = self.model(body.get("model"))
        req = wire.parse_cohere(body, self.settings, served.embedder.dim, served.embedder.max_tokens)
        precisions = [wire.COHERE_TYPES[kind] for kind in req.types]
        vectors, tokens = await self.service.embed_precisions(req.texts, served, req.dimensions, precisions)
        by_type = {kind: vectors[wire.COHERE_TYPES[kind]] for kind in req.types}
        return Answer(wire.cohere_body(str(uuid.uuid4()), req.texts, by_type, tokens), texts=len(req.texts),
                      tokens=tokens, model=served.name)

    async def embed_jsonl(self, scope: Scope, receive: Receive) -> Answer:
        content_type = media_type(header(scope, b"content-type"))
        if content_type not in JSONL_TYPES:
            raise ApiError(415, f"/embed/jsonl takes Content-Type application/jsonl, got {content_type or 'none'}",
                           code="unsupported_media_type")
        query = _query(scope)
        served = self.model(query.get("model"))
        options = wire.query_options(query, served.embedder.dim)
        check_length(scope, self.settings.max_jsonl_bytes)
        stream = Stream()
        stream.chunks = self.jsonl_lines(receive, served, options, stream)
        return Answer(stream, JSONL, model=served.name)

    async def jsonl_lines(self, receive: Receive, served: Served, options: Options,
                          stream: Stream) -> AsyncIterator[bytes]:
        """Answer line for line, in order, encoding JSONL_CHUNK lines per kernel call: memory stays bounded.

        A malformed line gets an error line at its index and the stream goes on; a broken limit ends it.
        """
        pending: list[tuple[int, str]] = []
        index = 0
        try:
            chunks = body_chunks(receive, self.settings.body_chunk_timeout_s)
            async for raw in _lines(chunks, self.settings.max_jsonl_bytes):
                if not raw.strip():
                    continue
                if index >= self.settings.max_jsonl_lines:
                    raise ApiError(413, f"more than {self.settings.max_jsonl_lines} lines", code="too_many_texts")
                try:
                    pending.append((index, self.jsonl_text(raw)))
                    error = None
                except ApiError as exc:
                    error = exc
                index += 1
                if error is not None or len(pending) >= JSONL_CHUNK:
                    body = await self.encode_jsonl(pending, served, options, stream)
                    pending = []
                    yield body + (wire.jsonl_error_line(index - 1, error) if error is not None else b"")
            yield await self.encode_jsonl(pending, served, options, stream)
        except ApiError as error:
            yield wire.jsonl_error_line(index, error)

    def jsonl_text(self, raw: bytes) -> str:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"line is not valid JSON: {exc}", code="invalid_json") from None
        line = value.get("text") if isinstance(value, dict) else value if isinstance(value, str) else None
        if not isinstance(line, str):
            raise invalid('each line must be {"text": string}', "text")
        return text(line, "text", self.settings)

    async def encode_jsonl(self, pending: list[tuple[int, str]], served: Served, options: Options,
                           stream: Stream) -> bytes:
        if not pending:
            return b""
        vectors, tokens = await self.service.embed([line for _, line in pending], served, options)
        stream.texts += len(pending)
        stream.tokens += tokens
        return wire.jsonl_lines([i for i, _ in pending], vectors)

    async def embed_chunks(self, scope: Scope, body: dict[str, Any]) -> Answer:
        """Long documents cut into overlapping chunks of whole words, every chunk's vector from one pass over its
        document: chunk i's vector is what /embed gives for `text[start:end]`."""
        served = self.model(body.get("model"))
        embedder = served.embedder
        req = wire.parse_chunks(body, self.settings, embedder.dim, embedder.max_tokens)
        spans, vectors, tokens = await self.service.chunk(req.texts, req.chunk_tokens, req.overlap_tokens, served,
                                                          req.options)
        if any(kind in header(scope, b"accept") for kind in JSONL_ACCEPT):  # streamed: very long answers
            stream = Stream()
            stream.texts, stream.tokens = len(vectors), tokens
            stream.chunks = _blocks(wire.chunk_lines(spans, vectors, req.encoding_format))
            return Answer(stream, JSONL, tokens=tokens, model=served.name)
        answer = wire.chunks_body(spans, vectors, served.model_id, tokens, req.encoding_format)
        return Answer(answer, texts=len(vectors), tokens=tokens, model=served.name)

    async def embed_sparse(self, scope: Scope, body: dict[str, Any]) -> Answer:
        """TEI's /embed_sparse: per text its distinct token ids with weights (swiftembed/core/sparse.py), the lexical
        half of hybrid search, from the same tokens as /embed."""
        try:
            served = self.model(body.get("model"))
            texts = wire.parse_inputs(body, self.settings)
        except ApiError as error:
            return error_answer(error, "tei")
        vectors, tokens = await self.service.sparse(texts, served)
        return Answer(wire.sparse_body(vectors), texts=len(texts), tokens=tokens, model=served.name)

    async def embed_all(self, scope: Scope, body: dict[str, Any]) -> Answer:
        """TEI's /embed_all: per text each token's vector (for late-interaction search), here the table rows the
        text's mean is made of, from the same tokens as /embed."""
        try:
            served = self.model(body.get("model"))
            texts = wire.parse_inputs(body, self.settings)
            vectors, tokens = self.service.embed_all(texts, served)
        except ApiError as error:
            return error_answer(error, "tei")
        return Answer(wire.token_vectors_body(vectors), texts=len(texts), tokens=tokens, model=served.name)

    async def similarity(self, scope: Scope, body: dict[str, Any]) -> Answer:
        served = self.model(body.get("model"))
        req = wire.parse_similarity(body, self.settings)
        scores, tokens = await self.service.similarity(req.left, req.right, served, req.pairwise, req.mode)
        return Answer(wire.json_bytes({"scores": scores if req.pairwise else scores[0]}),
                      texts=len(req.left) + len(req.right), tokens=tokens, model=served.name)

    async def tokenize(self, scope: Scope, body: dict[str, Any]) -> Answer:
        served = self.model(body.get("model"))
        texts = wire.parse_tokenize(body, self.settings)
        ids = self.service.tokenize(texts, served)
        tokens = wire.token_strings(ids, served.embedder.tokenizer.id_to_token)
        return Answer(wire.json_bytes({"ids": ids, "tokens": tokens}), texts=len(texts),
                      tokens=sum(map(len, ids)), model=served.name)

    # Service routes ----------------------------------------------------------------------------------------
    async def health(self, scope: Scope, receive: Receive) -> Answer:
        """Models are loaded before the app exists, so an app that answers is ready."""
        return Answer(b'{"status":"ok"}')

    async def info(self, scope: Scope, receive: Receive) -> Answer:
        """The default model's facts (or `?model=`'s), every served model's, and the limits."""
        return Answer(wire.json_bytes(self.service.info(self.model(_query(scope).get("model")))))

    async def list_models(self, scope: Scope, receive: Receive) -> Answer:
        """OpenAI's model list: every served model by full id, with its short name and whether it is the default."""
        return Answer(wire.json_bytes({"object": "list", "data": [self.model_entry(m) for m in self.catalog]}))

    async def get_model(self, scope: Scope, receive: Receive) -> Answer:
        name = scope["path"].split("/v1/models/", 1)[1]
        served = self.model(name)
        return Answer(wire.json_bytes(self.model_entry(served)), model=served.name)

    def model_entry(self, served: Served) -> dict[str, Any]:
        return {"id": served.model_id, "object": "model", "created": self.service.started, "owned_by": "swiftembed",
                "name": served.name, "default": served is self.catalog.default,
                "dimension": served.embedder.dim}

    async def metrics_route(self, scope: Scope, receive: Receive) -> Answer:
        exposition = self.metrics.exposition()
        if exposition is None:
            raise ApiError(404, "metrics are exported by the serving system (Ray), not by this route",
                           type="not_found_error", code="not_found")
        body, content_type = exposition
        return Answer(body, content_type)

    async def openapi(self, scope: Scope, receive: Receive) -> Answer:
        return Answer(self._openapi)


def _query(scope: Scope) -> dict[str, str]:
    """Query parameters, the last value of each."""
    raw = scope.get("query_string", b"")
    return {k: v[-1] for k, v in parse_qs(raw.decode("latin-1"), keep_blank_values=True).items()} if raw else {}


async def _blocks(blocks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A body written block by block, letting other requests run between blocks."""
    for block in blocks:
        yield block
        await asyncio.sleep(0)


async def _lines(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """The body's lines as they arrive (the last may lack its newline)."""
    buffer = b""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        buffer += chunk
        if b"\n" in buffer:
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                yield line
    if buffer:
        yield buffer
