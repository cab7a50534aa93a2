"""The gRPC server: TEI's API (swiftembed/grpc/api.py) under `grpc.aio`, on the event loop that serves HTTP, so both
share one `EmbeddingService` (its batcher merges gRPC and HTTP texts into the same kernel calls, and its load bounds
both). The standalone server runs one beside uvicorn; under Ray Serve every replica runs one beside its own HTTP
server, the replicas of a node sharing the port (SO_REUSEPORT: the kernel spreads connections across them).
"""

from __future__ import annotations

import logging

import grpc

from swiftembed.grpc.api import TeiApi
from swiftembed.service.metrics import Metrics
from swiftembed.service.service import EmbeddingService

log = logging.getLogger("swiftembed")


class GrpcServer:
    """TEI's gRPC API on host:port. `shared`: other processes may listen on the same port (a node's replicas);
    else the port must be free, as uvicorn's is, so a second server on it fails instead of silently splitting the
    traffic. Create and `start` it on the loop that serves the service."""

    def __init__(self, service: EmbeddingService, metrics: Metrics, host: str, port: int, *,
                 shared: bool = False) -> None:
        self.address = (host, port)
        self.api = TeiApi(service, metrics)
        options = [
            ("grpc.so_reuseport", 1 if shared else 0),
            # A message holds one text; allow what HTTP allows for a whole body (the text is then cut or refused).
            ("grpc.max_receive_message_length", service.settings.max_body_bytes),
        ]
        self.server = grpc.aio.server(options=options)
        self.server.add_generic_rpc_handlers(self.api.handlers())
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = self.server.add_insecure_port(target)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot listen for gRPC on {target}: {exc}") from None
        if bound != port:  # older grpcio reports a failed bind as port 0 instead of raising
            raise RuntimeError(f"cannot listen for gRPC on {target}")

    async def start(self) -> GrpcServer:
        await self.server.start()
        return self

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking calls (clients see GOAWAY and go elsewhere: another replica on the port) and give the calls
        in progress up to `grace_s` to finish."""
        await self.server.stop(grace_s)


async def start_grpc(service: EmbeddingService, metrics: Metrics, *, host: str, port: int,
                     shared: bool = False) -> GrpcServer:
    """A started `GrpcServer`: what the standalone server runs beside uvicorn when `grpc_port` is set."""
    server = await GrpcServer(service, metrics, host, port, shared=shared).start()
    log.info("TEI's gRPC API on %s:%d", host, port)
    return server
