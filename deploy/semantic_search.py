"""Example composed application: semantic search over a small corpus through the SwiftEmbed deployment's handle.

    PYTHONPATH=deploy serve run deploy/serve-search.yaml   # then: curl "127.0.0.1:8000/search?q=reset password"

The search deployment embeds its corpus once at start-up with `await embedder.embed.remote(corpus)`, then
answers each query with one more handle call and a dot product. The embedder batches those calls with its
HTTP traffic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

from swiftembed.ray.deployment import SwiftEmbedDeployment

DEFAULT_CORPUS = [
    "To reset your password, open Settings, choose Security and click 'Forgot password'.",
    "Invoices are emailed on the first day of each month and can be downloaded from Billing.",
    "Our office is closed on public holidays; support stays available by email.",
    "You can export all your data as a ZIP archive from the Account page.",
    "Two-factor authentication adds a code from your phone to every sign-in.",
    "Refunds are issued to the original payment method within ten business days.",
    "The mobile app works offline and syncs when you are back online.",
    "Delete your account from Account, Danger zone; this cannot be undone.",
]


@serve.deployment(name="SemanticSearch", max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.1})
class SemanticSearch:
    async def __init__(self, embedder: DeploymentHandle, corpus: list[str] | None = None) -> None:
        self.embedder = embedder
        self.corpus = list(corpus or DEFAULT_CORPUS)
        self.vectors: np.ndarray = await embedder.embed.remote(self.corpus)

    async def search(self, query: str, k: int = 3) -> list[dict[str, Any]]:
        query_vector: np.ndarray = await self.embedder.embed.remote(query)
        scores = self.vectors @ query_vector
        best = np.argsort(-scores)[:k]
        return [{"text": self.corpus[i], "score": round(float(scores[i]), 4)} for i in best]

    async def __call__(self, request: Request) -> JSONResponse:
        query = request.query_params.get("q", "").strip()
        if not query:
            return JSONResponse({"error": {"message": "give a query as ?q=...", "type": "invalid_request_error"}},
                                status_code=422)
        try:
            k = max(1, min(int(request.query_params.get("k", "3")), len(self.corpus)))
        except ValueError:
            return JSONResponse({"error": {"message": "k must be an integer", "type": "invalid_request_error"}},
                                status_code=422)
        return JSONResponse({"query": query, "results": await self.search(query, k)})


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """args: `model` for the embedder, `corpus` (list of texts), `embedder_cpus` (CPUs per embedder replica)."""
    args = dict(args or {})
    embedder = SwiftEmbedDeployment.options(  # type: ignore[attr-defined]
        ray_actor_options={"num_cpus": float(args.get("embedder_cpus", 1))}
    ).bind(models=[args["model"]] if args.get("model") else None)
    return SemanticSearch.bind(embedder, args.get("corpus"))  # type: ignore[attr-defined]
