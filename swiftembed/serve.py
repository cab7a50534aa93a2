"""The Ray Serve layer: the HTTP app as a Serve ingress, request batching into one kernel call, a shared table.

- The token table is `ray.put` once by a detached owner actor per model checksum, so it outlives whatever
  built the application (under `serve deploy` and KubeRay the builder runs in a short-lived task, and an object
  it puts dies with it). Replicas read it zero-copy from their node's object store; if the owner is gone they
  start a new one, and if that fails they fall back to their own copy from disk.
- Concurrent requests' texts are batched into one tokenize + pool call by the same Batcher the standalone server
  uses (swiftembed/batching.py); each request then finishes (dimensions, normalization, encoding) its own rows.
- The same deployment answers `DeploymentHandle` calls: `await handle.embed.remote(texts)`.
- Under the HAProxy ingress (swiftembed/ingress.py) requests reach each replica's own HTTP server directly;
  replicas report their load for Serve's autoscaler themselves (`in_flight_policy`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.serve.config import AutoscalingContext
from ray.serve.metrics import Counter, Histogram

from swiftembed.app import EmbeddingApi
from swiftembed.batching import Batcher, Pooled
from swiftembed.embedder import Embedder
from swiftembed.ingress import choose_ingress, serve_environment
from swiftembed.metrics import BATCH_BUCKETS, KERNEL_BUCKETS_MS, LATENCY_BUCKETS_MS
from swiftembed.model import StaticModel, load_model
from swiftembed.pooling import Precision
from swiftembed.settings import Settings

log = logging.getLogger("ray.serve")

NAMESPACE = "swiftembed"
APP_NAME = "swiftembed"
DEPLOYMENT_NAME = "SwiftEmbed"
DEFAULT_BATCH = {"max_batch_size": 64, "batch_wait_timeout_s": 0.0}


@ray.remote(num_cpus=0, max_restarts=0)
class TableOwner:
    """Owns the object-store copy of one model's float32 table; detached, named by the model's checksum."""

    def __init__(self, source: str | None) -> None:
        model = load_model(source)
        self.checksum = model.checksum
        self.ref = ray.put(np.ascontiguousarray(model.embeddings, dtype=np.float32))

    def table(self) -> tuple[str, list[ray.ObjectRef]]:
        return self.checksum, [self.ref]  # in a list, so Ray hands over the reference, not the array


def owner_name(checksum: str) -> str:
    return f"table-{checksum[:24]}"


def shared_table(model: StaticModel, source: str | None, timeout_s: float = 120.0) -> tuple[np.ndarray, str]:
    """The model's float32 table as a zero-copy, read-only view from the object store (or a private copy)."""
    name = owner_name(model.checksum)
    for attempt in (1, 2):
        owner = None
        try:
            owner = TableOwner.options(  # type: ignore[attr-defined]
                name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
            ).remote(source)
            checksum, (ref,) = ray.get(owner.table.remote(), timeout=timeout_s)
            if checksum != model.checksum:
                raise RuntimeError(f"owner {name} holds checksum {checksum}, expected {model.checksum}")
            table = ray.get(ref, timeout=timeout_s)
            return table, "object_store"
        except Exception as exc:  # owner died, its object was lost, or it could not load the model
            log.warning("shared table attempt %d for %s failed: %s", attempt, name, exc)
            if owner is not None:
                try:
                    ray.kill(owner)
                except Exception:
                    pass
    log.warning("serving %s from a private copy of its table", model.model_id)
    return np.ascontiguousarray(model.embeddings, dtype=np.float32), "private"


