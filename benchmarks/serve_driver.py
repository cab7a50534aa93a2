"""Benchmark driver: a local Ray with SwiftEmbed at /, a same-options no-op deployment at /noop, and a caller.

    python benchmarks/serve_driver.py PORT INGRESS [REPLICAS [NOOP_PORT]]
        # INGRESS: replica, haproxy or proxy; REPLICAS of ours (default 1); prints "READY <no-op URL>" and serves
        # until SIGTERM

Under the replica ingress each deployment's replicas answer on a port of their own (ours on PORT, the no-op on
NOOP_PORT, which that ingress needs), as `swiftembed serve` runs them; under the others both are behind Ray's
ingress on PORT.

The no-op deployment is SwiftEmbed's own replica class and options with one more route at its front door (as
benchmarks/noop_app.py does for the standalone server): Ray's ingress, the ASGI app, auth, the concurrency bound,
timing headers and metrics are the same, and the route reads the request body and answers with a prepared body of
the size the real route gives for the request shape named in X-Shape (benchmarks/shapes.py). What separates it
from /embed is parsing, embedding and encoding: our work. (A plain `__call__(request)` deployment would be a
heavier baseline: Ray builds a Starlette Request for it; measured 3,250 against 4,195 req/s for a raw ASGI app at
64 connections.) Its `embed` method is the no-op handle method: it returns a prepared array of the real answer's
shape.

POST /caller {"target": "ours" | "noop", "texts": N, "concurrency": C, "seconds": S} runs, inside another
deployment as a user's own would, C concurrent loops of `await handle.embed.remote(texts)` for S seconds and
answers {"rps", "p50_ms", "p99_ms"}.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import time

from swiftembed.ray.ingress import serve_environment

port, ingress = int(sys.argv[1]), sys.argv[2]
replicas = int(sys.argv[3]) if len(sys.argv) > 3 else 1
for key, value in serve_environment(ingress, port).items():  # before Ray is imported: it reads them at import
    os.environ.setdefault(key, value)

import numpy as np  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.types import Receive, Scope  # noqa: E402

from benchmarks.shapes import SENTENCE, noop_answers  # noqa: E402
from swiftembed import Embedder  # noqa: E402
from swiftembed.http.frontdoor import Answer, Route  # noqa: E402
from swiftembed.ray.deployment import APP_NAME, DEPLOYMENT_NAME, NAMESPACE, SwiftEmbedDeployment  # noqa: E402

OPTIONS = {"num_replicas": 1, "max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 0.5}}


class NoOpReplica(SwiftEmbedDeployment.func_or_class):  # type: ignore[misc,name-defined]
    """SwiftEmbed's replica, its HTTP answer replaced by a prepared one at the same front door."""

    async def __init__(self, answers: dict[str, tuple[bytes, str]], dim: int, **options: object) -> None:
        await super().__init__(**options)
        self.answers, self.dim = answers, dim
        # Behind Ray's ingress the app is mounted at /noop; its own server (replica ingress) serves it at the root.
        self.api.front.routes["/"] = {"POST": Route("/", "POST", self.noop)}
        self.api.front.routes["/noop"] = {"POST": Route("/noop", "POST", self.noop)}

    async def noop(self, scope: Scope, receive: Receive) -> Answer:
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        shape = next((v for k, v in scope["headers"] if k == b"x-shape"), b"single").decode()
        body, media_type = self.answers[shape]
        return Answer(body, media_type)

    async def embed(self, texts: list[str], **options: object) -> np.ndarray:
        return np.zeros((len(texts), self.dim), np.float32)


NoOp = SwiftEmbedDeployment.options(name="NoOp", func_or_class=NoOpReplica)


@serve.deployment(name="Caller", ray_actor_options={"num_cpus": 0})
class Caller:
    def __init__(self) -> None:
        self.handles = {"ours": serve.get_deployment_handle(DEPLOYMENT_NAME, APP_NAME),
                        "noop": serve.get_deployment_handle("NoOp", "noop")}

    async def __call__(self, request: Request) -> JSONResponse:
        spec = await request.json()
        handle = self.handles[spec["target"]]
        texts = [SENTENCE.format(i) for i in range(spec["texts"])]
        latencies: list[float] = []
        end = time.perf_counter() + spec["seconds"]

        async def loop() -> None:
            while time.perf_counter() < end:
                start = time.perf_counter()
                await handle.embed.remote(texts)
                latencies.append(time.perf_counter() - start)

        began = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(spec["concurrency"])))
        elapsed = time.perf_counter() - began
        cuts = statistics.quantiles(latencies, n=100)
        return JSONResponse({"rps": len(latencies) / elapsed, "p50_ms": statistics.median(latencies) * 1e3,
                             "p99_ms": cuts[98] * 1e3})


embedder = Embedder.load()
ray.init(num_cpus=2, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
ours: dict[str, object] = {}
noop: dict[str, object] = {}
noop_url = f"http://127.0.0.1:{port}/noop"
if ingress == "replica":
    serve.start(proxy_location="Disabled")
    noop_port = int(sys.argv[4])
    ours = {"http_port": port, "http_host": "127.0.0.1"}
    noop = {"http_port": noop_port, "http_host": "127.0.0.1"}
    noop_url = f"http://127.0.0.1:{noop_port}/noop"
else:
    serve.start(http_options={"host": "127.0.0.1", "port": port})
serve.run(SwiftEmbedDeployment.options(**{**OPTIONS, "num_replicas": replicas}).bind(**ours), name=APP_NAME,
          route_prefix="/")
serve.run(NoOp.options(**OPTIONS).bind(noop_answers(embedder), embedder.dim, **noop), name="noop",
          route_prefix="/noop")
if ingress != "replica":  # the handle benchmark's caller is reached through Ray's ingress
    serve.run(Caller.bind(), name="caller", route_prefix="/caller")
print("READY", noop_url, flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
try:
    while True:
        time.sleep(1)
finally:
    serve.shutdown()
    ray.shutdown()
