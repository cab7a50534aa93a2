"""The app mounted below a prefix (Serve's route_prefix sets root_path): routes, auth exemptions and metric
labels must see the path below the prefix."""

from __future__ import annotations

import asyncio

import orjson

from swiftembed.http.routes import create_app
from swiftembed.service.metrics import PrometheusMetrics
from swiftembed.service.settings import Settings


def call(app, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": "/live" + path, "raw_path": ("/live" + path).encode(), "root_path": "/live", "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in {"content-type": "application/json",
                                                                   **(headers or {})}.items()],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }
    messages: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        messages.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


def test_routes_auth_and_labels_below_a_prefix(embedder):
    metrics = PrometheusMetrics()
    app = create_app(embedder, settings=Settings(api_key="k"), metrics=metrics)
    assert call(app, "GET", "/health")[0] == 200  # open without a key
    assert call(app, "POST", "/embed", b'{"texts": ["a"]}')[0] == 401
    status, body = call(app, "POST", "/embed", b'{"texts": ["a"]}', {"authorization": "Bearer k"})
    assert status == 200 and len(orjson.loads(body)["embeddings"][0]) == 256
    exposition = metrics.exposition()[0].decode()
    assert 'swiftembed_requests_total{model="potion-base-8M",route="/embed",status="200"} 1.0' in exposition
    assert 'route="other"' not in exposition