class RayMetrics:
    """The standalone server's metric names, through Ray's metrics (exported as `ray_<name>`).

    A Ray metric record costs microseconds of Python per call (tag checks and merges), several per request: so
    requests only append their figures to a queue, and a background thread records them once a second
    (counters summed per label set, histograms value by value). Figures reach Prometheus at most a second later.
    """

    FLUSH_S = 1.0

    def __init__(self) -> None:
        self.latency = Histogram(
            "swiftembed_request_latency_ms", description="Request latency in milliseconds",
            boundaries=list(LATENCY_BUCKETS_MS), tag_keys=("route", "status"),
        )
        self.requests = Counter("swiftembed_requests", description="Requests by route and status",
                                tag_keys=("route", "status"))
        self.texts = Counter("swiftembed_texts", description="Texts embedded", tag_keys=("route",))
        self.tokens = Counter("swiftembed_tokens", description="Tokens pooled", tag_keys=("route",))
        self.batch_size = Histogram("swiftembed_batch_size", description="Texts per kernel call",
                                    boundaries=list(BATCH_BUCKETS))
        self.batch_requests = Histogram("swiftembed_batch_requests", description="Requests per kernel call",
                                        boundaries=list(BATCH_BUCKETS))
        self.kernel = Histogram("swiftembed_kernel_time_ms", description="Tokenize + pool time per batch (ms)",
                                boundaries=list(KERNEL_BUCKETS_MS))
        self._requests: deque[tuple[str, int, float, int, int]] = deque()
        self._batches: deque[tuple[int, int, float]] = deque()
        threading.Thread(target=self._flush_forever, name="swiftembed-metrics", daemon=True).start()

    def request(self, route: str, status: int, latency_ms: float, texts: int, tokens: int) -> None:
        self._requests.append((route, status, latency_ms, texts, tokens))

    def batch(self, texts: int, requests: int, kernel_ms: float) -> None:
        self._batches.append((texts, requests, kernel_ms))

    def exposition(self) -> tuple[bytes, str] | None:
        return None  # Ray exports these on each node's metrics port

    def _flush_forever(self) -> None:
        while True:
            time.sleep(self.FLUSH_S)
            try:
                self.flush()
            except Exception:  # a metric must never take the replica down
                log.exception("recording metrics failed")

    def flush(self) -> None:
        """Record what the queues hold (deque pops are atomic, so requests may go on appending meanwhile)."""
        counts: dict[tuple[str, str], list[int]] = {}
        while self._requests:
            route, status, latency_ms, texts, tokens = self._requests.popleft()
            tags = {"route": route, "status": str(status)}
            self.latency.observe(latency_ms, tags=tags)
            sums = counts.setdefault((route, tags["status"]), [0, 0, 0])
            sums[0] += 1
            sums[1] += texts
            sums[2] += tokens
        for (route, status), (requests, texts, tokens) in counts.items():
            self.requests.inc(requests, tags={"route": route, "status": status})
            if texts:
                self.texts.inc(texts, tags={"route": route})
            if tokens:
                self.tokens.inc(tokens, tags={"route": route})
        while self._batches:
            texts, requests, kernel_ms = self._batches.popleft()
            self.batch_size.observe(texts)
            self.batch_requests.observe(requests)
            self.kernel.observe(kernel_ms)


IN_FLIGHT, BUSY = "in_flight", "busy"
BUSY_TARGET = 0.75  # share of the time a replica has work: busier than this on average asks for company


