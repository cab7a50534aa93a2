"""The standalone server's app plus a fair no-op route, for benchmarks only.

POST /noop reads the request body like a real route and answers with a prepared body of the same size and
type as /embed would give for the benchmark's request, without embedding anything.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from swiftembed import Embedder
from swiftembed.standalone import standalone_app
from swiftembed.wire import json_bytes

embedder = Embedder.load()
NOOP_TEXTS = int(os.environ.get("NOOP_TEXTS", "1"))
_json = json_bytes({"embeddings": embedder.encode(["a benchmark sentence"] * NOOP_TEXTS), "model": embedder.model_id,
                    "dimensions": embedder.dim, "tokens": 3 * NOOP_TEXTS})
_raw = embedder.encode(["a benchmark sentence"] * NOOP_TEXTS).tobytes()


async def noop(request: Request) -> Response:
    await request.body()
    if "application/octet-stream" in request.headers.get("accept", ""):
        return Response(_raw, media_type="application/octet-stream")
    return Response(_json, media_type="application/json")


app = Starlette(routes=[Route("/noop", noop, methods=["POST"]), Mount("/", app=standalone_app(embedder))])
