"""The observability files against a live Ray and a real Prometheus server.

tests/test_observability_static.py checks that the dashboard, the alert rules and the metric catalogue parse
and agree with each other; this module checks that they match what Ray 2.60 really exports. It deploys
SwiftEmbed on the session's local Ray, starts Prometheus (Debian package `prometheus`, installed by .ci/run)
on a free loopback port with a config made from deploy/prometheus.yml (same rules file, the session's Ray
metrics port as the target, 1 s scrape and evaluation intervals), sends a few hundred requests (HTTP routes,
client errors, handle calls), then asks Prometheus's HTTP API for every catalogue metric and label, every
expression of deploy/grafana/swiftembed.json and every alert expression of deploy/alerts/rules.yaml.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from loadtest.prometheus import (
    APPLICATION,
    DEPLOY,
    Prometheus,
    binary,
    dashboard,
    dashboard_targets,
    substitute,
)
from tests.servers import free_port

pytestmark = pytest.mark.ray

CATALOGUE = DEPLOY / "grafana" / "metrics.yaml"
RULES = DEPLOY / "alerts" / "rules.yaml"

MODELS = ("potion-base-8M", "swiftembed-potion-sts-8M")  # build_app({}) serves both; traffic_round asks for each

# Dashboard queries allowed to return no data, by (panel title, refId). Keep this list short and justified.
# None today: shares read 0, not nothing, while traffic flows without a 5xx (`or vector(0)`).
ALLOWED_EMPTY: set[tuple[str, str]] = set()

ROUNDS = 8  # traffic: ROUNDS x (30 HTTP requests + 4 handle calls), a pause between rounds
ROUND_PAUSE_S = 0.4
DATA_TIMEOUT_S = 40.0  # how long to wait for scraped samples (Ray exports every 1 s here, with some lag)
# Range queries are evaluated at most this long after the traffic ended, so that their 1m windows still
# cover the whole burst however long the tests before took (a failing test polls for DATA_TIMEOUT_S).
EVALUATE_WITHIN_S = 30.0


def prometheus_binary() -> str:
    """The Prometheus server binary; skip without it locally, fail in CI (where .ci/run installs it)."""
    path = binary()
    if path is None:
        message = "prometheus not found (bash .ci/run installs the Debian package prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def rule_exprs() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule.get("alert") or rule["record"]: rule["expr"] for group in groups for rule in group["rules"]}


@pytest.fixture(scope="module")
def prometheus(ray_serve, tmp_path_factory):
    """A real Prometheus scraping the session's Ray and loading deploy/alerts/rules.yaml."""
    server = Prometheus.start(prometheus_binary(), tmp_path_factory.mktemp("prometheus"),
                              [urlsplit(ray_serve.metrics_url).netloc], free_port())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def app(ray_serve):
    """SwiftEmbed deployed as the application the alert rules watch (tests/test_serve.py deploys the same name
    in its own module fixture; each deletes it when its module ends)."""
    from ray import serve

    from swiftembed.ray.deployment import APP_NAME, build_app

    assert APP_NAME == APPLICATION
    handle = serve.run(build_app({}), name=APP_NAME, route_prefix="/")
    yield handle
    serve.delete(APP_NAME)