def in_flight_policy(ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
    """Serve autoscaling policy on the load the replicas report (`record_autoscaling_stats`): enough replicas for
    the requests in flight and queued at handles at `target_ongoing_requests` each, and for the replicas' busy
    time at BUSY_TARGET each, whichever asks more. Serve applies the config's delays, factors and bounds around
    it, as for its default policy. Selected by `autoscaling_config: {policy: {policy_function:
    swiftembed.serve:in_flight_policy}}` (deploy/serve-cluster.yaml).

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
    user_config=DEFAULT_BATCH,
    # Serve's access log writes a line per request from the replica: a tenth of a one-text request's cost.
    # Turn it on per deployment (`logging_config: {enable_access_log: true}` in the Serve config) when wanted.
    logging_config={"enable_access_log": False},
)
@serve.ingress()
class SwiftEmbedDeployment:
    """One replica: the HTTP app for its ingress, batched pooling behind it, and a handle API."""

    def __init__(
        self,
        model: str | None = None,
        max_tokens: int | None = -1,
        settings: dict[str, Any] | None = None,
        share_table: bool = True,
    ) -> None:
        """`share_table=False` keeps a private table per replica (for comparison, or without an object store)."""
        loaded = load_model(model)
        if share_table:
            table, self.table_source = shared_table(loaded, model)
        else:
            table, self.table_source = np.ascontiguousarray(loaded.embeddings, dtype=np.float32), "private"
        if loaded.embeddings.dtype == np.float32:
            loaded = loaded.with_embeddings(table)  # drop the private copy read from disk
        self.embedder = Embedder(loaded, max_tokens=max_tokens, table=table)
        self.settings = Settings.from_env(**(settings or {}))
        self.metrics = RayMetrics()
        self.batcher = Batcher(self.embedder, observe=self.metrics.batch)
        self.api = EmbeddingApi(self.embedder, self.batcher, self.settings, self.metrics)
        self._busy_mark = (time.perf_counter(), 0.0)
        self.batch_config = dict(DEFAULT_BATCH)
        log.info("SwiftEmbed replica ready: %s (%s table)", loaded.model_id, self.table_source)

    def __serve_build_asgi_app__(self) -> Any:
        return self.api.app

    def record_autoscaling_stats(self) -> dict[str, float]:
        """This replica's load, sampled by Serve for `in_flight_policy`: requests in it now (HTTP at the front door
        plus handle calls) and the share of the time since the last sample it had work."""
        now, busy = time.perf_counter(), self.api.load.busy_seconds()
        share = (busy - self._busy_mark[1]) / max(now - self._busy_mark[0], 1e-3)
        self._busy_mark = (now, busy)
        return {IN_FLIGHT: float(self.api.load.in_flight), BUSY: share}

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Batch size and wait, from `user_config`, applied live."""
        size = int(config.get("max_batch_size", DEFAULT_BATCH["max_batch_size"]))
        wait = float(config.get("batch_wait_timeout_s", DEFAULT_BATCH["batch_wait_timeout_s"]))
        self.batcher.configure(size, wait)
        self.batch_config = {"max_batch_size": size, "batch_wait_timeout_s": wait}

    # The DeploymentHandle API ------------------------------------------------------------------------------
    async def embed(
        self,
        texts: str | list[str],
        *,
        normalize: bool | None = None,
        dimensions: int | None = None,
        precision: Precision = "float32",
    ) -> np.ndarray:
        """Vectors for `texts` (one string gives a 1-D vector), batched with concurrent HTTP and handle calls."""
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        if not all(isinstance(t, str) for t in batch):
            raise TypeError("texts must be a string or a list of strings")
        self.embedder.check_options(dimensions, precision)
        self.api.load.enter()  # handle calls are load too
        try:
            pooled = await self.batcher.pool(batch) if batch else Pooled(np.zeros((0, self.embedder.dim), np.float32),
                                                                          [])
        finally:
            self.api.load.exit()
        vectors = self.embedder.finish(
            pooled.sums, tokens=pooled.tokens, normalize=normalize, dimensions=dimensions, precision=precision
        )
        return vectors[0] if single else vectors

    async def similarity(self, a: str | list[str], b: str | list[str]) -> np.ndarray:
        """Cosine similarity matrix between the texts of `a` and of `b`."""
        left = await self.embed([a] if isinstance(a, str) else a, normalize=True)
        right = await self.embed([b] if isinstance(b, str) else b, normalize=True)
        return left @ right.T

    async def info(self) -> dict[str, Any]:
        e = self.embedder
        return {
            "model": e.model_id, "checksum": e.checksum, "dimension": e.dim, "vocab_size": e.vocab_size,
            "max_tokens": e.max_tokens, "table_source": self.table_source, "pid": os.getpid(),
            "batch": self.batch_config, "largest_batch_requests": self.batcher.largest_batch,
        }


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """Application builder for `serve run` / `serve deploy` / RayService: `import_path: swiftembed.serve:build_app`.

    args: `model` (directory or Hub id; default the vendored potion-base-8M), `max_tokens`, and any Settings
    field (e.g. `max_texts`, `api_key`) to override the SWIFTEMBED_* environment.
    """
    args = dict(args or {})
    model = args.pop("model", None)
    max_tokens = args.pop("max_tokens", -1)
    return SwiftEmbedDeployment.bind(model=model, max_tokens=max_tokens, settings=args)  # type: ignore[attr-defined]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_local(
    *,
    model: str | None = None,
    max_tokens: int | None = -1,
    settings: Settings | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    ingress: str = "haproxy",
    num_replicas: int = 1,
    metrics_port: int = 8080,
) -> None:
    """Start a local Ray and Serve SwiftEmbed on host:port until interrupted (Ctrl-C or SIGTERM)."""
    ingress = choose_ingress(ingress)
    if ingress == "proxy":  # also when HAProxy was asked for in the environment but cannot run here
        for key in ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED"):
            os.environ.pop(key, None)
    for key, value in serve_environment(ingress, port).items():
        os.environ.setdefault(key, value)
    overrides = {} if settings is None else {k: v for k, v in vars(settings).items() if v != getattr(Settings(), k)}
    cpus = min(1.0, (os.cpu_count() or 1) / max(num_replicas, 1))  # several replicas must fit a small machine
    app = SwiftEmbedDeployment.options(  # type: ignore[attr-defined]
        num_replicas=num_replicas, ray_actor_options={"num_cpus": cpus}
    ).bind(model=model, max_tokens=max_tokens, settings=overrides)
    ray.init(namespace=NAMESPACE, include_dashboard=False, _metrics_export_port=metrics_port)
    # SIGTERM (kill, systemd, a container stop) takes the same path out as Ctrl-C, also while starting: Serve,
    # HAProxy and Ray stop. Set after ray.init, which installs a handler of its own that exits without stopping Serve.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
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
