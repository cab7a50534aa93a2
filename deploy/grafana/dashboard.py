#!/usr/bin/env python3
"""Build the SwiftEmbed Grafana dashboard, deploy/grafana/swiftembed.json, from the panels below.

Metric names live only in metrics.yaml (beside this file); panels name metrics by catalogue key.

    python deploy/grafana/dashboard.py           # rewrite swiftembed.json
    python deploy/grafana/dashboard.py --check   # exit 1 if swiftembed.json is out of date
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
CATALOGUE = HERE / "metrics.yaml"
OUTPUT = HERE / "swiftembed.json"

UID = "swiftembed"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
APP = 'application="$application"'
MODEL = 'model=~"$model"'  # the SwiftEmbed (sw_*) metrics only; Serve and Ray metrics have no model label
USER_ROUTES = 'route!~"/-/.*"'  # leave out Serve's own /-/healthz and /-/routes
SW_ROUTES = 'route!~"/health|/metrics"'  # the same for SwiftEmbed's front door
# SwiftEmbed's metrics count handle calls and gRPC calls too, under handle:<method> and grpc:<Service>/<Method>.
HTTP_ONLY = 'route!~"(handle|grpc):.*"'
ERRORS = 'status=~"[45].."'
OBJECT_STORE = 'Name="object_store_memory"'  # ray_resources: the object-store capacity
GRID_WIDTH = 24


def load_catalogue(path: Path = CATALOGUE) -> dict[str, dict[str, Any]]:
    """The metric catalogue: key -> {name, type, labels, help, confirmed}."""
    return yaml.safe_load(path.read_text())["metrics"]


METRICS = load_catalogue()


def sel(key: str, *matchers: str, suffix: str = "") -> str:
    """A PromQL selector for catalogue metric `key`; histograms need a suffix (_bucket, _count, _sum)."""
    metric = METRICS[key]
    if (metric["type"] == "histogram") != bool(suffix):
        raise ValueError(f"{key} is a {metric['type']}: suffix {suffix!r} does not fit")
    name = metric["name"] + suffix
    return f"{name}{{{', '.join(matchers)}}}" if matchers else name


def rate(key: str, *matchers: str, by: str = "") -> str:
    """Per-second rate of a counter, summed (by the given labels)."""
    inner = f"rate({sel(key, *matchers)}[{RATE}])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def quantile(q: float, key: str, *matchers: str, by: str = "") -> str:
    """The q-quantile of a histogram over the rate interval (grouped by the given labels)."""
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({sel(key, *matchers, suffix='_bucket')}[{RATE}])))"


@dataclass
class Target:
    """One PromQL query of a panel."""

    expr: str
    legend: str = ""
    heatmap: bool = False


@dataclass
class Panel:
    """A panel; `kind` is a Grafana panel type (timeseries, stat, heatmap)."""

    title: str
    description: str
    targets: list[Target]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    thresholds: list[tuple[float | None, str]] = field(default_factory=lambda: [(None, "green")])
    decimals: int | None = None


@dataclass
class Row:
    """A titled row of panels, laid out left to right and wrapped at the grid width."""

    title: str
    panels: list[Panel]


def quantiles(key: str, *matchers: str, legend: str = "", qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> list[Target]:
    """Percentile targets (p50, p95, p99 by default) of one histogram."""
    return [Target(quantile(q, key, *matchers), f"{legend}p{round(q * 100)}") for q in qs]


def share(key: str, label: str, pattern: str, *matchers: str) -> str:
    """Fraction of a counter's rate whose `label` matches the regex `pattern`: 0, not nothing, while traffic
    flows without a match (a selector matching no series gives no value, not 0)."""
    return f"({rate(key, *matchers, f'{label}=~{json.dumps(pattern)}')} or vector(0)) / {rate(key, *matchers)}"


ROWS: list[Row] = [
    Row(
        "Overview",
        [
            Panel(
                "Healthy replicas",
                "Replicas the Serve controller sees as healthy. 0 fires SwiftEmbedNoHealthyReplica.",
                [Target(f"sum({sel('replica_healthy', APP)})")],
                kind="stat",
                width=4,
                height=4,
                thresholds=[(None, "red"), (1, "green")],
                decimals=0,
            ),
            Panel(
                "Running replicas",
                "Replicas reporting metrics (one ray_serve_replica_processing_queries series each).",
                [Target(f"count({sel('processing_queries', APP)})")],
                kind="stat",
                width=4,
                height=4,
                decimals=0,
            ),
            Panel(
                "Target replicas",
                "The replica count the Serve autoscaler is steering towards (autoscaling_config bounds it).",
                [Target(f"sum({sel('target_replicas', APP)})")],
                kind="stat",
                width=4,
                height=4,
                decimals=0,
            ),
            Panel(
                "Requests/s",
                "HTTP requests per second answered by the Serve ingress for this application, and by the "
                "replicas (the replica ingress has no Serve ingress: only the second shows there).",
                [Target(rate("http_requests", APP, USER_ROUTES), "ingress"),
                 Target(rate("sw_requests", APP, SW_ROUTES, MODEL), "replicas")],
                unit="reqps",
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "5xx share",
                "Share of HTTP responses with a 5xx status at the Serve ingress (503 = queue full, see "
                "max_queued_requests) and at the replicas (503 = max_concurrency reached). Above 5% for 5 min "
                "fires SwiftEmbedHighErrorRate.",
                [Target(share("http_requests", "status_code", "5..", APP, USER_ROUTES), "ingress"),
                 Target(share("sw_requests", "status", "5..", APP, SW_ROUTES, MODEL), "replicas")],
                unit="percentunit",
                kind="stat",
                width=4,
                height=4,
                thresholds=[(None, "green"), (0.01, "orange"), (0.05, "red")],
            ),
            Panel(
                "p99 latency (end to end)",
                "99th percentile of the latency measured at the Serve ingress, and at the replicas' front door "
                "(all there is under the replica ingress). Above 100 ms for 10 min fires "
                "SwiftEmbedHighP99Latency.",
                [Target(quantile(0.99, "http_latency", APP, USER_ROUTES), "ingress"),
                 Target(quantile(0.99, "sw_latency", APP, SW_ROUTES, MODEL), "replicas")],
                unit="ms",
                kind="stat",
                width=4,
                height=4,
                thresholds=[(None, "green"), (50, "orange"), (100, "red")],
            ),
        ],
    ),
    Row(
        "Models",
        [
            Panel(
                "Requests/s by model",
                "Requests handled by SwiftEmbed replicas per served model (none: requests that resolved no "
                "model, such as /health, 401s and 404s).",
                [Target(rate("sw_requests", APP, MODEL, by="model"), "{{model}}")],
                unit="reqps",
            ),
            Panel(
                "SwiftEmbed p99 latency by model",
                "99th percentile of the SwiftEmbed handler latency per served model.",
                [Target(quantile(0.99, "sw_latency", APP, MODEL, by="model"), "{{model}}")],
                unit="ms",
            ),
        ],
    ),
    Row(
        "Traffic",
        [
            Panel(
                "Requests/s by route and status",
                "Requests handled by SwiftEmbed replicas, by request path and HTTP status.",
                [Target(rate("sw_requests", APP, MODEL, by="route, status"), "{{route}} {{status}}")],
                unit="reqps",
            ),
            Panel(
                "HTTP requests/s at the ingress by status",
                "Everything the ingress answered, including requests refused before reaching a replica: the Serve "
                "proxies (proxy and HAProxy ingress), or the replicas' own front doors (replica ingress).",
                [Target(rate("http_requests", APP, USER_ROUTES, by="status_code"), "{{status_code}} proxy"),
                 Target(rate("sw_requests", APP, SW_ROUTES, MODEL, HTTP_ONLY, by="status"),
                        "{{status}} replicas")],
                unit="reqps",
            ),
            Panel(
                "Error rate",
                "Share of responses that are errors: 5xx and 4xx at the proxies, and non-2xx inside replicas.",
                [
                    Target(share("http_requests", "status_code", "5..", APP, USER_ROUTES), "5xx (proxy)"),
                    Target(share("http_requests", "status_code", "4..", APP, USER_ROUTES), "4xx (proxy)"),
                    Target(
                        f"1 - ({share('sw_requests', 'status', '2..', APP, MODEL)})",
                        "non-2xx (replicas)",
                    ),
                ],
                unit="percentunit",
            ),
            Panel(
                "Error responses/s by code",
                "4xx and 5xx responses: those Serve attributes to a deployment, and those the replicas answered "
                "(handle calls under handle:<method>, gRPC calls under grpc:<Service>/<Method>, with the status HTTP "
                "gives the same error). 0 while none.",
                [
                    Target(
                        rate("deployment_http_errors", APP, USER_ROUTES, by="deployment, error_code"),
                        "{{deployment}} {{error_code}}",
                    ),
                    Target(rate("sw_requests", APP, MODEL, ERRORS, by="route, status"),
                           "{{route}} {{status}}"),
                    Target(f"{rate('sw_requests', APP, MODEL, ERRORS)} or vector(0)", "all (replicas)"),
                ],
                unit="reqps",
            ),
            Panel(
                "Texts/s and tokens/s",
                "Throughput of the embedding kernel: texts embedded and tokens looked up per second.",
                [
                    Target(rate("sw_texts", APP, MODEL), "texts/s"),
                    Target(rate("sw_tokens", APP, MODEL), "tokens/s"),
                ],
            ),
            Panel(
                "Mean tokens per text",
                "Tokens per embedded text, from the two counters (histogram sums are approximate in Ray).",
                [Target(f"{rate('sw_tokens', APP, MODEL)} / {rate('sw_texts', APP, MODEL)}", "tokens per text")],
            ),
        ],
    ),
    Row(
        "Latency",
        [
            Panel(
                "Latency at the ingress and in the replicas",
                "proxy: from Ray's proxy receiving a request to it sending the response, what clients see minus "
                "the network (buckets from RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS, default from 1 ms). replicas: "
                "the SwiftEmbed histogram (sub-millisecond buckets), time in the replica's front door, which is "
                "the whole server-side time under the replica ingress; the gap is proxy work plus queueing.",
                quantiles("http_latency", APP, USER_ROUTES, legend="proxy ")
                + quantiles("sw_latency", APP, SW_ROUTES, MODEL, legend="replicas "),
                unit="ms",
            ),
            Panel(
                "SwiftEmbed p99 latency by route",
                "99th percentile of the SwiftEmbed handler latency per request path.",
                [Target(quantile(0.99, "sw_latency", APP, MODEL, by="route"), "{{route}}")],
                unit="ms",
            ),
        ],
    ),
    Row(
        "Batching",
        [
            Panel(
                "Batch-size distribution",
                "Texts per kernel call (user_config max_batch_size caps the requests merged into one call; so "
                "does max_ongoing_requests). Counts per bucket over the rate interval.",
                [
                    Target(
                        f"sum by (le) (increase({sel('sw_batch_size', APP, MODEL, suffix='_bucket')}[{RATE}]))",
                        "{{le}}",
                        True,
                    )
                ],
                kind="heatmap",
                width=8,
            ),
            Panel(
                "Batch size",
                "Percentiles of the texts and of the requests in each kernel call. Requests per call near 1 "
                "under load means batching does not happen (see batch_wait_timeout_s).",
                quantiles("sw_batch_size", APP, MODEL, legend="texts ")
                + quantiles("sw_batch_requests", APP, MODEL, legend="requests ", qs=(0.5, 0.99)),
                width=8,
            ),
            Panel(
                "Kernel time per batch",
                "Time the embedding kernel took per batch.",
                quantiles("sw_kernel_time", APP, MODEL),
                unit="ms",
                width=8,
            ),
        ],
    ),
    Row(
        "Queues and replicas",
        [
            Panel(
                "Queue length",
                "Requests waiting in routers for a replica (queued) and requests inside replicas (processing). "
                "A growing queue means too few replicas; max_queued_requests bounds it, then 503s.",
                [
                    Target(f"sum by (deployment) ({sel('queued_queries', APP)})", "queued {{deployment}}"),
                    Target(f"sum by (deployment) ({sel('processing_queries', APP)})", "processing {{deployment}}"),
                ],
            ),
            Panel(
                "Replicas",
                "Healthy, running and target replica counts.",
                [
                    Target(f"sum({sel('replica_healthy', APP)})", "healthy"),
                    Target(f"count({sel('processing_queries', APP)})", "running"),
                    Target(f"sum({sel('target_replicas', APP)})", "target"),
                ],
                decimals=0,
            ),
            Panel(
                "Replica utilization",
                "Share of each replica's capacity (max_ongoing_requests slots) busy with user code over a "
                "rolling window.",
                [Target(f"max by (replica) ({sel('replica_utilization', APP)})", "{{replica}}")],
                unit="percent",
            ),
            Panel(
                "Ongoing requests per replica",
                "Requests each replica is processing now; compare with target_ongoing_requests (autoscaling) "
                "and max_ongoing_requests (hard cap).",
                [Target(f"sum by (replica) ({sel('processing_queries', APP)})", "{{replica}}")],
            ),
        ],
    ),
    Row(
        "Ray object store",
        [
            Panel(
                "Object-store memory by node",
                "Bytes in each node's object store by location, against its capacity. SPILLED or MMAP_DISK "
                "means /dev/shm is too small.",
                [
                    Target(f"sum by (instance, Location) ({sel('object_store_memory')})", "{{instance}} {{Location}}"),
                    Target(
                        f"sum by (instance) ({sel('resources', OBJECT_STORE)})",
                        "{{instance}} capacity",
                    ),
                ],
                unit="bytes",
            ),
            Panel(
                "Object-store use",
                "Share of the cluster's object-store capacity in use.",
                [
                    Target(
                        f"sum({sel('object_store_memory')}) / sum({sel('resources', OBJECT_STORE)})",
                        "used",
                    )
                ],
                unit="percentunit",
            ),
        ],
    ),
]


def _thresholds(steps: list[tuple[float | None, str]]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for value, color in steps]}


def _target(target: Target, ref_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": target.expr,
        "legendFormat": target.legend or "__auto",
        "range": True,
        "refId": ref_id,
    }
    if target.heatmap:
        out["format"] = "heatmap"
    return out


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit, "thresholds": _thresholds(panel.thresholds)}
    if panel.decimals is not None:
        defaults["decimals"] = panel.decimals
    options: dict[str, Any]
    if panel.kind == "timeseries":
        defaults["color"] = {"mode": "palette-classic"}
        defaults["min"] = 0
        defaults["custom"] = {
            "drawStyle": "line",
            "fillOpacity": 10,
            "lineWidth": 1,
            "showPoints": "never",
            "spanNulls": False,
        }
        options = {
            "legend": {
                "calcs": ["mean", "max", "lastNotNull"],
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif panel.kind == "stat":
        defaults["color"] = {"mode": "thresholds"}
        options = {
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        }
    elif panel.kind == "heatmap":
        options = {
            "calculate": False,
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64, "exponent": 0.5, "reverse": False},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"show": True, "yHistogram": True},
            "yAxis": {"axisPlacement": "left", "unit": panel.unit},
        }
    else:
        raise ValueError(f"unknown panel kind {panel.kind!r}")
    ref_ids = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return {
        "datasource": DATASOURCE,
        "description": panel.description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "id": panel_id,
        "options": options,
        "targets": [_target(t, ref_ids[i]) for i, t in enumerate(panel.targets)],
        "title": panel.title,
        "type": panel.kind,
    }


def _templating() -> dict[str, Any]:
    app_query = f"label_values({sel('replica_healthy')}, application)"
    model_query = f"label_values({sel('sw_requests', APP)}, model)"
    return {
        "list": [
            {
                "current": {},
                "hide": 0,
                "includeAll": False,
                "label": "Data source",
                "multi": False,
                "name": "datasource",
                "options": [],
                "query": "prometheus",
                "refresh": 1,
                "regex": "",
                "type": "datasource",
            },
            {
                "current": {"selected": True, "text": "swiftembed", "value": "swiftembed"},
                "datasource": DATASOURCE,
                "definition": app_query,
                "description": "The Serve application (deploy/serve-cluster.yaml names it swiftembed).",
                "hide": 0,
                "includeAll": False,
                "label": "Application",
                "multi": False,
                "name": "application",
                "options": [],
                "query": {"query": app_query, "refId": "application"},
                "refresh": 2,
                "regex": "",
                "sort": 1,
                "type": "query",
            },
            {
                "allValue": ".*",  # All = no filter, also for models first seen after the list was loaded
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                "datasource": DATASOURCE,
                "definition": model_query,
                "description": "Served models (short names; none = requests that resolved no model). Filters "
                "the SwiftEmbed panels; the Serve and Ray panels cover all models.",
                "hide": 0,
                "includeAll": True,
                "label": "Model",
                "multi": True,
                "name": "model",
                "options": [],
                "query": {"query": model_query, "refId": "model"},
                "refresh": 2,
                "regex": "",
                "sort": 1,
                "type": "query",
            },
        ]
    }


def build() -> dict[str, Any]:
    """The dashboard as a dict (Grafana schemaVersion 39)."""
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for row in ROWS:
        panels.append(
            {
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                "id": next_id,
                "panels": [],
                "title": row.title,
                "type": "row",
            }
        )
        next_id += 1
        y += 1
        x, row_height = 0, 0
        for panel in row.panels:
            if x + panel.width > GRID_WIDTH:
                x, y, row_height = 0, y + row_height, 0
            panels.append(_panel(panel, next_id, x, y))
            next_id += 1
            x += panel.width
            row_height = max(row_height, panel.height)
        y += row_height
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": "SwiftEmbed on Ray Serve: models, traffic, errors, latency, batching, queues, replicas, "
        "object store. Generated by deploy/grafana/dashboard.py from deploy/grafana/metrics.yaml: do not edit by hand.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": panels,
        "refresh": "10s",
        "schemaVersion": 39,
        "tags": ["swiftembed", "ray-serve"],
        "templating": _templating(),
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "SwiftEmbed",
        "uid": UID,
        "version": 1,
        "weekStart": "",
    }


def render() -> str:
    """The dashboard JSON text exactly as written to swiftembed.json."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from generated import write_or_check

    return write_or_check(OUTPUT, render, "python deploy/grafana/dashboard.py", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