def wait_for_target(prom: Prometheus, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        targets = prom.api("targets")["data"]["activeTargets"]
        if targets and all(t["health"] == "up" for t in targets):
            return
        assert time.monotonic() < deadline, f"scrape target not up: {targets}\n{prom.log_tail()}"
        time.sleep(0.5)


# Bad requests sent each round: (path, body, headers, expected status).
BAD = [
    ("/embed", b'{"texts": ["a"', {"Content-Type": "application/json"}, 400),
    ("/embed", b'{"text": "a"}', {"Content-Type": "application/json"}, 422),
    ("/embed", b'{"texts": ["a"]}', {"Content-Type": "text/plain"}, 415),
    ("/v1/embeddings", b'{"model": "potion-base-8M"}', {"Content-Type": "application/json"}, 422),
]


async def traffic_round(url: str, n: int) -> list[tuple[str, int, int]]:
    """One round of concurrent requests: (path, expected status, got status) each."""

    async def post(client: httpx.AsyncClient, path: str, expected: int, **kwargs: Any) -> tuple[str, int, int]:
        r = await client.post(path, **kwargs)
        if path == "/embed/jsonl" and r.status_code == 200:
            assert len([line for line in r.text.splitlines() if line]) == 5
        return path, expected, r.status_code

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        jobs = [post(client, "/embed", 200, json={"texts": [f"round {n} text {i}", "a dog runs"]}) for i in range(16)]
        jobs += [
            post(client, "/v1/embeddings", 200, json={"model": MODELS[i % 2], "input": [f"openai {n} {i}"]})
            for i in range(8)
        ]
        lines = b"".join(b'{"text": "jsonl line %d %d"}\n' % (n, i) for i in range(5))
        jobs += [
            post(client, "/embed/jsonl", 200, content=lines, headers={"Content-Type": "application/jsonl"})
            for _ in range(2)
        ]
        jobs += [post(client, path, status, content=body, headers=headers) for path, body, headers, status in BAD]
        return list(await asyncio.gather(*jobs))


@dataclass
class Traffic:
    sent: int  # HTTP requests and handle calls
    started: float  # unix time
    ended: float

    def evaluation_time(self) -> float:
        """When to evaluate queries: now, but no later than EVALUATE_WITHIN_S after the burst."""
        return min(time.time(), self.ended + EVALUATE_WITHIN_S)


@pytest.fixture(scope="module")
def traffic(ray_serve, app, prometheus) -> Traffic:
    """A bounded burst of traffic (a few hundred requests over a few seconds) once Prometheus scrapes Ray."""
    wait_for_target(prometheus)
    sent, started = 0, time.time()
    for n in range(ROUNDS):
        results = asyncio.run(traffic_round(ray_serve.url, n))
        wrong = [(path, want, got) for path, want, got in results if want != got]
        assert not wrong, wrong
        calls = [app.embed.remote([f"handle {n} {i}", "a puppy is running"]) for i in range(4)]
        assert all(call.result().shape == (2, 256) for call in calls)
        sent += len(results) + len(calls)
        time.sleep(ROUND_PAUSE_S)
    ended = time.time()
    assert ended - started < 60 - EVALUATE_WITHIN_S - 5, "traffic took too long for the 1m rate windows"
    return Traffic(sent, started, ended)


def has_finite_value(result: dict[str, Any]) -> bool:
    """An instant query's result holds at least one series (or scalar) with a finite value."""
    data = result["data"]
    if data["resultType"] in {"scalar", "string"}:
        return math.isfinite(float(data["result"][1]))
    return any(math.isfinite(float(series["value"][1])) for series in data["result"])


def poll(check, timeout: float = DATA_TIMEOUT_S, every: float = 1.0):
    """Call `check()` (a list of problems) until it returns none or the time is up; the last problems."""
    deadline = time.monotonic() + timeout
    while True:
        problems = check()
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(every)


def test_every_dashboard_expression_returns_data(prometheus, traffic):
    targets = dashboard_targets()
    assert len(targets) >= 30
    assert {(title, ref) for title, ref, _ in targets} >= ALLOWED_EMPTY, "stale ALLOWED_EMPTY entry"
    invalid: list[str] = []

    def without_data() -> list[str]:
        out = []
        at = traffic.evaluation_time()
        for title, ref, expr in targets:
            query = substitute(expr)
            result = prometheus.query(query, at)
            if result["status"] != "success":
                invalid.append(f"{title} {ref}: {result.get('error')}  ({query})")
            elif (title, ref) not in ALLOWED_EMPTY and not has_finite_value(result):
                out.append(f"{title} {ref}: {result['data']['result'] or 'no data'}  ({query})")
        return out if not invalid else []

    problems = poll(without_data)
    at = traffic.evaluation_time()
    for title, ref, expr in targets:  # shown by pytest when the test fails (or with -s)
        data = prometheus.query(substitute(expr), at).get("data", {}).get("result", [])
        print(f"{title} {ref}: {[(s.get('metric'), s['value'][1]) for s in data][:4]}")
    assert not invalid, "invalid PromQL:\n" + "\n".join(invalid)
    assert not problems, "dashboard queries without data after the traffic:\n" + "\n".join(problems)


def test_dashboard_application_variable_lists_the_application(prometheus, traffic):
    """The `application` variable's label_values(metric, label) query, as Grafana sends it to Prometheus."""
    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "application")
    query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
    match = re.fullmatch(r"label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)", query)
    assert match, query
    metric, label = match.groups()
    values = prometheus.api(f"label/{label}/values", **{"match[]": metric})
    assert values["status"] == "success" and APPLICATION in values["data"], values


