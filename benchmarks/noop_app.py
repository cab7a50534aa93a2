"""The standalone server's app plus a fair no-op route (POST /noop, shape chosen by the X-Shape header)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from benchmarks.shapes import noop_answers
from swiftembed import Embedder
from swiftembed.standalone import standalone_app

embedder = Embedder.load()
ANSWERS = noop_answers(embedder)


async def noop(request: Request) -> Response:
    await request.body()
    body, media_type = ANSWERS[request.headers.get("x-shape", "single")]
    return Response(body, media_type=media_type)


app = Starlette(routes=[Route("/noop", noop, methods=["POST"]), Mount("/", app=standalone_app(embedder))])
