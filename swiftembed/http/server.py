"""One-box serving without Ray: the same ASGI app under uvicorn, with prometheus-client metrics."""

from __future__ import annotations

from starlette.types import ASGIApp

from swiftembed.core.catalog import Catalog
from swiftembed.http.routes import create_app
from swiftembed.service.metrics import PrometheusMetrics
from swiftembed.service.settings import Settings


def standalone_app(catalog: Catalog, settings: Settings | None = None) -> ASGIApp:
    return create_app(catalog, settings=settings, metrics=PrometheusMetrics())


def run_standalone(catalog: Catalog, settings: Settings, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(
        standalone_app(catalog, settings),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        loop="auto",
        http="auto",
        timeout_keep_alive=30,
    )
