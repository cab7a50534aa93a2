"""A no-op gRPC server for benchmarks/bench_grpc.py: `grpc.aio` on uvloop (as the standalone server runs it) answering
tei.v1.Embed/Embed and EmbedStream with a prepared answer of the real one's size, without embedding anything: the
ceiling `grpc.aio` itself sets, against which the real server's gRPC figures are read.

    python benchmarks/noop_grpc.py PORT
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import uvloop

from swiftembed import Embedder
from swiftembed.grpc import tei_pb2 as pb


async def serve(port: int) -> None:
    embedder = Embedder.load()
    text = "A man with a hard hat is dancing number 0."
    answer = pb.EmbedResponse(embeddings=embedder.encode(text).tolist(),
                              metadata=pb.Metadata(compute_chars=len(text), compute_tokens=11, total_time_ns=10_000))

    async def embed(request: pb.EmbedRequest, context: Any) -> pb.EmbedResponse:
        return answer

    async def embed_stream(requests: AsyncIterator[pb.EmbedRequest], context: Any) -> AsyncIterator[pb.EmbedResponse]:
        async for _ in requests:
            yield answer

    handlers = {
        "Embed": grpc.unary_unary_rpc_method_handler(embed, request_deserializer=pb.EmbedRequest.FromString,
                                                     response_serializer=pb.EmbedResponse.SerializeToString),
        "EmbedStream": grpc.stream_stream_rpc_method_handler(
            embed_stream, request_deserializer=pb.EmbedRequest.FromString,
            response_serializer=pb.EmbedResponse.SerializeToString),
    }
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("tei.v1.Embed", handlers)])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
