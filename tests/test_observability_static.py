"""Static checks of the observability files, without Ray or Prometheus running.

The metric catalogue (deploy/grafana/metrics.yaml), the generated Grafana dashboard, the alert rules and
their unit tests, deploy/prometheus.yml, the generated PrometheusRule and docs/operations.md must agree.
promtool (Debian package `prometheus`, installed by .ci/run) checks the config, the rules and every
dashboard expression. Whether the metric names exist in a real Ray is for a live test.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from tests.servers import require_tool

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CATALOGUE = DEPLOY / "grafana" / "metrics.yaml"
DASHBOARD = DEPLOY / "grafana" / "swiftembed.json"
RULES = DEPLOY / "alerts" / "rules.yaml"
RULES_TEST = DEPLOY / "alerts" / "rules_test.yaml"
PROMETHEUS = DEPLOY / "prometheus.yml"
PROMETHEUS_RULE = ROOT / "k8s" / "prometheus-rule.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"

ALERTS = {"SwiftEmbedHighP99Latency", "SwiftEmbedHighErrorRate", "SwiftEmbedNoHealthyReplica"}
# Grafana variables and what to put in their place so that promtool can parse an expression.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$application": "swiftembed",
    "$model": ".*",  # the variable's All value
}
MODEL_FILTER = 'model=~"$model"'
SELECTOR = re.compile(r"\b(ray_[A-Za-z0-9_]+)(\{[^}]*\})?")
METRIC_NAME = re.compile(r"\bray_[A-Za-z0-9_]+")


def load_module(path: Path) -> ModuleType:
    """Import a script that is not part of a package."""
    name = f"_swiftembed_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def catalogue() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(CATALOGUE.read_text())["metrics"]


def series_names(entry: dict[str, Any]) -> set[str]:
    """The series a catalogue entry stands for (a histogram has three)."""
    if entry["type"] == "histogram":
        return {entry["name"] + suffix for suffix in ("_bucket", "_count", "_sum")}
    return {entry["name"]}


def known_series() -> dict[str, str]:
    """Every series name in the catalogue -> its catalogue key."""
    return {series: key for key, entry in catalogue().items() for series in series_names(entry)}


def unknown_metrics(text: str) -> set[str]:
    """`ray_*` names in a PromQL expression (or any text) that the catalogue does not have."""
    return set(METRIC_NAME.findall(text)) - set(known_series())


def used_keys(text: str) -> set[str]:
    names = known_series()
    return {names[name] for name in METRIC_NAME.findall(text) if name in names}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def model_labelled_series() -> set[str]:
    """Series of the catalogue metrics that carry a `model` label."""
    return {series for entry in catalogue().values() if "model" in entry["labels"] for series in series_names(entry)}


def unfiltered_by_model(expr: str) -> set[str]:
    """Model-labelled metrics that `expr` selects without the dashboard's `model=~"$model"` matcher."""
    labelled = model_labelled_series()
    return {name for name, matchers in SELECTOR.findall(expr) if name in labelled and MODEL_FILTER not in matchers}


def dashboard_panels() -> list[dict[str, Any]]:
    """All panels that show data (rows left out, panels nested in collapsed rows included)."""
    out: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title + refId, expr) for every query of the dashboard."""
    return [(f"{p['title']} {t.get('refId')}", t.get("expr", "")) for p in dashboard_panels() for t in p["targets"]]


def template_queries() -> list[str]:
    out = []
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            out.append(query["query"] if isinstance(query, dict) else query)
    return out


def rule_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(rule.get("alert") or rule.get("record"), rule["expr"]) for group in groups for rule in group["rules"]]


def promtool_parses(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run `promtool check rules` on recording rules made of `exprs` (Grafana variables replaced)."""
    rules = []
    for i, expr in enumerate(exprs):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"swiftembed:dashboard:expr{i}", "expr": expr})
    path = tmp_path / "dashboard-exprs.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return subprocess.run([require_tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True)


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


# --- the metric catalogue --------------------------------------------------------------------------------


def test_catalogue_entries_are_well_formed():
    entries = catalogue()
    assert len(entries) >= 10
    names = [entry["name"] for entry in entries.values()]
    assert len(names) == len(set(names)), "a metric name appears twice"
    for key, entry in entries.items():
        assert set(entry) >= {"name", "type", "labels", "help", "confirmed"}, key
        assert entry["type"] in {"counter", "gauge", "histogram"}, key
        assert entry["confirmed"] in {"source", "contract"}, key
        assert entry["name"].startswith("ray_"), f"{key}: Ray exports every metric with the ray_ prefix"
        assert entry["help"].strip(), key
        assert isinstance(entry["labels"], list), key
        if entry["type"] == "counter":
            assert entry["name"].endswith("_total"), f"{key}: Ray exports counters with _total"
        else:
            assert not entry["name"].endswith(("_total", "_bucket", "_count", "_sum")), key


