"""Benchmark driver: a local Ray with SwiftEmbed at / and a same-config no-op deployment at /noop.

    python benchmarks/serve_driver.py PORT PROFILE     # prints READY, then serves until terminated

The no-op deployment reads the request body and answers with a prepared body of the size the real route gives
for the request shape named in X-Shape (benchmarks/shapes.py), with the same Serve options.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from swiftembed.serve import APP_NAME, NAMESPACE, SwiftEmbedDeployment, serve_environment

port, profile = int(sys.argv[1]), sys.argv[2]
os.environ.update(serve_environment(profile))
if profile == "throughput":  # keep HAProxy's files and listeners away from any other Ray on this host
    os.environ.setdefault("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", f"/tmp/swiftembed-haproxy-{port}/haproxy.cfg")
    os.environ.setdefault("RAY_SERVE_HAPROXY_SOCKET_PATH", f"/tmp/swiftembed-haproxy-{port}/admin.sock")
    os.environ.setdefault("RAY_SERVE_HAPROXY_SERVER_STATE_BASE", f"/tmp/swiftembed-haproxy-{port}")
    os.environ.setdefault("RAY_SERVE_HAPROXY_SERVER_STATE_FILE", f"/tmp/swiftembed-haproxy-{port}/server-state")
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")

import ray  # noqa: E402
from ray import serve  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402

from benchmarks.shapes import noop_answers  # noqa: E402
from swiftembed import Embedder  # noqa: E402

OPTIONS = {"num_replicas": 1, "max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 0.5}}


@serve.deployment(name="NoOp")
class NoOp:
    def __init__(self, answers: dict[str, tuple[bytes, str]]) -> None:
        self.answers = answers

    async def __call__(self, request: Request) -> Response:
        await request.body()
        body, media_type = self.answers[request.headers.get("x-shape", "single")]
        return Response(body, media_type=media_type)


answers = noop_answers(Embedder.load())
ray.init(num_cpus=2, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
serve.start(http_options={"host": "127.0.0.1", "port": port})
serve.run(SwiftEmbedDeployment.options(**OPTIONS).bind(), name=APP_NAME, route_prefix="/")
serve.run(NoOp.options(**OPTIONS).bind(answers), name="noop", route_prefix="/noop")
print("READY", flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
try:
    while True:
        time.sleep(1)
finally:
    serve.shutdown()
    ray.shutdown()
