"""A real Prometheus (Debian package `prometheus`) for the project's checks: started with deploy/prometheus.yml's
rules and the targets given, queried over its HTTP API; and the Grafana dashboard's queries as Grafana would send
them. tests/test_prometheus_live.py (one local Ray) and loadtest/cluster_scenarios.py (every host of a cluster)
use it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "swiftembed.json"

# Grafana's variables as Grafana itself would fill them in. `$__rate_interval` is
# max($__interval + scrape interval, 4 x scrape interval) with the data source's scrape interval, 15 s unless
# configured: 1m.
APPLICATION = "swiftembed"  # the alert rules name this application; deploy/serve-cluster.yaml deploys it
GRAFANA_VARIABLES = {
    "${datasource}": "prometheus",
    "$datasource": "prometheus",
    "${application}": APPLICATION,
    "$application": APPLICATION,
    "${model}": ".*",  # the model variable's All value
    "$model": ".*",
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
}


def binary() -> str | None:
    return shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)


def substitute(expr: str, variables: dict[str, str] = GRAFANA_VARIABLES) -> str:
    for variable, value in variables.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable left in {expr!r}"
    return expr


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    """Every panel of the dashboard (those nested in rows included), rows left out."""
    out = []
    for panel in dashboard()["panels"]:
        out.extend(panel.get("panels", []) if panel["type"] == "row" else [panel])
    return [p for p in out if p["type"] != "row"]


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query of every panel."""
    return [(p["title"], t["refId"], t["expr"]) for p in panels() for t in p.get("targets", [])]


def prometheus_config(targets: list[str], interval: str = "1s") -> dict[str, Any]:
    """deploy/prometheus.yml with the rules file made absolute, the scrape targets and intervals replaced."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    config["rule_files"] = [str((PROMETHEUS_CONFIG.parent / path).resolve()) for path in config["rule_files"]]
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            static["targets"] = list(targets)
    return config


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, path: str, directory: Path, targets: list[str], port: int, interval: str = "1s") -> Prometheus:
        """Prometheus on 127.0.0.1:`port` scraping `targets` every `interval`; returns once it is ready."""
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(targets, interval), sort_keys=False))
        log = directory / "prometheus.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [path, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=2h", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT,
            )
        server = cls(f"http://127.0.0.1:{port}", process, log)
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {process.returncode}:\n{server.log_tail()}")
            try:
                if httpx.get(f"{server.url}/-/ready", timeout=1).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"prometheus not ready after 30 s:\n{server.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def api(self, path: str, **params: Any) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = r.json()
        assert body["status"] in {"success", "error"}, body
        return body

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]:
        """An instant query (now, or at unix time `at`): {"status", "data" or "error"}; syntax and type errors
        come back as status error."""
        return self.api("query", query=expr, **({} if at is None else {"time": f"{at:.3f}"}))

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> dict[str, Any]:
        return self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
