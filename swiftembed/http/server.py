"""One-box serving without Ray: the same ASGI app under uvicorn, with prometheus-client metrics, and optionally other
servers over the same service on the same event loop (the gRPC server: `swiftembed serve --standalone --grpc-port`)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import uvicorn
from starlette.types import ASGIApp

from swiftembed.core.catalog import Catalog
from swiftembed.http.routes import EmbeddingApi, build_api
from swiftembed.service.metrics import Metrics, PrometheusMetrics
from swiftembed.service.service import EmbeddingService
from swiftembed.service.settings import Settings


class Companion(Protocol):
    """A server beside uvicorn over the same service; stopped when uvicorn stops."""

    async def stop(self, grace_s: float = ...) -> None: ...


# Starts a companion on the running loop, over the service and metrics HTTP uses.
StartCompanion = Callable[[EmbeddingService, Metrics], Awaitable[Companion]]


def standalone_api(catalog: Catalog, settings: Settings | None = None) -> EmbeddingApi:
    return build_api(catalog, settings=settings, metrics=PrometheusMetrics())


def standalone_app(catalog: Catalog, settings: Settings | None = None) -> ASGIApp:
    return standalone_api(catalog, settings).app


class _StandaloneUvicorn(uvicorn.Server):
    """uvicorn that stops its companions with itself: on SIGTERM or Ctrl-C uvicorn shuts down, then re-raises the
    signal, which would end the process before anything after `serve()` ran."""

    companions: list[Companion]

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await asyncio.gather(super().shutdown(sockets), *(companion.stop() for companion in self.companions))


def run_standalone(catalog: Catalog, settings: Settings, *, host: str = "127.0.0.1", port: int = 8000,
                   beside: Sequence[StartCompanion] = ()) -> None:
    """Serve until interrupted; each of `beside` is started over the same service first (so a client that sees
    HTTP answer finds them up too)."""
    api = standalone_api(catalog, settings)
    config = uvicorn.Config(api.app, host=host, port=port, log_level="warning", access_log=False, loop="auto",
                            http="auto", timeout_keep_alive=30)
    server = _StandaloneUvicorn(config)

    async def serve() -> None:
        server.companions = [await start(api.service, api.metrics) for start in beside]
        await server.serve()

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(serve())
