"""Request metrics: one interface, two sinks (prometheus-client when standalone, Ray's metrics under Serve).

The names match across both, so dashboards work either way (Ray prefixes its series with `ray_`).
"""

from __future__ import annotations

from typing import Any, Protocol

# Sub-millisecond resolution where a static model's latency lives.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 50, 100, 250, 500, 1000, 2500, 10000,
)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
KERNEL_BUCKETS_MS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 500)


class Metrics(Protocol):
    def request(self, route: str, status: int, latency_ms: float, texts: int, tokens: int) -> None: ...

    def exposition(self) -> tuple[bytes, str] | None:
        """Body and content type for GET /metrics, or None where another system scrapes the metrics."""
        ...


class NoMetrics:
    def request(self, route: str, status: int, latency_ms: float, texts: int, tokens: int) -> None:
        pass

    def exposition(self) -> tuple[bytes, str] | None:
        return None


class PrometheusMetrics:
    """prometheus-client metrics in a private registry, exposed by the standalone server's /metrics."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        labels = ("route", "status")
        self._latency = Histogram(
            "swiftembed_request_latency_ms", "Request latency in milliseconds", labels,
            buckets=LATENCY_BUCKETS_MS, registry=self.registry,
        )
        self._requests = Counter("swiftembed_requests", "Requests by route and status", labels, registry=self.registry)
        self._texts = Counter("swiftembed_texts", "Texts embedded", ("route",), registry=self.registry)
        self._tokens = Counter("swiftembed_tokens", "Tokens pooled", ("route",), registry=self.registry)
        self._children: dict[tuple[str, int], tuple[Any, Any, Any, Any]] = {}

    def request(self, route: str, status: int, latency_ms: float, texts: int, tokens: int) -> None:
        children = self._children.get((route, status))
        if children is None:  # label lookups cost more than the observations: do them once per (route, status)
            code = str(status)
            children = (self._latency.labels(route, code), self._requests.labels(route, code),
                        self._texts.labels(route), self._tokens.labels(route))
            self._children[(route, status)] = children
        latency, requests, texts_counter, tokens_counter = children
        latency.observe(latency_ms)
        requests.inc()
        if texts:
            texts_counter.inc(texts)
        if tokens:
            tokens_counter.inc(tokens)

    def exposition(self) -> tuple[bytes, str] | None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
