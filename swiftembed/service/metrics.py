"""Request metrics: one interface, two sinks (prometheus-client when standalone, Ray's metrics under Serve).

The names match across both, so dashboards work either way (Ray prefixes its series with `ray_`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate
from typing import Any, Literal, NamedTuple, Protocol

NO_MODEL = "none"  # the `model` label of requests that resolved no model
# The `route` label: an HTTP request's path, else the way in and the method (`handle:embed`, `grpc:Embed/Embed`).
HANDLE_ROUTE, GRPC_ROUTE = "handle:", "grpc:"

# Sub-millisecond resolution where a static model's latency lives.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 50, 100, 250, 500, 1000, 2500, 10000,
)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
KERNEL_BUCKETS_MS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 500)


class Metric(NamedTuple):
    """One SwiftEmbed metric, as both sinks export it (Ray adds `ray_` before the name, and counters get `_total`
    in either exposition). deploy/grafana/metrics.yaml, which the dashboard and the alerts are built from, is
    checked against this table (tests/test_observability_static.py)."""

    name: str
    kind: Literal["counter", "histogram"]
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] = ()


REQUESTS = Metric("swiftembed_requests", "counter", ("route", "status", "model"), "Requests by route, status and model")
LATENCY = Metric("swiftembed_request_latency_ms", "histogram", ("route", "status", "model"),
                 "Request latency in milliseconds", LATENCY_BUCKETS_MS)
TEXTS = Metric("swiftembed_texts", "counter", ("route", "model"), "Texts embedded")
TOKENS = Metric("swiftembed_tokens", "counter", ("route", "model"), "Tokens pooled")
BATCH_SIZE = Metric("swiftembed_batch_size", "histogram", ("model",), "Texts per kernel call", BATCH_BUCKETS)
BATCH_REQUESTS = Metric("swiftembed_batch_requests", "histogram", ("model",), "Requests per kernel call",
                        BATCH_BUCKETS)
KERNEL_TIME = Metric("swiftembed_kernel_time_ms", "histogram", ("model",), "Tokenize + pool time per batch (ms)",
                     KERNEL_BUCKETS_MS)
METRICS: tuple[Metric, ...] = (REQUESTS, LATENCY, TEXTS, TOKENS, BATCH_SIZE, BATCH_REQUESTS, KERNEL_TIME)


class Metrics(Protocol):
    def request(self, route: str, status: int, latency_ms: float, texts: int, tokens: int, model: str) -> None: ...

    def batch(self, model: str, texts: int, requests: int, kernel_ms: float) -> None:
        """One kernel call: its texts, the requests merged into it, and its time (the batcher's observer)."""
        ...

    def exposition(self) -> tuple[bytes, str] | None:
        """Body and content type for GET /metrics, or None where another system scrapes the metrics."""
        ...


class NoMetrics:
    def request(self, route: str, status: int, latency_ms: float, texts: int, tokens: int, model: str) -> None:
        pass

    def batch(self, model: str, texts: int, requests: int, kernel_ms: float) -> None:
        pass

    def exposition(self) -> tuple[bytes, str] | None:
        return None


class _Histogram:
    """Counts per bucket (not cumulative; the last is +Inf) and their sum. Updated inline where observed (a
    bisect and two additions): a method call per observation was ~5% of a one-text request in-process."""

    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.sum = 0.0


class _Series:
    """One (route, status, model)'s counts."""

    __slots__ = ("latency", "count", "texts", "tokens")

    def __init__(self) -> None:
        self.latency = _Histogram(LATENCY.buckets)
        self.count = 0
        self.texts = 0
        self.tokens = 0


class PrometheusMetrics:
    """Metrics for the standalone server's /metrics, in prometheus-client's exposition format.

    Counts are kept in plain Python and turned into metric families only when scraped: a request costs a dict
    lookup and a bisect, not four locked updates of prometheus-client metrics (a tenth of a one-text request).
    `request` and scrapes must come from one thread, the server's event loop, as they do here.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        self._series: dict[tuple[str, int, str], _Series] = {}
        self._batches: dict[str, tuple[_Histogram, _Histogram, _Histogram]] = {}
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def request(self, route: str, status: int, latency_ms: float, texts: int, tokens: int, model: str) -> None:
        key = (route, status, model)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        latency = series.latency
        latency.buckets[bisect_left(latency.bounds, latency_ms)] += 1
        latency.sum += latency_ms
        series.count += 1
        series.texts += texts
        series.tokens += tokens

    def batch(self, model: str, texts: int, requests: int, kernel_ms: float) -> None:
        found = self._batches.get(model)
        if found is None:
            found = self._batches[model] = (_Histogram(BATCH_SIZE.buckets), _Histogram(BATCH_REQUESTS.buckets),
                                            _Histogram(KERNEL_TIME.buckets))
        sizes, merged, kernel = found
        sizes.buckets[bisect_left(sizes.bounds, texts)] += 1
        sizes.sum += texts
        merged.buckets[bisect_left(merged.bounds, requests)] += 1
        merged.sum += requests
        kernel.buckets[bisect_left(kernel.bounds, kernel_ms)] += 1
        kernel.sum += kernel_ms

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        def family(metric: Metric) -> Any:
            kind = HistogramMetricFamily if metric.kind == "histogram" else CounterMetricFamily
            return kind(metric.name, metric.help, labels=list(metric.labels))

        def buckets(histogram: _Histogram) -> list[tuple[str, int]]:
            return list(zip([*map(floatToGoString, histogram.bounds), "+Inf"], accumulate(histogram.buckets)))

        latency, requests, texts, tokens = map(family, (LATENCY, REQUESTS, TEXTS, TOKENS))
        per_route: dict[tuple[str, str], list[int]] = {}
        for (route, status, model), series in self._series.items():
            latency.add_metric([route, str(status), model], buckets(series.latency), series.latency.sum)
            requests.add_metric([route, str(status), model], series.count)
            totals = per_route.setdefault((route, model), [0, 0])
            totals[0] += series.texts
            totals[1] += series.tokens
        for (route, model), (text_count, token_count) in per_route.items():
            texts.add_metric([route, model], text_count)
            tokens.add_metric([route, model], token_count)
        batch_families = [family(m) for m in (BATCH_SIZE, BATCH_REQUESTS, KERNEL_TIME)]
        for model, histograms in self._batches.items():
            for fam, histogram in zip(batch_families, histograms):
                fam.add_metric([model], buckets(histogram), histogram.sum)
        yield from (latency, requests, texts, tokens, *batch_families)

    def exposition(self) -> tuple[bytes, str] | None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
