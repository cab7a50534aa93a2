"""The standalone server's app plus a fair no-op route (POST /noop, shape chosen by the X-Shape header).

One path switch in front: /noop goes to a one-route Starlette app (a route written the ordinary way: Starlette's
middleware stack, router, Request and Response), everything else to SwiftEmbed's standalone app exactly as
`swiftembed serve --standalone` serves it. Each side pays for one Starlette app; neither is mounted in the other.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from benchmarks.shapes import noop_answers
from swiftembed import Embedder
from swiftembed.standalone import standalone_app

embedder = Embedder.load()
ANSWERS = noop_answers(embedder)


async def noop(request: Request) -> Response:
    await request.body()
    body, media_type = ANSWERS[request.headers.get("x-shape", "single")]
    return Response(body, media_type=media_type)


noop_app = Starlette(routes=[Route("/noop", noop, methods=["POST"])])
swiftembed_app = standalone_app(embedder)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    await (noop_app if scope.get("path") == "/noop" else swiftembed_app)(scope, receive, send)
