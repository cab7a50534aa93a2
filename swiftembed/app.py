"""The HTTP API: a plain ASGI (Starlette) app that knows nothing of Ray.

Routes parse and validate with `wire`, hand texts to a `Backend` for tokenization and pooling (in-process here;
the Ray layer plugs in a batching one), then finish and encode the vectors per request. A small ASGI front
door adds auth, the concurrency bound, timing headers and metrics around every route.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from swiftembed import __version__, wire
from swiftembed.batching import Backend, Batcher, Pooled
from swiftembed.embedder import Embedder
from swiftembed.metrics import Metrics, NoMetrics
from swiftembed.openapi import openapi_spec
from swiftembed.settings import Settings
from swiftembed.wire import ApiError

log = logging.getLogger("swiftembed")

JSON = "application/json"
OCTET = "application/octet-stream"
OCTET_BYTES = OCTET.encode()  # compared with the raw Accept header on every embedding request
JSONL_TYPES = ("application/jsonl", "application/x-ndjson", "application/x-jsonlines", "application/json-lines")
OPEN_PATHS = frozenset({"/health", "/metrics"})
INTERNAL_ERROR = ApiError(500, "internal error", type="server_error", code="internal_error")
JSONL_CHUNK = 1024  # lines encoded per kernel call on /embed/jsonl
# Response headers a browser script may read under CORS (the raw route's shape is only in headers).
EXPOSED_HEADERS = ["X-Processing-Time-Ms", "X-Token-Count", "X-Embedding-Count", "X-Embedding-Dimension",
                   "X-Embedding-Dtype", "Retry-After"]


class Answer(NamedTuple):
    """An embedding route's whole response, sent by the front door without a Response object in between."""

    body: bytes
    media_type: str = JSON
    status: int = 200
    headers: tuple[tuple[bytes, bytes], ...] = ()
    texts: int = 0
    tokens: int = 0


Handler = Callable[[Scope, Receive], Awaitable[Answer]]  # an embedding route, answered by the front door


def create_app(
    embedder: Embedder,
    *,
    backend: Backend | None = None,
    settings: Settings | None = None,
    metrics: Metrics | None = None,
) -> ASGIApp:
    """The SwiftEmbed ASGI app around one model."""
    api = EmbeddingApi(embedder, backend or Batcher(embedder), settings or Settings(), metrics or NoMetrics())
    return api.app


