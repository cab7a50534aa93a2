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

import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import grpc

from swiftembed import __version__
from swiftembed.core.catalog import Served
from swiftembed.grpc import tei_pb2 as pb
from swiftembed.service import inputs
from swiftembed.service.inputs import INTERNAL_ERROR, OVERLOADED, UNAUTHORIZED, ApiError, Options
from swiftembed.service.metrics import GRPC_ROUTE, NO_MODEL, Metrics
from swiftembed.service.service import EmbeddingService

log = logging.getLogger("swiftembed")

MODEL_KEY = "model"  # call metadata naming the served model (TEI's messages have no model field)
RIGHT = pb.TRUNCATION_DIRECTION_RIGHT


def status_code(error: ApiError) -> grpc.StatusCode:
    """TEI's code for the kind of error HTTP answers with `error.status` (router/src/grpc/server.rs: Validation
    INVALID_ARGUMENT, Overloaded RESOURCE_EXHAUSTED, Unhealthy UNAVAILABLE, Backend FAILED_PRECONDITION; auth
    UNAUTHENTICATED), and NOT_FOUND for a model this service does not serve."""
    return _CODES.get(error.status) or (grpc.StatusCode.INVALID_ARGUMENT if error.status < 500
                                         else grpc.StatusCode.INTERNAL)


_CODES = {401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND, 408: grpc.StatusCode.DEADLINE_EXCEEDED,
          429: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.RESOURCE_EXHAUSTED}


class Message(NamedTuple):
    """A message as read: its one text, checked, and when it arrived."""

    request: Any
    text: str
    start: float


# A message's answer, the texts it holds (0 or 1) and their tokens, for the metrics.
Answer = tuple[Any, int, int]
Run = Callable[[Message, Served], Awaitable[Answer]]


class Rpc(NamedTuple):
    route: str  # the metrics' route label; a stream's adds "Stream"
    run: Run
    request_type: Any
    has_text: bool = True  # Info's request holds none