def test_dashboard_model_variable_lists_the_served_models(prometheus, traffic):
    """The `model` variable's label_values query (application filled in) lists the served models by short name."""
    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "model")
    query = substitute(variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"])
    match = re.fullmatch(r"label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)", query)
    assert match, query
    metric, label = match.groups()
    values: list[str] = []

    def missing() -> list[str]:
        result = prometheus.api(f"label/{label}/values", **{"match[]": metric})
        assert result["status"] == "success", result
        values[:] = result["data"]
        return [f"{model} not in {values}" for model in MODELS if model not in values]

    assert not poll(missing), values
    assert all(value and "/" not in value for value in values), f"not short model names: {values}"


def test_every_catalogue_metric_and_label_is_exported(prometheus, traffic):
    """Every name in deploy/grafana/metrics.yaml exists in Ray 2.60, with every label the catalogue lists
    (for the SwiftEmbed application where the metric carries one)."""
    catalogue = yaml.safe_load(CATALOGUE.read_text())["metrics"]
    queries: dict[str, str] = {}
    for key, entry in catalogue.items():
        histogram = entry["type"] == "histogram"
        series = [entry["name"] + s for s in ("_bucket", "_count", "_sum")] if histogram else [entry["name"]]
        app = f'application="{APPLICATION}"' if "application" in entry["labels"] else ""
        for name in series:
            queries[f"{key}: {name}"] = f"count({name}{{{app}}})"
        for label in entry["labels"]:
            matchers = ", ".join(m for m in (app, f'{label}!=""') if m)
            queries[f"{key}: {series[0]} label {label}"] = f"count({series[0]}{{{matchers}}})"

    def missing() -> list[str]:
        out = []
        at = traffic.evaluation_time()
        for what, expr in queries.items():
            result = prometheus.query(expr, at)
            assert result["status"] == "success", (what, expr, result)
            if not result["data"]["result"]:
                out.append(f"{what}  ({expr})")
        return out

    problems = poll(missing)
    assert not problems, "not scraped from Ray:\n" + "\n".join(problems)


def test_prometheus_scrapes_ray_and_loads_the_rules(prometheus, traffic):
    assert traffic.sent >= 250
    targets = prometheus.api("targets")["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"], targets

    def rules_not_evaluated() -> list[str]:
        groups = prometheus.api("rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if {rule["name"] for rule in rules} != set(rule_exprs()):
            return [f"loaded rules {[r['name'] for r in rules]}"]
        return [f"{r['name']}: health {r['health']} {r.get('lastError', '')}" for r in rules if r["health"] != "ok"]

    assert not poll(rules_not_evaluated, timeout=15), prometheus.log_tail()


def test_alert_expressions_are_valid_and_no_healthy_replica_is_quiet(prometheus, traffic):
    exprs = rule_exprs()
    for name, expr in exprs.items():
        result = prometheus.query(expr)
        assert result["status"] == "success", (name, result.get("error"))

    no_healthy = exprs["SwiftEmbedNoHealthyReplica"]

    def firing() -> list[str]:  # the expression, evaluated now, and the alert's state in Prometheus
        result = prometheus.query(no_healthy)["data"]["result"]
        alerts = prometheus.api("alerts")["data"]["alerts"]
        return [f"expr: {s}" for s in result] + [
            f"alert {a['labels']['alertname']} {a['state']}"
            for a in alerts
            if a["labels"]["alertname"] == "SwiftEmbedNoHealthyReplica"
        ]

    problems = poll(firing, timeout=20)
    assert not problems, problems
    # Not vacuous: for an application that is not deployed, the same expression has a result (absent()).
    other = prometheus.query(no_healthy.replace(f'application="{APPLICATION}"', 'application="not-deployed"'))
    assert other["status"] == "success" and other["data"]["result"], other


def test_the_checks_catch_wrong_names_labels_and_broken_promql(prometheus, traffic):
    """The checks above can fail: a misspelt metric or label has no data, and broken PromQL is an error."""
    at = traffic.evaluation_time()
    good = prometheus.query(f'sum(rate(ray_swiftembed_requests_total{{application="{APPLICATION}"}}[1m]))', at)
    assert good["status"] == "success" and has_finite_value(good)
    for wrong in (
        f'sum(rate(ray_swiftembed_request_total{{application="{APPLICATION}"}}[1m]))',  # name without s
        f'sum(rate(ray_swiftembed_requests{{application="{APPLICATION}"}}[1m]))',  # counter without _total
        f'sum(rate(ray_swiftembed_requests_total{{app="{APPLICATION}"}}[1m]))',  # app, not application
    ):
        result = prometheus.query(wrong, at)
        assert result["status"] == "success" and not result["data"]["result"], wrong
    broken = prometheus.query(f'sum(rate(ray_swiftembed_requests_total{{application="{APPLICATION}"}}[1m])')
    assert broken["status"] == "error"
