"""Request metrics: one interface, two sinks (prometheus-client when standalone, Ray's metrics under Serve).

The names match across both, so dashboards work either way (Ray prefixes its series with `ray_`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate
from typing import Any, Protocol

# Sub-millisecond resolution where a static model's latency lives.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 50, 100, 250, 500, 1000, 2500, 10000,
)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
KERNEL_BUCKETS_MS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 500)


class Metrics(Protocol):
    def request(self, route: str, status: int, latency_ms: float, texts: int, tokens: int, model: str) -> None: ...

    def exposition(self) -> tuple[bytes, str] | None:
        """Body and content type for GET /metrics, or None where another system scrapes the metrics."""
        ...


class NoMetrics:
    def request(self, route: str, status: int, latency_ms: float, texts: int, tokens: int, model: str) -> None:
        pass

    def exposition(self) -> tuple[bytes, str] | None:
        return None


class _Series:
    """One (route, status, model)'s counts."""

    __slots__ = ("buckets", "count", "sum", "texts", "tokens")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.count = 0
        self.sum = 0.0
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
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def request(self, route: str, status: int, latency_ms: float, texts: int, tokens: int, model: str) -> None:
        key = (route, status, model)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        series.buckets[bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
        series.count += 1
        series.sum += latency_ms
        series.texts += texts
        series.tokens += tokens

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        labels = ["route", "status", "model"]
        latency = HistogramMetricFamily("swiftembed_request_latency_ms", "Request latency in milliseconds",
                                        labels=labels)
        requests = CounterMetricFamily("swiftembed_requests", "Requests by route, status and model", labels=labels)
        texts = CounterMetricFamily("swiftembed_texts", "Texts embedded", labels=["route", "model"])
        tokens = CounterMetricFamily("swiftembed_tokens", "Tokens pooled", labels=["route", "model"])
        bounds = [*map(floatToGoString, LATENCY_BUCKETS_MS), "+Inf"]
        per_route: dict[tuple[str, str], list[int]] = {}
        for (route, status, model), series in self._series.items():
            latency.add_metric([route, str(status), model], list(zip(bounds, accumulate(series.buckets))), series.sum)
            requests.add_metric([route, str(status), model], series.count)
            totals = per_route.setdefault((route, model), [0, 0])
            totals[0] += series.texts
            totals[1] += series.tokens
        for (route, model), (text_count, token_count) in per_route.items():
            texts.add_metric([route, model], text_count)
            tokens.add_metric([route, model], token_count)
        yield from (latency, requests, texts, tokens)

    def exposition(self) -> tuple[bytes, str] | None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