class TeiApi:
    """The RPCs, as gRPC handlers for a `grpc.aio` server (`handlers()`)."""

    def __init__(self, service: EmbeddingService, metrics: Metrics) -> None:
        self.service, self.metrics, self.settings = service, metrics, service.settings
        self.load = service.load
        self.expected = inputs.bearer(self.settings)

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        embed = Rpc("Embed/Embed", self.embed, pb.EmbedRequest)
        sparse = Rpc("Embed/EmbedSparse", self.embed_sparse, pb.EmbedSparseRequest)
        embed_all = Rpc("Embed/EmbedAll", self.embed_all, pb.EmbedAllRequest)
        tokenize = Rpc("Tokenize/Tokenize", self.tokenize, pb.EncodeRequest)
        unary, stream = self.unary, self.stream
        return [
            _service("tei.v1.Info", {"Info": unary(Rpc("Info/Info", self.info, pb.InfoRequest, has_text=False))}),
            _service("tei.v1.Embed", {
                "Embed": unary(embed), "EmbedStream": stream(embed),
                "EmbedSparse": unary(sparse), "EmbedSparseStream": stream(sparse),
                "EmbedAll": unary(embed_all), "EmbedAllStream": stream(embed_all),
            }),
            _service("tei.v1.Tokenize", {"Tokenize": unary(tokenize), "TokenizeStream": stream(tokenize)}),
        ]

    # The RPCs, one message each --------------------------------------------------------------------------------
    async def info(self, message: Message, served: Served) -> Answer:
        e, settings = served.embedder, self.settings
        return pb.InfoResponse(
            version=__version__, model_id=served.model_id, model_sha=e.checksum, model_dtype=e.model.table_dtype,
            model_type=pb.MODEL_TYPE_EMBEDDING, max_concurrent_requests=settings.max_concurrency,
            max_input_length=e.max_tokens or 0,
            max_batch_tokens=settings.max_token_vectors,  # EmbedAll's bound (pooling has no token budget)
            max_batch_requests=settings.max_batch_size, max_client_batch_size=settings.max_texts,
            tokenization_workers=1,  # tokenization runs on the server's event loop
        ), 0, 0

    async def embed(self, message: Message, served: Served) -> Answer:
        """Pooled through the batcher with whatever else is in flight (HTTP requests, other calls and streams)."""
        options = Options(normalize=message.request.normalize)  # TEI's proto default: false
        vectors, tokens = await self.service.embed([message.text], served, options)
        return pb.EmbedResponse(embeddings=vectors[0].tolist(), metadata=_metadata(message, tokens)), 1, tokens

    async def embed_sparse(self, message: Message, served: Served) -> Answer:
        (vector,), tokens = await self.service.sparse([message.text], served)
        pairs = [pb.SparseValue(index=i, value=v) for i, v in zip(vector.indices.tolist(), vector.values.tolist())]
        return pb.EmbedSparseResponse(sparse_embeddings=pairs, metadata=_metadata(message, tokens)), 1, tokens

    async def embed_all(self, message: Message, served: Served) -> Answer:
        (vectors,), tokens = self.service.embed_all([message.text], served)
        rows = [pb.TokenEmbedding(embeddings=row) for row in vectors.tolist()]
        return pb.EmbedAllResponse(token_embeddings=rows, metadata=_metadata(message, tokens)), 1, tokens

    async def tokenize(self, message: Message, served: Served) -> Answer:
        """The ids the model pools, with the token strings /tokenize gives (`add_special_tokens` is accepted: a
        static model's texts never carry special tokens; no character offsets: `start`/`stop` unset)."""
        (ids,) = self.service.tokenize([message.text], served)
        token = served.embedder.tokenizer.id_to_token
        return pb.EncodeResponse(tokens=[pb.SimpleToken(id=i, text=token(i) or "") for i in ids]), 1, len(ids)

    def message(self, rpc: Rpc, request: Any, start: float) -> Message:
        """The message's one text, checked as HTTP checks TEI's `inputs`; what TEI lets a client ask that the served
        models cannot do (a prompt, cutting at the start) is refused rather than ignored."""
        if not rpc.has_text:
            return Message(request, "", start)
        inputs.tei_extras(getattr(request, "truncation_direction", RIGHT) != RIGHT,
                          request.prompt_name if request.HasField("prompt_name") else None)
        (text,) = inputs.texts(request.inputs, "inputs", self.settings)
        return Message(request, text, start)

    # Calls: auth, the concurrency bound, the model, load and metrics -------------------------------------------
    def unary(self, rpc: Rpc) -> grpc.RpcMethodHandler:
        route = GRPC_ROUTE + rpc.route

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            served = await self.admit(route, context, start)
            answer = await self.answer(route, rpc, request, start, served)
            if isinstance(answer, ApiError):
                await context.abort(status_code(answer), answer.message)
            return answer

        return grpc.unary_unary_rpc_method_handler(call, request_deserializer=rpc.request_type.FromString,
                                                   response_serializer=_serialize)

    async def admit(self, route: str, context: grpc.aio.ServicerContext, start: float) -> Served:
        """The key, the concurrency bound and the model, checked once per call (a stream: when it opens); a refusal
        counts in the metrics and ends the call (`abort` raises)."""
        try:
            self.refuse(context)
            return self.model(context)
        except ApiError as error:
            self.metrics.request(route, error.status, (time.perf_counter() - start) * 1e3, 0, 0, NO_MODEL)
            await context.abort(status_code(error), error.message)
            raise  # not reached: abort raises

    def stream(self, rpc: Rpc) -> grpc.RpcMethodHandler:
        """One answer per message, in order, each as its unary call would answer it; a refused message ends the
        stream with its error after the answers before it, as TEI's streams do. Auth, the concurrency bound and the
        model are checked once, when the stream opens; every message then counts as a request in the load and the
        metrics. Messages are answered one after another: the batcher still merges texts across streams and calls,
        and reading ahead to answer several of a stream at once did not pay (benchmarks/bench_grpc.py: grpc.aio's
        per-message reads, not the pooling, set the pace)."""
        route = GRPC_ROUTE + rpc.route + "Stream"  # Embed/EmbedStream, ...

        async def call(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            served = await self.admit(route, context, time.perf_counter())
            async for request in requests:
                answer = await self.answer(route, rpc, request, time.perf_counter(), served)
                if isinstance(answer, ApiError):
                    await context.abort(status_code(answer), answer.message)
                yield answer

        return grpc.stream_stream_rpc_method_handler(call, request_deserializer=rpc.request_type.FromString,
                                                     response_serializer=_serialize)

    async def answer(self, route: str, rpc: Rpc, request: Any, start: float, served: Served) -> Any:
        """A message's answer, or the ApiError that refuses it: one request in the load and the metrics, with the
        status HTTP answers the same outcome with (500 for a call that ended before its answer, as HTTP counts a
        client that left)."""
        status, texts, tokens = 500, 0, 0
        self.load.enter()
        try:
            answer, texts, tokens = await rpc.run(self.message(rpc, request, start), served)
            status = 200
            return answer
        except ApiError as error:
            status = error.status
            return error
        except Exception:
            log.exception("unexpected error on %s", route)
            return INTERNAL_ERROR
        finally:
            self.load.exit()
            self.metrics.request(route, status, (time.perf_counter() - start) * 1e3, texts, tokens, served.name)

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


def _metadata(message: Message, tokens: int) -> pb.Metadata:
    """TEI's per-answer figures: the characters and tokens of the text, and the time since its message arrived
    (tokenizing and pooling happen in one batched kernel call, not timed apart)."""
    return pb.Metadata(compute_chars=len(message.text), compute_tokens=tokens,
                       total_time_ns=int((time.perf_counter() - message.start) * 1e9))

