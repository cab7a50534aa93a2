"""The HTTP API's routes: a plain ASGI app that knows nothing of Ray.

Each route parses and validates with `wire`, calls the `EmbeddingService` (swiftembed/service/service.py: the
model, pooling through the batcher, finishing), and encodes what it returns into an `Answer`. The front door
(swiftembed/http/frontdoor.py) dispatches to the routes by their table and sends answers.
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
from swiftembed.http.frontdoor import JSON, Answer, FrontDoor, Route, Stream, error_answer, header, media_type
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
        self._deadlines: BodyDeadlines | None = None  # the body-read deadlines of the loop this app runs on
        settings = self.settings
        self.table = [
            Route("/v1/embeddings", "POST", self.openai_embeddings),
            Route("/embed", "POST", self.embed),
            Route("/v2/embed", "POST", self.cohere_embed),
            Route("/embed/jsonl", "POST", self.embed_jsonl),
            Route("/embed/chunks", "POST", self.embed_chunks),
            Route("/embed_sparse", "POST", self.embed_sparse),
            Route("/embed_all", "POST", self.embed_all),
            Route("/similarity", "POST", self.similarity),
            Route("/tokenize", "POST", self.tokenize),
            Route("/v1/models", "GET", self.list_models),
            Route("/v1/models/{id}", "GET", self.get_model),
            Route("/health", "GET", self.health, open=True),
            Route("/info", "GET", self.info),
            Route("/metrics", "GET", self.metrics_route, open=True),
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
    async def openai_embeddings(self, scope: Scope, receive: Receive) -> Answer:
        body = await self.read_json(scope, receive)
        served = self.model(body.get("model"))
        embedder = served.embedder
        req = wire.parse_openai(body, self.settings, embedder.dim, embedder.vocab_size)
        if req.texts is not None:
            vectors, tokens = await self.service.embed(req.texts, served, req.options)
        else:
            vectors, tokens = self.service.embed_ids(req.token_ids or [], served, req.options)
        body = wire.openai_body(vectors, served.model_id, tokens, req.encoding_format)
        return Answer(body, texts=len(vectors), tokens=tokens, model=served.name)

    async def embed(self, scope: Scope, receive: Receive) -> Answer:
        body = await self.read_json(scope, receive)
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

    async def cohere_embed(self, scope: Scope, receive: Receive) -> Answer:
        """Cohere's embed API (v2): every asked `embedding_types` of the same texts, pooled once; errors in
        Cohere's shape, so its SDK raises its own error types."""
        try:
            body = await self.read_json(scope, receive)
            served = self.model(body.get("model"))
            req = wire.parse_cohere(body, self.settings, served.embedder.dim, served.embedder.max_tokens)
        except ApiError as error:
            return error_answer(error, "cohere")
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
        self.check_length(scope, self.settings.max_jsonl_bytes)
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
            async for raw in _lines(self.body_chunks(receive), self.settings.max_jsonl_bytes):
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

    async def embed_chunks(self, scope: Scope, receive: Receive) -> Answer:
        """Long documents cut into overlapping chunks of whole words, every chunk's vector from one pass over its
        document: chunk i's vector is what /embed gives for `text[start:end]`."""
        body = await self.read_json(scope, receive)
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

    async def embed_sparse(self, scope: Scope, receive: Receive) -> Answer:
        """TEI's /embed_sparse: per text its distinct token ids with weights (swiftembed/core/sparse.py), the lexical
        half of hybrid search, from the same tokens as /embed."""
        body = await self.read_json(scope, receive)
        try:
            served = self.model(body.get("model"))
            texts = wire.parse_inputs(body, self.settings)
        except ApiError as error:
            return error_answer(error, "tei")
        vectors, tokens = await self.service.sparse(texts, served)
        return Answer(wire.sparse_body(vectors), texts=len(texts), tokens=tokens, model=served.name)

    async def embed_all(self, scope: Scope, receive: Receive) -> Answer:
        """TEI's /embed_all: per text each token's vector (for late-interaction search), here the table rows the
        text's mean is made of, from the same tokens as /embed."""
        body = await self.read_json(scope, receive)
        try:
            served = self.model(body.get("model"))
            texts = wire.parse_inputs(body, self.settings)
            vectors, tokens = self.service.embed_all(texts, served)
        except ApiError as error:
            return error_answer(error, "tei")
        return Answer(wire.token_vectors_body(vectors), texts=len(texts), tokens=tokens, model=served.name)

    async def similarity(self, scope: Scope, receive: Receive) -> Answer:
        body = await self.read_json(scope, receive)
        served = self.model(body.get("model"))
        req = wire.parse_similarity(body, self.settings)
        scores, tokens = await self.service.similarity(req.left, req.right, served, req.pairwise, req.mode)
        return Answer(wire.json_bytes({"scores": scores if req.pairwise else scores[0]}),
                      texts=len(req.left) + len(req.right), tokens=tokens, model=served.name)

    async def tokenize(self, scope: Scope, receive: Receive) -> Answer:
        body = await self.read_json(scope, receive)
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

    # Helpers -----------------------------------------------------------------------------------------------
    def check_length(self, scope: Scope, limit: int) -> None:
        length = header(scope, b"content-length")
        if length and (not length.isdigit() or int(length) > limit):
            raise _too_large(limit)

    async def read_json(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        """The body as a JSON object, read from `receive` directly: Request.stream()'s async generator costs more
        than a small body."""
        content_type = header(scope, b"content-type")
        if content_type and content_type != b"application/json":  # the exact usual value needs no parsing
            given = media_type(content_type)
            if given and given != JSON and not given.endswith("+json"):
                raise ApiError(415, f"Content-Type must be application/json, got {given}",
                               code="unsupported_media_type")
        limit = self.settings.max_body_bytes
        self.check_length(scope, limit)
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        chunk_s = self.settings.body_chunk_timeout_s
        now = loop.time()
        deadline = now + self.settings.body_timeout_s
        task, deadlines = asyncio.current_task(), self._deadlines
        if deadlines is None or deadlines.loop is not loop:
            deadlines = self._deadlines = BodyDeadlines(loop)
        assert task is not None
        deadlines.watch(task, min(now + chunk_s, deadline))
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _cut_short()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
                deadlines.due[task] = min(loop.time() + chunk_s, deadline)
        except asyncio.CancelledError:
            if not deadlines.expired(task):
                raise
            raise _timed_out() from None
        finally:
            deadlines.forget(task)
        return wire.parse_json(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    async def body_chunks(self, receive: Receive) -> AsyncIterator[bytes]:
        """A streamed body's chunks as they arrive; 408 when the next one takes over `body_chunk_timeout_s`."""
        more = True
        while more:
            try:
                async with asyncio.timeout(self.settings.body_chunk_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise _timed_out() from None
            if message["type"] == "http.disconnect":
                raise _cut_short()
            more = message.get("more_body", False)
            yield message.get("body", b"")


class BodyDeadlines:
    """Deadlines for reading request bodies on one event loop, kept by a task that sweeps them every TICK_S and
    cancels the readers past theirs (so a deadline fires up to TICK_S late). An asyncio timer per request
    (`asyncio.timeout`) cost ~7 us of a one-text request, a fifth of what the route itself does."""

    TICK_S = 0.1

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.due: dict[asyncio.Task[Any], float] = {}
        self.fired: set[asyncio.Task[Any]] = set()
        self.sweeper: asyncio.Task[None] | None = None

    def watch(self, task: asyncio.Task[Any], deadline: float) -> None:
        self.due[task] = deadline
        if self.sweeper is None:
            self.sweeper = self.loop.create_task(self.sweep())

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """Whether the sweep cancelled `task` (its cancellation then taken back), rather than anyone else."""
        if task not in self.fired:
            return False
        task.uncancel()
        return True

    def forget(self, task: asyncio.Task[Any]) -> None:
        del self.due[task]
        self.fired.discard(task)

    async def sweep(self) -> None:
        try:
            while self.due:  # ends when no body is being read; the next reader starts it again
                await asyncio.sleep(self.TICK_S)
                now = self.loop.time()
                for task, deadline in list(self.due.items()):
                    if deadline <= now and task not in self.fired:
                        self.fired.add(task)
                        task.cancel()
        finally:
            self.sweeper = None


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is larger than the limit of {limit} bytes", code="payload_too_large")


def _timed_out() -> ApiError:
    """A body that stopped arriving: 408, and the connection closed (what is left of the body is never read)."""
    return ApiError(408, "the request body did not arrive in time", code="request_timeout",
                    headers={"Connection": "close"})


def _cut_short() -> ApiError:
    return ApiError(400, "the request body ended before its declared length", code="incomplete_body")


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
            raise _too_large(limit)
        buffer += chunk
        if b"\n" in buffer:
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                yield line
    if buffer:
        yield buffer