class EmbeddingApi:
    def __init__(self, embedder: Embedder, backend: Backend, settings: Settings, metrics: Metrics) -> None:
        self.embedder, self.backend, self.settings, self.metrics = embedder, backend, settings, metrics
        self.ready = True
        # The front door answers POSTs to these itself; the router keeps them for the other methods' 405s.
        self.hot = {"/embed": self.embed, "/v1/embeddings": self.openai_embeddings}
        routes = [
            *(Route(path, _routed(handler), methods=["POST"]) for path, handler in self.hot.items()),
            Route("/embed/jsonl", self.embed_jsonl, methods=["POST"]),
            Route("/similarity", self.similarity, methods=["POST"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/info", self.info, methods=["GET"]),
            Route("/metrics", self.metrics_route, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]
        self.paths = frozenset(route.path for route in routes)
        router = Starlette(
            routes=routes,
            exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _unexpected},
        )
        # The front door sits outside Starlette, so a one-text request pays for no framework layer at all.
        self.load = LoadMeter()  # requests in progress: the concurrency bound, and a replica's load for autoscaling
        self.front = FrontDoor(router, self)
        self.app: ASGIApp = self.front
        if settings.cors_origins:  # outermost: preflights carry no API key, and 401/503 answers need CORS headers too
            self.app = CORSMiddleware(
                self.app, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "Accept"], expose_headers=EXPOSED_HEADERS,
            )
        self._openapi = orjson.dumps(openapi_spec(embedder, settings))

    # Embedding routes --------------------------------------------------------------------------------------
    async def openai_embeddings(self, scope: Scope, receive: Receive) -> Answer:
        body = await self.read_json(scope, receive)
        req = wire.parse_openai(body, self.settings, self.embedder.dim, self.embedder.vocab_size)
        if req.texts is not None:
            pooled = await self.backend.pool(req.texts)
        else:
            batch = self.embedder.tokenizer.from_ids(req.token_ids or [])
            pooled = Pooled(self.embedder.pool(batch, mean=False), batch.lengths.tolist())
        vectors = self.finish(pooled, req.options)
        tokens = sum(pooled.tokens)
        body = wire.openai_body(vectors, self.embedder.model_id, tokens, req.encoding_format)
        return Answer(body, texts=len(vectors), tokens=tokens)

    async def embed(self, scope: Scope, receive: Receive) -> Answer:
        body = await self.read_json(scope, receive)
        style: wire.ErrorStyle = "tei" if "inputs" in body else "openai"
        try:
            req, style = wire.parse_embed(body, self.settings, self.embedder.dim)
        except ApiError as error:
            return _error_answer(error, style)
        assert req.texts is not None
        pooled = await self.backend.pool(req.texts)
        vectors = self.finish(pooled, req.options)
        texts, tokens = len(vectors), sum(pooled.tokens)
        if OCTET_BYTES in _header(scope, b"accept"):
            shape = ((b"x-embedding-count", b"%d" % texts), (b"x-embedding-dimension", b"%d" % vectors.shape[1]),
                     (b"x-embedding-dtype", b"float32-le"))
            return Answer(wire.raw_body(vectors), OCTET, headers=shape, texts=texts, tokens=tokens)
        if style == "tei":
            return Answer(wire.json_bytes(vectors), texts=texts, tokens=tokens)
        payload = {
            "embeddings": vectors, "model": self.embedder.model_id, "dimensions": vectors.shape[1], "tokens": tokens
        }
        return Answer(wire.json_bytes(payload), texts=texts, tokens=tokens)

    async def embed_jsonl(self, request: Request) -> Response:
        content_type = _media_type(_header(request.scope, b"content-type"))
        if content_type not in JSONL_TYPES:
            raise ApiError(415, f"/embed/jsonl takes Content-Type application/jsonl, got {content_type or 'none'}",
                           code="unsupported_media_type")
        self.check_length(request.scope, self.settings.max_jsonl_bytes)
        return JsonLinesResponse(self.jsonl_lines(request))

    async def jsonl_lines(self, request: Request) -> AsyncIterator[bytes]:
        """Answer line for line, in order, encoding JSONL_CHUNK lines per kernel call: memory stays bounded.

        A malformed line gets an error line at its index and the stream goes on; a broken limit ends it.
        """
        pending: list[tuple[int, str]] = []
        index = texts = tokens = 0
        try:
            async for raw in _lines(request, self.settings.max_jsonl_bytes):
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
                    body, count = await self.encode_jsonl(pending)
                    texts, tokens, pending = texts + len(pending), tokens + count, []
                    yield body + (wire.jsonl_error_line(index - 1, error) if error is not None else b"")
            body, count = await self.encode_jsonl(pending)
            texts, tokens = texts + len(pending), tokens + count
            yield body
        except ApiError as error:
            yield wire.jsonl_error_line(index, error)
        finally:
            request.state.texts = texts
            request.state.tokens = tokens

    def jsonl_text(self, raw: bytes) -> str:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"line is not valid JSON: {exc}", code="invalid_json") from None
        text = value.get("text") if isinstance(value, dict) else value if isinstance(value, str) else None
        if not isinstance(text, str):
            raise wire.invalid('each line must be {"text": string}', "text")
        return wire.text(text, "text", self.settings)

    async def encode_jsonl(self, pending: list[tuple[int, str]]) -> tuple[bytes, int]:
        if not pending:
            return b"", 0
        pooled = await self.backend.pool([text for _, text in pending])
        vectors = self.embedder.finish(pooled.sums, tokens=pooled.tokens, inplace=True)
        return wire.jsonl_lines([i for i, _ in pending], vectors), sum(pooled.tokens)

    async def similarity(self, request: Request) -> Response:
        body = await self.read_json(request.scope, request.receive)
        left, right, pairwise = wire.parse_similarity(body, self.settings)
        pooled = await self.backend.pool(left + right)
        vectors = self.embedder.finish(pooled.sums, normalize=True, inplace=True)
        a, b = vectors[: len(left)], vectors[len(left) :]
        scores = np.vecdot(a, b) if pairwise else b @ a[0]
        request.state.texts = len(vectors)
        request.state.tokens = sum(pooled.tokens)
        return Response(wire.json_bytes({"scores": scores}), media_type=JSON)

    async def tokenize(self, request: Request) -> Response:
        body = await self.read_json(request.scope, request.receive)
        texts = wire.parse_tokenize(body, self.settings)
        ids = self.embedder.tokenize(texts)
        request.state.texts = len(texts)
        request.state.tokens = sum(map(len, ids))
        tokens = wire.token_strings(ids, self.embedder.tokenizer.id_to_token)
        return Response(wire.json_bytes({"ids": ids, "tokens": tokens}), media_type=JSON)

    # Service routes ----------------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        if not self.ready:
            return Response(b'{"status":"loading"}', status_code=503, media_type=JSON)
        return Response(b'{"status":"ok"}', media_type=JSON)

    async def info(self, request: Request) -> Response:
        e = self.embedder
        facts = {
            "model": e.model_id,
            "checksum": e.checksum,
            "dimension": e.dim,
            "vocab_size": e.vocab_size,
            "max_tokens": e.max_tokens,
            "normalize": e.normalize,
            "table_dtype": str(e.model.embeddings.dtype),
            "limits": self.settings.public(),
            "version": __version__,
        }
        return Response(wire.json_bytes(facts), media_type=JSON)

    async def metrics_route(self, request: Request) -> Response:
        exposition = self.metrics.exposition()
        if exposition is None:
            raise ApiError(404, "metrics are exported by the serving system (Ray), not by this route",
                           type="not_found_error", code="not_found")
        body, content_type = exposition
        return Response(body, media_type=content_type)

    async def openapi(self, request: Request) -> Response:
        return Response(self._openapi, media_type=JSON)

    # Helpers -----------------------------------------------------------------------------------------------
    def finish(self, pooled: Pooled, options: wire.Options) -> np.ndarray:
        """A request's vectors from its pooled sums (the batch's normalized rows, when those are what it asks)."""
        if pooled.unit is not None and options.dimensions is None:
            if self.embedder.normalize if options.normalize is None else options.normalize:
                return pooled.unit
        return self.embedder.finish(
            pooled.sums, tokens=pooled.tokens, normalize=options.normalize, dimensions=options.dimensions, inplace=True
        )

    def check_length(self, scope: Scope, limit: int) -> None:
        length = _header(scope, b"content-length")
        if length and (not length.isdigit() or int(length) > limit):
            raise _too_large(limit)

    async def read_json(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        """The body as a JSON object, read from `receive` directly: Request.stream()'s async generator costs more
        than a small body."""
        content_type = _header(scope, b"content-type")
        if content_type and content_type != b"application/json":  # the exact usual value needs no parsing
            media_type = _media_type(content_type)
            if media_type and media_type != JSON and not media_type.endswith("+json"):
                raise ApiError(415, f"Content-Type must be application/json, got {media_type}",
                               code="unsupported_media_type")
        limit = self.settings.max_body_bytes
        self.check_length(scope, limit)
        chunks: list[bytes] = []
        size = 0
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
        return wire.parse_json(chunks[0] if len(chunks) == 1 else b"".join(chunks))


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is larger than the limit of {limit} bytes", code="payload_too_large")


def _cut_short() -> ApiError:
    return ApiError(400, "the request body ended before its declared length", code="incomplete_body")


async def _lines(request: Request, limit: int) -> AsyncIterator[bytes]:
    buffer = b""
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            buffer += chunk
            if b"\n" in buffer:
                *complete, buffer = buffer.split(b"\n")
                for line in complete:
                    yield line
    except ClientDisconnect:
        raise _cut_short() from None
    if buffer:
        yield buffer


class JsonLinesResponse(Response):
    """Streams JSON lines while the request body is still being read.

    Starlette's StreamingResponse may listen for disconnects on `receive`, which would steal the body chunks
    this response's own iterator reads; this one only sends.
    """

    media_type = "application/jsonl"

    def __init__(self, lines: AsyncIterator[bytes]) -> None:
        super().__init__(media_type=self.media_type)
        self.lines = lines

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for chunk in self.lines:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


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


class FrontDoor:
    """Auth, the concurrency bound, X-Processing-Time-Ms / X-Token-Count headers and metrics, for every route.

    POSTs to the embedding routes are answered here directly (handler -> `Answer` -> two ASGI messages): for a
    one-text request the router, Response objects and header wrappers would cost as much as the embedding.
    """

    def __init__(self, app: ASGIApp, api: EmbeddingApi) -> None:
        self.app, self.api = app, api
        key = api.settings.api_key
        self.expected = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = _route_path(scope)
        error = self.refuse(scope, path)
        handler = self.api.hot.get(path) if scope["method"] == "POST" else None
        if error is None and handler is not None:
            await self.answer(handler, path, start, scope, receive, send)
        else:
            await self.route(error, path, start, scope, receive, send)

    async def answer(
        self, handler: Handler, path: str, start: float, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.api.load.enter()
        status = 500
        answer = None
        try:
            try:
                answer = await handler(scope, receive)
            except ApiError as error:
                answer = _error_answer(error)
            except Exception:
                log.exception("unexpected error on POST %s", path)
                answer = _error_answer(INTERNAL_ERROR)
            status = answer.status
            headers = [
                (b"content-type", answer.media_type.encode()),
                (b"content-length", b"%d" % len(answer.body)),
                *answer.headers,
                (b"x-processing-time-ms", b"%.3f" % ((time.perf_counter() - start) * 1e3)),
                (b"x-token-count", b"%d" % answer.tokens),
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": answer.body})
        finally:
            self.api.load.exit()
            texts, tokens = (answer.texts, answer.tokens) if answer is not None else (0, 0)
            self.api.metrics.request(path, status, (time.perf_counter() - start) * 1e3, texts, tokens)

    async def route(
        self, error: ApiError | None, path: str, start: float, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Every other request: through Starlette's router, or refused with `error`."""
        state: dict[str, Any] = scope.setdefault("state", {})
        status = 500

        async def send_with_headers(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-processing-time-ms", b"%.3f" % ((time.perf_counter() - start) * 1e3)),
                    (b"x-token-count", b"%d" % state.get("tokens", 0)),
                ]
            await send(message)

        try:
            if error is not None:
                await _send_error(error, send_with_headers)
                return
            self.api.load.enter()
            try:
                await self.app(scope, receive, send_with_headers)
            finally:
                self.api.load.exit()
        finally:
            route = path if path in self.api.paths else "other"
            latency = (time.perf_counter() - start) * 1e3
            self.api.metrics.request(route, status, latency, state.get("texts", 0), state.get("tokens", 0))

    def refuse(self, scope: Scope, path: str) -> ApiError | None:
        if self.expected is not None and path not in OPEN_PATHS:
            given = _header(scope, b"authorization")
            if not hmac.compare_digest(given, self.expected):
                return ApiError(401, "missing or wrong API key (Authorization: Bearer <key>)",
                                type="authentication_error", code="invalid_api_key",
                                headers={"WWW-Authenticate": "Bearer"})
        if self.api.load.in_flight >= self.api.settings.max_concurrency:
            return ApiError(503, "server is at capacity; retry shortly", type="server_overloaded",
                            code="overloaded", headers={"Retry-After": "1"})
        return None


async def _send_error(error: ApiError, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    body = error.body()
    headers = [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error_response(error: ApiError, style: wire.ErrorStyle = "openai") -> Response:
    return Response(error.body(style), status_code=error.status, media_type=JSON, headers=error.headers)


def _error_answer(error: ApiError, style: wire.ErrorStyle = "openai") -> Answer:
    headers = tuple((k.lower().encode(), v.encode()) for k, v in error.headers.items())
    return Answer(error.body(style), status=error.status, headers=headers)


def _routed(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A front-door handler as a router endpoint. In the app the front door answers every POST itself; the route
    is there so that other methods get the router's 405, and it still works if the router is used alone."""

    async def endpoint(request: Request) -> Response:
        answer = await handler(request.scope, request.receive)
        request.state.texts, request.state.tokens = answer.texts, answer.tokens
        headers = {k.decode(): v.decode() for k, v in answer.headers}
        return Response(answer.body, status_code=answer.status, media_type=answer.media_type, headers=headers)

    return endpoint


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = {404: "not_found_error", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request_error")
    error = ApiError(exc.status_code, str(exc.detail), type=kind, code=kind, headers=dict(exc.headers or {}))
    return _error_response(error)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _error_response(INTERNAL_ERROR)


def _route_path(scope: Scope) -> str:
    """The path below the mount point: under Serve with a route prefix, `path` still carries the prefix."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def _header(scope: Scope, name: bytes) -> bytes:
    """One header straight from the ASGI scope: cheaper than building Starlette's Headers per request."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return b""


def _media_type(content_type: bytes) -> str:
    """The media type of a raw Content-Type header value, without parameters."""
    return content_type.decode("latin-1").split(";", 1)[0].strip().lower()

