"""The standalone server's app with a no-op route at the same front door (POST /noop, shape chosen by X-Shape).

The app is built as `swiftembed serve --standalone` builds it (Batcher, PrometheusMetrics), and /noop is
one more of the front door's routes beside /embed and /v1/embeddings: it pays for the same auth and
concurrency checks, timing headers and metrics, reads the same body and answers a prepared body of the real
answer's size. What separates the two routes is parsing, embedding and encoding: our work, not the transport.
"""

from __future__ import annotations

from starlette.types import Receive, Scope

from benchmarks.shapes import noop_answers
from swiftembed import Embedder
from swiftembed.core.catalog import Catalog
from swiftembed.http.frontdoor import Answer, Route
from swiftembed.http.routes import build_api
from swiftembed.service.metrics import PrometheusMetrics

embedder = Embedder.load()
ANSWERS = noop_answers(embedder)
api = build_api(Catalog.load(), metrics=PrometheusMetrics())  # the bundled models, as `swiftembed serve` serves them


async def noop(scope: Scope, receive: Receive) -> Answer:
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    shape = next((v for k, v in scope["headers"] if k == b"x-shape"), b"single").decode()
    body, media_type = ANSWERS[shape]
    return Answer(body, media_type)


# Dispatched like the table's routes (not in the OpenAPI document); it reads the body itself, unparsed.
api.front.routes["/noop"] = {"POST": Route("/noop", "POST", noop)}
app = api.app