def test_catalogue_has_the_contracted_swiftembed_metrics():
    names = {entry["name"] for entry in catalogue().values()}
    assert {
        "ray_swiftembed_requests_total",
        "ray_swiftembed_request_latency_ms",
        "ray_swiftembed_texts_total",
        "ray_swiftembed_tokens_total",
        "ray_swiftembed_batch_size",
        "ray_swiftembed_kernel_time_ms",
        "ray_serve_num_http_requests_total",
        "ray_serve_http_request_latency_ms",
        "ray_serve_deployment_queued_queries",
        "ray_serve_replica_processing_queries",
        "ray_serve_deployment_replica_healthy",
        "ray_serve_num_deployment_http_error_requests_total",
        "ray_object_store_memory",
    } <= names


def test_catalogue_agrees_with_the_metric_table():
    """SwiftEmbed's metrics are declared once (swiftembed/service/metrics.py); the catalogue the dashboard and
    alerts are built from names each as Ray exports it, with the same type and labels (plus Serve's own)."""
    from swiftembed.service.metrics import METRICS

    entries = {entry["name"]: entry for entry in catalogue().values() if entry["name"].startswith("ray_swiftembed_")}
    exported = {f"ray_{m.name}{'_total' if m.kind == 'counter' else ''}": m for m in METRICS}
    assert set(entries) == set(exported)
    for name, metric in exported.items():
        assert entries[name]["type"] == metric.kind, name
        assert entries[name]["labels"] == ["application", "deployment", "replica", *metric.labels], name


def test_name_check_catches_an_unknown_metric():
    assert unknown_metrics('sum(rate(ray_swiftembed_requests_total{route="/embed"}[1m]))') == set()
    assert unknown_metrics("rate(ray_swiftembed_request_total[1m])") == {"ray_swiftembed_request_total"}
    assert unknown_metrics("ray_serve_http_request_latency_ms_bucket") == set()
    assert unknown_metrics("ray_serve_num_http_requests_total_bucket") == {"ray_serve_num_http_requests_total_bucket"}


# --- the dashboard ---------------------------------------------------------------------------------------


def test_dashboard_is_generated_from_the_catalogue():
    builder = load_module(DEPLOY / "grafana" / "dashboard.py")
    assert DASHBOARD.read_text() == builder.render(), "run: python deploy/grafana/dashboard.py"


def test_dashboard_check_mode_detects_a_hand_edit(tmp_path, monkeypatch):
    builder = load_module(DEPLOY / "grafana" / "dashboard.py")
    edited = tmp_path / "swiftembed.json"
    edited.write_text(builder.render().replace("ray_swiftembed_texts_total", "ray_swiftembed_text_total"))
    monkeypatch.setattr(builder, "OUTPUT", edited)
    assert builder.main(["--check"]) == 1
    assert builder.main([]) == 0
    assert builder.main(["--check"]) == 0
    assert unknown_metrics(builder.render()) == set()


def test_dashboard_is_valid_grafana_json():
    board = dashboard()
    assert board["title"] == "SwiftEmbed"
    assert board["uid"] == "swiftembed"
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert len(DASHBOARD.read_bytes()) < 256 * 1024, "kubectl apply cannot annotate a ConfigMap this large"


def test_dashboard_panels_are_laid_out_and_use_the_datasource_variable():
    ids: set[int] = set()
    occupied: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        assert panel["id"] not in ids, f"duplicate panel id {panel['id']}"
        ids.add(panel["id"])
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["title"].strip() and panel.get("description", "").strip(), panel["id"]


def test_every_dashboard_panel_has_promql():
    panels = dashboard_panels()
    assert len(panels) >= 15
    for panel in panels:
        targets = panel.get("targets") or []
        assert targets, f"panel {panel['title']!r} has no query"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in targets:
            assert target["expr"].strip(), f"panel {panel['title']!r} has an empty expr"
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert METRIC_NAME.search(target["expr"]), f"{panel['title']!r}: no metric in {target['expr']!r}"


def test_dashboard_uses_only_catalogue_metrics():
    for where, expr in dashboard_exprs() + [("templating", q) for q in template_queries()]:
        assert not unknown_metrics(expr), f"{where}: {sorted(unknown_metrics(expr))} not in {CATALOGUE.name}"


def test_dashboard_shows_every_catalogue_metric():
    shown = set().union(*(used_keys(expr) for _, expr in dashboard_exprs()))
    assert shown == set(catalogue()), f"not on the dashboard: {sorted(set(catalogue()) - shown)}"


def test_dashboard_latency_panels_show_p50_p95_p99_of_both_histograms():
    exprs = [expr for _, expr in dashboard_exprs()]
    for histogram in ("ray_serve_http_request_latency_ms_bucket", "ray_swiftembed_request_latency_ms_bucket"):
        for q in ("0.5", "0.95", "0.99"):
            assert any(f"histogram_quantile({q}," in e and histogram in e for e in exprs), (histogram, q)
    heatmaps = [p for p in dashboard_panels() if p["type"] == "heatmap"]
    assert any("ray_swiftembed_batch_size_bucket" in t["expr"] for p in heatmaps for t in p["targets"])


