"""One-box serving without Ray: the same ASGI app under uvicorn, with prometheus-client metrics."""

from __future__ import annotations

from starlette.applications import Starlette

from swiftembed.app import create_app
from swiftembed.embedder import Embedder
from swiftembed.metrics import PrometheusMetrics
from swiftembed.settings import Settings


def standalone_app(embedder: Embedder, settings: Settings | None = None) -> Starlette:
    return create_app(embedder, settings=settings, metrics=PrometheusMetrics())


def run_standalone(embedder: Embedder, settings: Settings, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(
        standalone_app(embedder, settings),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        loop="auto",
        http="auto",
        timeout_keep_alive=30,
    )
