"""The Ray Serve layer: the HTTP app as a Serve ingress over every served model, batched pooling, shared tables.

- Every replica serves every configured model (by default the bundled ones); each model's token table is one
  copy per node in Ray's object store, read zero-copy by all replicas (swiftembed/ray/tables.py).
- Concurrent requests' texts are batched into one tokenize + pool call per model by the same Batcher the
  standalone server uses (swiftembed/service/batcher.py); each request then finishes (dimensions, normalization,
  encoding) its own rows.
- The same deployment answers `DeploymentHandle` calls: `await handle.embed.remote(texts, model=...)`.
- Under the HAProxy ingress (swiftembed/ray/ingress.py) requests reach each replica's own HTTP server directly;
  replicas report their load for Serve's autoscaler themselves (`in_flight_policy`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import deque
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.serve.config import AutoscalingContext
from ray.serve.metrics import Counter, Histogram

from swiftembed.core.catalog import Catalog, Served
from swiftembed.core.chunking import Chunk
from swiftembed.core.pooling import Precision, SimilarityMode
from swiftembed.core.sparse import SparseVector
from swiftembed.grpc.server import GrpcServer
from swiftembed.http.routes import EmbeddingApi
from swiftembed.ray.ingress import ReplicaServer, choose_ingress, serve_environment
from swiftembed.ray.tables import NAMESPACE, SharedTables
from swiftembed.service import inputs
from swiftembed.service.batcher import Batcher
from swiftembed.service.inputs import ApiError, Options
from swiftembed.service.metrics import (
    BATCH_REQUESTS,
    BATCH_SIZE,
    HANDLE_ROUTE,
    KERNEL_TIME,
    LATENCY,
    NO_MODEL,
    REQUESTS,
    TEXTS,
    TOKENS,
    Metric,
)
from swiftembed.service.service import EmbeddingService, LoadMeter
from swiftembed.service.settings import Settings

log = logging.getLogger("ray.serve")

APP_NAME = "swiftembed"
DEPLOYMENT_NAME = "SwiftEmbed"


class RayMetrics:
    """The standalone server's metric names, through Ray's metrics (exported as `ray_<name>`).

    A Ray metric record costs microseconds of Python per call (tag checks and merges), several per request: so
    requests only append their figures to a queue, and the replica's event loop records them every TICK_S
    (counters summed per label set, histograms value by value), a fraction of a millisecond at a time. Not a
    background thread: each Ray record releases and retakes the GIL, and a thread recording thousands a second
    must win the GIL back from the busy loop each time; recorded on the loop, one text at 64 connections ran
    ~20% faster under the replica ingress (13,460 vs 11,190 req/s, four runs each, docs/operations.md).
    """

    TICK_S = 0.02

    def __init__(self) -> None:
        self.latency, self.requests, self.texts, self.tokens, self.batch_size, self.batch_requests, self.kernel = (
            ray_metric(metric) for metric in (LATENCY, REQUESTS, TEXTS, TOKENS, BATCH_SIZE, BATCH_REQUESTS, KERNEL_TIME)
        )
        self._requests: deque[tuple[str, int, float, int, int, str]] = deque()
        self._batches: deque[tuple[str, int, int, float]] = deque()
        loop = asyncio.get_running_loop()  # Serve builds replicas on their event loop
        loop.call_later(self.TICK_S, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self.flush()
        except Exception:  # a metric must never take the replica down
            log.exception("recording metrics failed")
        loop.call_later(self.TICK_S, self._tick, loop)

    def request(self, route: str, status: int, latency_ms: float, texts: int, tokens: int, model: str) -> None:
        self._requests.append((route, status, latency_ms, texts, tokens, model))

    def batch(self, model: str, texts: int, requests: int, kernel_ms: float) -> None:
        self._batches.append((model, texts, requests, kernel_ms))

    def exposition(self) -> tuple[bytes, str] | None:
        return None  # Ray exports these on each node's metrics port

    def flush(self) -> None:
        """Record what the queues hold (deque pops are atomic, so requests may go on appending meanwhile)."""
        counts: dict[tuple[str, str, str], list[int]] = {}
        while self._requests:
            route, status, latency_ms, texts, tokens, model = self._requests.popleft()
            tags = {"route": route, "status": str(status), "model": model}
            self.latency.observe(latency_ms, tags=tags)
            sums = counts.setdefault((route, tags["status"], model), [0, 0, 0])
            sums[0] += 1
            sums[1] += texts
            sums[2] += tokens
        for (route, status, model), (requests, texts, tokens) in counts.items():
            self.requests.inc(requests, tags={"route": route, "status": status, "model": model})
            if texts:
                self.texts.inc(texts, tags={"route": route, "model": model})
            if tokens:
                self.tokens.inc(tokens, tags={"route": route, "model": model})
        while self._batches:
            model, texts, requests, kernel_ms = self._batches.popleft()
            tags = {"model": model}
            self.batch_size.observe(texts, tags=tags)
            self.batch_requests.observe(requests, tags=tags)
            self.kernel.observe(kernel_ms, tags=tags)


def ray_metric(metric: Metric) -> Counter | Histogram:
    """A metric of swiftembed/service/metrics.py's table as Ray's (exported as `ray_<name>`)."""
    if metric.kind == "counter":
        return Counter(metric.name, description=metric.help, tag_keys=metric.labels)
    return Histogram(metric.name, description=metric.help, boundaries=list(metric.buckets), tag_keys=metric.labels)


IN_FLIGHT, BUSY = "in_flight", "busy"
BUSY_TARGET = 0.75  # share of the time a replica has work: busier than this on average asks for company


def in_flight_policy(ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
    """Serve autoscaling policy on the load the replicas report (`record_autoscaling_stats`): enough replicas for
    the requests in flight and queued at handles at `target_ongoing_requests` each, and for the replicas' busy
    time at BUSY_TARGET each, whichever asks more. Serve applies the config's delays, factors and bounds around
    it, as for its default policy. Selected by `autoscaling_config: {policy: {policy_function:
    swiftembed.ray.deployment:in_flight_policy}}` (deploy/serve-cluster.yaml).

    Why busy time: a replica works through a request without yielding, so under the HAProxy ingress the requests
    waiting for it wait in HAProxy and the kernel, and the replica (like Serve's own count) sees about one at a
    time however long the queue; the share of time it has work shows the saturation, even when other processes
    take part of its CPU."""
    if not ctx.running_replicas:
        return ctx.target_num_replicas, {}
    metrics = ctx.aggregated_metrics
    in_flight = sum(metrics.get(IN_FLIGHT, {}).values()) + (ctx.total_queued_requests or 0.0)
    busy = sum(metrics.get(BUSY, {}).values())
    return max(in_flight / ctx.config.get_target_ongoing_requests(), busy / BUSY_TARGET), {}


@serve.deployment(
    name=DEPLOYMENT_NAME,
    max_ongoing_requests=64,
    max_queued_requests=256,
    backpressure_config={"retry_after_s": 1},  # a full queue answers 503 with Retry-After
    # A new config that restarts replicas (new models, code or args) starts each replacement before stopping the
    # replica it replaces (Serve's default stops first: with one replica, nothing would serve in between).
    max_surge_percent=25,
    # Serve notices a dead replica at its next health check: every second rather than Serve's 10, so a killed
    # replica is replaced within seconds (docs/reliability.md). A check is one small actor call.
    health_check_period_s=1,
    health_check_timeout_s=10,
    # Serve's access log writes a line per request from the replica: a tenth of a one-text request's cost. Below
    # WARNING, Ray still builds that line's log record for every request even with the access log off (measured:
    # 9% more one-text requests/s at 64 connections at WARNING). For per-request lines and Ray's INFO logs, set
    # `logging_config: {log_level: INFO, enable_access_log: true}` on the deployment in the Serve config.
    logging_config={"enable_access_log": False, "log_level": "WARNING"},
)
@serve.ingress()
class SwiftEmbedDeployment:
    """One replica: the HTTP app for its ingress, batched pooling behind it, and a handle API."""

    def __init__(
        self,
        models: list[str] | None = None,
        default_model: str | None = None,
        max_tokens: int | None = -1,
        settings: dict[str, Any] | None = None,
        share_table: bool = True,
        http_port: int | None = None,
        http_host: str = "0.0.0.0",
        http_drain_s: float = 0.0,
    ) -> None:
        """`models`: model specs (see `Catalog.load`; default the bundled models), the first the default unless
        `default_model` names another. `share_table=False` keeps private tables (for comparison, or without an
        object store). `http_port`: the replica answers HTTP itself on http_host:http_port, a port shared with the
        node's other replicas (the `replica` ingress, swiftembed/ray/ingress.py), with `/-/healthz` for KubeRay's
        probes; `http_drain_s`: how long the last replica on a node keeps answering, `/-/healthz` failing, when it
        stops."""
        self.tables = SharedTables() if share_table else None
        self.catalog = Catalog.load(models, default=default_model, max_tokens=max_tokens, table=self.tables)
        self.settings = Settings.from_env(**(settings or {}))
        self.metrics = RayMetrics()
        self.batcher = Batcher.from_settings(self.settings, self.metrics.batch)
        self.service = EmbeddingService(self.catalog, self.batcher, self.settings)
        self.api = EmbeddingApi(self.service, self.metrics)
        self._busy_mark = (time.perf_counter(), 0.0)
        self.batch_config = self.settings.batch()
        self.http = None
        grpc_port = self.settings.grpc_port
        grpc = None if grpc_port is None else GrpcServer(self.service, self.metrics, http_host, grpc_port, shared=True)
        if http_port is not None:
            routes = {"/": serve.get_replica_context().app_name}
            self.http = ReplicaServer(self.api.app, http_host, http_port, drain_s=http_drain_s, routes=routes,
                                      grpc=grpc)
        elif grpc is not None:
            raise ValueError("grpc_port needs the replica ingress (http_port): the gRPC server runs beside the "
                             "replica's own HTTP server")
        log.info("SwiftEmbed replica ready: %s", ", ".join(
            f"{m.model_id} ({self.table_source(m.embedder.checksum)} table)" for m in self.catalog))

    def table_source(self, checksum: str) -> str:
        return "private" if self.tables is None else self.tables.sources.get(checksum, "private")

    def __serve_build_asgi_app__(self) -> Any:
        return self.api.app

    def check_health(self) -> None:
        """Serve's periodic check: a replica whose own HTTP server stopped is replaced."""
        if self.http is not None:
            self.http.check()

    async def __del__(self) -> None:
        """Serve's graceful stop: the replica's own server finishes what it has in flight first."""
        if getattr(self, "http", None) is not None:
            await self.http.stop()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """This replica's load, sampled by Serve for `in_flight_policy`: requests in it now (HTTP at the front door
        plus handle calls) and the share of the time since the last sample it had work."""
        now, busy = time.perf_counter(), self.service.load.busy_seconds()
        share = (busy - self._busy_mark[1]) / max(now - self._busy_mark[0], 1e-3)
        self._busy_mark = (now, busy)
        return {IN_FLIGHT: float(self.service.load.in_flight), BUSY: share}

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Batch size and wait from the deployment's `user_config`, applied live (what it leaves out: the
        replica's settings, from its args and SWIFTEMBED_* environment)."""
        size = int(config.get("max_batch_size", self.settings.max_batch_size))
        wait = float(config.get("batch_wait_timeout_s", self.settings.batch_wait_timeout_s))
        self.batcher.configure(size, wait)
        self.batch_config = {"max_batch_size": size, "batch_wait_timeout_s": wait}

    # The DeploymentHandle API: an adapter over the same service as the HTTP routes, with the same checks -------
    async def embed(
        self,
        texts: str | list[str],
        *,
        model: str | None = None,
        normalize: bool | None = None,
        dimensions: int | None = None,
        precision: Precision = "float32",
    ) -> np.ndarray:
        """Vectors for `texts` (one string gives a 1-D vector) from `model` (a served model's short name or full id;
        default the service's default), batched with concurrent HTTP and handle calls. Bad input raises the
        `ApiError` HTTP answers it with (`.status`, `.code`: 404 unknown model, 413 too many texts, 422 invalid)."""
        with self.call("embed") as call:
            served = call.model = self.service.model(model)
            batch = inputs.texts(texts, "texts", self.settings)
            options = self.options(served, normalize, dimensions, precision)
            vectors, call.tokens = await self.service.embed(batch, served, options)
            call.texts = len(batch)
        return vectors[0] if isinstance(texts, str) else vectors

    async def chunk(
        self,
        texts: str | list[str],
        chunk_tokens: int,
        overlap_tokens: int = 0,
        *,
        model: str | None = None,
        normalize: bool | None = None,
        dimensions: int | None = None,
        precision: Precision = "float32",
    ) -> list[list[Chunk]] | list[Chunk]:
        """Each document's chunks, `Chunk(start, end, embedding)`, as `Embedder.chunk` gives them (one string: its
        list), from one pass over each document."""
        with self.call("chunk") as call:
            served = call.model = self.service.model(model)
            documents = inputs.documents(texts, "texts", self.settings, allow_single=True)
            size, overlap = inputs.chunk_sizes(chunk_tokens, overlap_tokens, served.embedder.max_tokens)
            options = self.options(served, normalize, dimensions, precision)
            spans, vectors, call.tokens = await self.service.chunk(documents, size, overlap, served, options)
            call.texts = len(vectors)
        rows = iter(vectors)
        chunks = [[Chunk(start, end, next(rows)) for start, end in document] for document in spans]
        return chunks[0] if isinstance(texts, str) else chunks

    async def sparse(self, texts: str | list[str], *, model: str | None = None) -> list[SparseVector] | SparseVector:
        """Sparse lexical vectors, `SparseVector(indices, values)`, as `Embedder.sparse` gives them (one string: its
        vector): what /embed_sparse answers, for hybrid search beside `embed`."""
        with self.call("sparse") as call:
            served = call.model = self.service.model(model)
            batch = inputs.texts(texts, "texts", self.settings)
            vectors, call.tokens = await self.service.sparse(batch, served)
            call.texts = len(batch)
        return vectors[0] if isinstance(texts, str) else vectors

    async def embed_all(self, texts: str | list[str], *, model: str | None = None) -> list[np.ndarray] | np.ndarray:
        """Each text's token vectors (tokens x dim, not normalized), as `Embedder.token_vectors` gives them and
        /embed_all answers (one string: its array); 413 beyond `max_token_vectors` tokens."""
        with self.call("embed_all") as call:
            served = call.model = self.service.model(model)
            batch = inputs.texts(texts, "texts", self.settings)
            vectors, call.tokens = self.service.embed_all(batch, served)
            call.texts = len(batch)
        return vectors[0] if isinstance(texts, str) else vectors

    async def similarity(self, a: str | list[str], b: str | list[str], *, model: str | None = None,
                         mode: SimilarityMode = "mean") -> np.ndarray:
        """Cosine similarity matrix between the texts of `a` and of `b`, as /similarity scores them (`mode`
        "maxsim": late interaction over their token vectors)."""
        with self.call("similarity") as call:
            served = call.model = self.service.model(model)
            mode = inputs.similarity_mode(mode)
            left, right = inputs.texts(a, "a", self.settings), inputs.texts(b, "b", self.settings)
            if len(left) + len(right) > self.settings.max_texts:
                raise ApiError(413, f"{len(left) + len(right)} texts; the limit is {self.settings.max_texts}",
                               param="b", code="too_many_texts")
            scores, call.tokens = await self.service.similarity(left, right, served, pairwise=False, mode=mode)
            call.texts = len(left) + len(right)
        return scores

    async def info(self, model: str | None = None) -> dict[str, Any]:
        """The facts of `model` (default: the default model), every served model's, and this replica's."""
        served = self.service.model(model)
        facts = self.service.info(served)
        return {
            **facts,
            "table_source": self.table_source(served.embedder.checksum),
            "models": [{**m, "table_source": self.table_source(m["checksum"])} for m in facts["models"]],
            "pid": os.getpid(), "batch": self.batch_config, "largest_batch_requests": self.batcher.largest_batch,
        }

    def options(self, served: Served, normalize: object, dimensions: object, precision: object) -> Options:
        return Options(inputs.flag(normalize, "normalize"), inputs.dimensions(dimensions, served.embedder.dim),
                       inputs.precision(precision))

    def call(self, method: str) -> HandleCall:
        return HandleCall(self.service.load, self.metrics, method)


class HandleCall:
    """One handle call as load (for the autoscaler and the concurrency bound) and in the metrics HTTP requests go
    to, under the route `handle:<method>` and the status HTTP answers the same outcome with: a caller on handles
    sees its traffic and latency on the same dashboard."""

    __slots__ = ("load", "metrics", "route", "model", "texts", "tokens", "start")

    def __init__(self, load: LoadMeter, metrics: RayMetrics, method: str) -> None:
        self.load, self.metrics, self.route = load, metrics, HANDLE_ROUTE + method
        self.model: Served | None = None
        self.texts = self.tokens = 0

    def __enter__(self) -> HandleCall:
        self.start = time.perf_counter()
        self.load.enter()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        self.load.exit()
        status = 200 if kind is None else error.status if isinstance(error, ApiError) else 500
        model = self.model.name if self.model is not None else NO_MODEL
        self.metrics.request(self.route, status, (time.perf_counter() - self.start) * 1e3, self.texts, self.tokens,
                             model)


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """Application builder for `serve run` / `serve deploy` / RayService:
    `import_path: swiftembed.ray.deployment:build_app`.

    args: `models` (a list of model specs, directories, bundled names or Hub ids, `NAME=SOURCE` to rename; default
    the bundled models) or `model` (one), `default_model` (default the first), `max_tokens`, `http_port` and
    `http_host` (each replica answers HTTP there itself: the `replica` ingress; with `proxy_location: Disabled`),
    `http_drain_s` (in a cluster: see `ReplicaServer`), and any Settings field (e.g. `max_texts`, `api_key`, and
    `grpc_port`: each replica also answers TEI's gRPC API there, on `http_host`) to override the SWIFTEMBED_*
    environment.
    """
    args = dict(args or {})
    models = model_specs(args.pop("models", None), args.pop("model", None))
    default_model = args.pop("default_model", None)
    max_tokens = args.pop("max_tokens", -1)
    http = {key: args.pop(key) for key in ("http_port", "http_host", "http_drain_s") if key in args}
    return SwiftEmbedDeployment.bind(  # type: ignore[attr-defined]
        models=models, default_model=default_model, max_tokens=max_tokens, settings=args, **http
    )


def model_specs(models: list[str] | str | None, model: str | None = None) -> list[str] | None:
    """The `models` list of a Serve config (a list, or one comma-separated string), or its single `model`."""
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    if model is not None:
        if models:
            raise ValueError("give 'models' or 'model', not both")
        models = [model]
    return models or None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_local(
    *,
    models: list[str] | None = None,
    default_model: str | None = None,
    max_tokens: int | None = -1,
    settings: Settings | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    ingress: str = "replica",
    num_replicas: int = 1,
    metrics_port: int = 8080,
) -> None:
    """Start a local Ray and Serve SwiftEmbed on host:port until interrupted (Ctrl-C or SIGTERM)."""
    ingress = choose_ingress(ingress)
    if settings is not None and settings.grpc_port is not None and ingress != "replica":
        raise ValueError(f"--grpc-port needs the replica ingress (each replica serves gRPC beside its own HTTP "
                         f"server), not the {ingress} ingress")
    if ingress != "haproxy":  # also when HAProxy was asked for in the environment but is not what runs
        os.environ.pop("RAY_SERVE_ENABLE_HA_PROXY", None)
    if ingress == "proxy":
        os.environ.pop("RAY_SERVE_THROUGHPUT_OPTIMIZED", None)
    for key, value in serve_environment(ingress, port).items():
        os.environ.setdefault(key, value)
    overrides = {} if settings is None else {k: v for k, v in vars(settings).items() if v != getattr(Settings(), k)}
    cpus = min(1.0, (os.cpu_count() or 1) / max(num_replicas, 1))  # several replicas must fit a small machine
    app = SwiftEmbedDeployment.options(  # type: ignore[attr-defined]
        num_replicas=num_replicas, ray_actor_options={"num_cpus": cpus}
    ).bind(models=models, default_model=default_model, max_tokens=max_tokens, settings=overrides,
           **({"http_port": port, "http_host": host} if ingress == "replica" else {}))
    ray.init(namespace=NAMESPACE, include_dashboard=False, _metrics_export_port=metrics_port)
    # SIGTERM (kill, systemd, a container stop) takes the same path out as Ctrl-C, also while starting: Serve,
    # HAProxy and Ray stop. Set after ray.init, which installs a handler of its own that exits without stopping Serve.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if ingress == "replica":  # the replicas answer on host:port themselves; Ray's HTTP proxy is not needed
            serve.start(proxy_location="Disabled")
        else:
            serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=APP_NAME, route_prefix="/")
        print(f"SwiftEmbed on Ray Serve ({ingress} ingress): http://{host}:{port} (metrics on :{metrics_port}); "
              "Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the shutdown short
        serve.shutdown()
        ray.shutdown()