def test_dashboard_model_variable_filters_every_panel_over_model_labelled_metrics():
    swiftembed = {series for series in known_series() if series.startswith("ray_swiftembed_")}
    assert model_labelled_series() == swiftembed, "every SwiftEmbed metric, and only those, has the model label"
    variables = dashboard()["templating"]["list"]
    names = [v["name"] for v in variables]
    assert "model" in names and names.index("model") == names.index("application") + 1, names
    model = variables[names.index("model")]
    assert model["type"] == "query" and model["multi"] and model["includeAll"], model
    assert model["current"]["value"] == ["$__all"] and model["allValue"] == ".*", model
    query = model["query"]["query"]
    requests = r'ray_swiftembed_requests_total(\{application="\$application"\})?'
    assert re.fullmatch(rf"label_values\({requests}, model\)", query), query
    for where, expr in dashboard_exprs():
        assert not unfiltered_by_model(expr), f"{where}: {sorted(unfiltered_by_model(expr))} not filtered by $model"
    exprs = [expr for _, expr in dashboard_exprs()]
    assert any("sum by (model) (rate(ray_swiftembed_requests_total{" in e for e in exprs), "no request rate by model"
    assert any(
        e.startswith("histogram_quantile(0.99, sum by (model, le)") and "ray_swiftembed_request_latency_ms_bucket" in e
        for e in exprs
    ), "no p99 latency by model"
    # The check is not vacuous: a selector without the matcher, or with another one, is caught.
    assert unfiltered_by_model('sum(rate(ray_swiftembed_texts_total{application="$application"}[1m]))')
    assert unfiltered_by_model('sum(rate(ray_swiftembed_kernel_time_ms_bucket{model="x"}[1m]))')
    assert not unfiltered_by_model('sum(rate(ray_serve_num_http_requests_total{application="$application"}[1m]))')


def test_dashboard_exprs_parse(tmp_path):
    exprs = [expr for _, expr in dashboard_exprs()]
    result = promtool_parses(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_expr_parse_check_rejects_broken_promql(tmp_path):
    result = promtool_parses(['sum(rate(ray_swiftembed_requests_total{application="$application"}[5m])'], tmp_path)
    assert result.returncode != 0


# --- alert rules ------------------------------------------------------------------------------------------


def test_alert_rules_are_the_three_expected():
    names = {name for name, _ in rule_exprs()}
    assert names == ALERTS
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (rule for group in groups for rule in group["rules"]):
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule.get("for"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


def test_alert_rules_use_only_catalogue_metrics():
    for name, expr in rule_exprs():
        assert not unknown_metrics(expr), f"{name}: {sorted(unknown_metrics(expr))} not in {CATALOGUE.name}"
    assert not unknown_metrics(RULES_TEST.read_text()), "rules_test.yaml feeds series the catalogue lacks"


def test_promtool_check_rules():
    result = subprocess.run([require_tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_alert_unit_tests():
    result = subprocess.run(
        [require_tool("promtool"), "test", "rules", str(RULES_TEST)], capture_output=True, text=True, cwd=RULES.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_rule_is_generated_from_the_rules():
    generator = load_module(DEPLOY / "alerts" / "generate.py")
    assert PROMETHEUS_RULE.read_text() == generator.render(), "run: python deploy/alerts/generate.py"
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["name"]
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_generator_check_mode_detects_a_stale_file(tmp_path, monkeypatch):
    generator = load_module(DEPLOY / "alerts" / "generate.py")
    stale = tmp_path / "prometheus-rule.yaml"
    stale.write_text(generator.render().replace("> 0.05", "> 0.5"))
    monkeypatch.setattr(generator, "OUTPUT", stale)
    assert generator.main(["--check"]) == 1
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0


# --- Prometheus config ------------------------------------------------------------------------------------


def test_prometheus_config_scrapes_ray_and_loads_the_rules():
    config = yaml.safe_load(PROMETHEUS.read_text())
    targets = [t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert "127.0.0.1:8080" in targets
    assert [(PROMETHEUS.parent / path).resolve() for path in config["rule_files"]] == [RULES.resolve()]


def test_promtool_check_config():
    result = subprocess.run(
        [require_tool("promtool"), "check", "config", str(PROMETHEUS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- docs -------------------------------------------------------------------------------------------------


def test_operations_doc_documents_every_metric_and_alert():
    text = OPERATIONS.read_text()
    for entry in catalogue().values():
        assert f"`{entry['name']}`" in text, f"{entry['name']} missing from the metrics reference"
    anchors = {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (rule for group in groups for rule in group["rules"]):
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor in anchors, f"runbook anchor #{anchor} has no heading in docs/operations.md"
