"""TEI's gRPC API (package tei.v1, swiftembed/grpc/tei.proto) over the `EmbeddingService`: an adapter, as the HTTP
routes are, so a client generated from text-embeddings-inference's proto works unchanged.

Each message holds one text, checked by swiftembed/service/inputs.py as HTTP checks TEI's `{"inputs": "..."}`, so
the same bad input gets the same message; an `ApiError` ends the call with the status code TEI gives that kind of
error (validation INVALID_ARGUMENT, overloaded RESOURCE_EXHAUSTED, ...) and HTTP's message, never UNKNOWN.
Every unary call and every message of a stream counts in the metrics HTTP requests go to, under the route
`grpc:<Service>/<Method>` with the status HTTP answers the same outcome with, and in the service's load.

Beyond TEI: the served model is the default unless the call's metadata names one (`model: <name>`; unknown: NOT_FOUND,
as HTTP's 404). Predict, Rerank and Decode are not registered: UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from swiftembed import __version__
from swiftembed.core.catalog import Served
from swiftembed.grpc import tei_pb2 as pb
from swiftembed.service import inputs
from swiftembed.service.inputs import OVERLOADED, UNAUTHORIZED, ApiError, Options, invalid
from swiftembed.service.metrics import GRPC_ROUTE, NO_MODEL, Metrics
from swiftembed.service.service import EmbeddingService

log = logging.getLogger("swiftembed")

MODEL_KEY = "model"  # call metadata naming the served model (TEI's messages have no model field)
STREAM_WINDOW = 64  # messages of one stream in flight at once; the stream is read no further until one is answered
INTERNAL_ERROR = ApiError(500, "internal error", type="server_error", code="internal_error")
RIGHT, NO_PROMPTS = pb.TRUNCATION_DIRECTION_RIGHT, "'prompt_name' is not supported: the served models have no prompts"


def status_code(error: ApiError) -> grpc.StatusCode:
    """TEI's code for the kind of error HTTP answers with `error.status` (router/src/grpc/server.rs: Validation
    INVALID_ARGUMENT, Overloaded RESOURCE_EXHAUSTED, Unhealthy UNAVAILABLE, Backend FAILED_PRECONDITION; auth
    UNAUTHENTICATED), and NOT_FOUND for a model this service does not serve."""
    return _CODES.get(error.status) or (grpc.StatusCode.INVALID_ARGUMENT if error.status < 500
                                         else grpc.StatusCode.INTERNAL)


_CODES = {401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND, 408: grpc.StatusCode.DEADLINE_EXCEEDED,
          429: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.RESOURCE_EXHAUSTED}

# One message's answer: (response, texts, tokens) for the metrics.
Answer = tuple[Any, int, int]
One = Callable[[Any, Served, float], Awaitable[Answer]]


class TeiApi:
    """The RPCs, as gRPC handlers for a `grpc.aio` server (`handlers()`)."""

    def __init__(self, service: EmbeddingService, metrics: Metrics) -> None:
        self.service, self.metrics, self.settings = service, metrics, service.settings
        self.load = service.load
        self.expected = inputs.bearer(self.settings)

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        unary, stream = self.unary, self.stream
        return [
            _service("tei.v1.Info", {"Info": unary("Info/Info", self.info, pb.InfoRequest)}),
            _service("tei.v1.Embed", {
                "Embed": unary("Embed/Embed", self.embed, pb.EmbedRequest),
                "EmbedStream": stream("Embed/EmbedStream", self.embed, pb.EmbedRequest),
                "EmbedSparse": unary("Embed/EmbedSparse", self.embed_sparse, pb.EmbedSparseRequest),
                "EmbedSparseStream": stream("Embed/EmbedSparseStream", self.embed_sparse, pb.EmbedSparseRequest),
                "EmbedAll": unary("Embed/EmbedAll", self.embed_all, pb.EmbedAllRequest),
                "EmbedAllStream": stream("Embed/EmbedAllStream", self.embed_all, pb.EmbedAllRequest),
            }),
            _service("tei.v1.Tokenize", {
                "Tokenize": unary("Tokenize/Tokenize", self.tokenize, pb.EncodeRequest),
                "TokenizeStream": stream("Tokenize/TokenizeStream", self.tokenize, pb.EncodeRequest),
            }),
        ]

    # The RPCs, one message each -----------------------------------------------------------------------------
    async def info(self, request: pb.InfoRequest, served: Served, start: float) -> Answer:
        e, settings = served.embedder, self.settings
        return pb.InfoResponse(
            version=__version__, model_id=served.model_id, model_sha=e.checksum, model_dtype=e.model.table_dtype,
            model_type=pb.MODEL_TYPE_EMBEDDING, max_concurrent_requests=settings.max_concurrency,
            max_input_length=e.max_tokens or 0,
            # No token budget per batch here: the most tokens one call may bring (TEI's client batch is max_texts).
            max_batch_tokens=min(settings.max_texts * (e.max_tokens or 0), 2**32 - 1),
            max_batch_requests=settings.max_batch_size, max_client_batch_size=settings.max_texts,
            tokenization_workers=1,  # tokenization runs on the server's event loop
        ), 0, 0

    async def embed(self, request: pb.EmbedRequest, served: Served, start: float) -> Answer:
        texts = self.texts(request)
        vectors, tokens = await self.service.embed(texts, served, Options(normalize=request.normalize))
        metadata = _metadata(texts[0], tokens, start)
        return pb.EmbedResponse(embeddings=vectors[0].tolist(), metadata=metadata), 1, tokens

    async def embed_sparse(self, request: pb.EmbedSparseRequest, served: Served, start: float) -> Answer:
        texts = self.texts(request)
        vectors, tokens = await self.service.sparse(texts, served)
        indices, values = vectors[0]
        pairs = [pb.SparseValue(index=i, value=v) for i, v in zip(indices.tolist(), values.tolist())]
        return pb.EmbedSparseResponse(sparse_embeddings=pairs, metadata=_metadata(texts[0], tokens, start)), 1, tokens

    async def embed_all(self, request: pb.EmbedAllRequest, served: Served, start: float) -> Answer:
        texts = self.texts(request)
        vectors, tokens = self.service.embed_all(texts, served)
        rows = [pb.TokenEmbedding(embeddings=row) for row in vectors[0].tolist()]
        return pb.EmbedAllResponse(token_embeddings=rows, metadata=_metadata(texts[0], tokens, start)), 1, tokens

    async def tokenize(self, request: pb.EncodeRequest, served: Served, start: float) -> Answer:
        """The ids the model pools, with the token strings /tokenize gives (`add_special_tokens` is accepted: a
        static model's texts never carry special tokens; no character offsets: `start`/`stop` unset)."""
        texts = self.texts(request)
        ids = self.service.tokenize(texts, served)[0]
        token = served.embedder.tokenizer.id_to_token
        return pb.EncodeResponse(tokens=[pb.SimpleToken(id=i, text=token(i) or "") for i in ids]), 1, len(ids)

    def texts(self, request: Any) -> list[str]:
        """The message's one text, checked as HTTP checks TEI's `inputs`; what TEI lets a client ask that the served
        models cannot do (a prompt, cutting at the start) is refused rather than ignored."""
        if getattr(request, "truncation_direction", RIGHT) != RIGHT:
            raise invalid("'truncation_direction' must be Right: texts are cut at the model's token limit, at their "
                          "end", "truncation_direction")
        if request.HasField("prompt_name"):
            raise invalid(NO_PROMPTS, "prompt_name")
        return inputs.texts(request.inputs, "inputs", self.settings)

    # Calls: auth, the concurrency bound, the model, load and metrics -------------------------------------------
    def unary(self, route: str, one: One, request_type: Any) -> grpc.RpcMethodHandler:
        route = GRPC_ROUTE + route

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            try:
                self.refuse(context)
                served = self.model(context)
            except ApiError as error:
                self.metrics.request(route, error.status, (time.perf_counter() - start) * 1e3, 0, 0, NO_MODEL)
                return await context.abort(status_code(error), error.message)
            response, error = await self.answer(route, one, request, served, start)
            if error is not None:
                await context.abort(status_code(error), error.message)
            return response

        return grpc.unary_unary_rpc_method_handler(call, request_deserializer=request_type.FromString,
                                                   response_serializer=_serialize)

    def stream(self, route: str, one: One, request_type: Any) -> grpc.RpcMethodHandler:
        """One answer per message, in order; up to STREAM_WINDOW messages are worked on at once (their texts share
        the batcher's kernel calls). A refused message ends the stream with its error after the answers before it,
        as TEI's streams do. Auth, the concurrency bound and the model are checked once, when the stream opens."""
        route = GRPC_ROUTE + route

        async def call(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                self.refuse(context)
                served = self.model(context)
            except ApiError as error:
                self.metrics.request(route, error.status, 0.0, 0, 0, NO_MODEL)
                await context.abort(status_code(error), error.message)
            window = asyncio.Semaphore(STREAM_WINDOW)
            pending: asyncio.Queue[asyncio.Future[tuple[Any, ApiError | None]] | None] = asyncio.Queue()

            async def read() -> None:
                try:
                    async for request in requests:
                        start = time.perf_counter()
                        await window.acquire()
                        pending.put_nowait(asyncio.ensure_future(self.answer(route, one, request, served, start)))
                finally:  # the client's end of the stream (or a broken one): answer what came, then stop
                    pending.put_nowait(None)

            reader = asyncio.ensure_future(read())
            try:
                while (task := await pending.get()) is not None:
                    response, error = await task
                    window.release()
                    if error is not None:
                        await context.abort(status_code(error), error.message)
                    yield response
                await reader  # raises what broke the stream, if anything did
            finally:
                reader.cancel()
                while not pending.empty():
                    if (task := pending.get_nowait()) is not None:
                        task.cancel()

        return grpc.stream_stream_rpc_method_handler(call, request_deserializer=request_type.FromString,
                                                     response_serializer=_serialize)

    async def answer(self, route: str, one: One, request: Any, served: Served,
                     start: float) -> tuple[Any, ApiError | None]:
        """One message's answer, or the error that refuses it, counted as one request in the load and the metrics
        (500 for a message whose call ended before its answer, as HTTP counts a client that left)."""
        response, error, status = None, None, 500
        texts = tokens = 0
        self.load.enter()
        try:
            response, texts, tokens = await one(request, served, start)
            status = 200
        except ApiError as refused:
            error, status = refused, refused.status
        except Exception:
            log.exception("unexpected error on %s", route)
            error = INTERNAL_ERROR
        finally:
            self.load.exit()
            self.metrics.request(route, status, (time.perf_counter() - start) * 1e3, texts, tokens, served.name)
        return response, error

    def refuse(self, context: grpc.aio.ServicerContext) -> None:
        """HTTP's front door checks: the API key (`authorization: Bearer <key>` metadata), then capacity."""
        if self.expected is not None:
            given = _metadatum(context, "authorization")
            if not hmac.compare_digest(given.encode(), self.expected):
                raise UNAUTHORIZED
        if self.load.in_flight >= self.settings.max_concurrency:
            raise OVERLOADED

    def model(self, context: grpc.aio.ServicerContext) -> Served:
        """The model the call's `model` metadata names (404 `model_not_found` as on HTTP), else the default."""
        return self.service.model(_metadatum(context, MODEL_KEY) or None)


def _service(name: str, methods: dict[str, grpc.RpcMethodHandler]) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(name, methods)


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


def _metadatum(context: grpc.aio.ServicerContext, key: str) -> str:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            return item.value if isinstance(item.value, str) else ""
    return ""


def _metadata(text: str, tokens: int, start: float) -> pb.Metadata:
    """TEI's per-answer figures: the characters and tokens of the text, and the time since its message arrived
    (tokenizing and pooling happen in one batched kernel call, not timed apart)."""
    return pb.Metadata(compute_chars=len(text), compute_tokens=tokens,
                       total_time_ns=int((time.perf_counter() - start) * 1e9))

