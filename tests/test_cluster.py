"""SwiftEmbed on several hosts behind an ingress (issue 29): the scenarios of loadtest/cluster_scenarios.py on a
real multi-host Ray cluster, each host a network namespace with its own address, HAProxy in front doing what a
Kubernetes Service + ingress controller do. Skipped, with one line, where namespaces cannot be made.

One cluster serves every test here, in order (the bulk job builds its own). Head loss (140 s: the cluster is gone
at the end of it) and the 512 MB table (100 s) run from `python -m loadtest.cluster_scenarios --only head-loss
large-table`, not here; their figures are in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from loadtest.cluster import Cluster, haproxy_config, namespaces_missing, serve_config
from loadtest.cluster_scenarios import (
    EXPORT_LAG_S,
    bulk,
    cluster_for_scenarios,
    handles_across_hosts,
    host_loss,
    panel_series,
    rolling_update,
    scale_out_and_in,
    spread,
    start_prometheus,
    without_data,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

WHY = namespaces_missing()
needs_namespaces = pytest.mark.skipif(WHY is not None, reason=f"no test hosts: {WHY}")


WINDOWS: dict[str, tuple[float, float]] = {}  # scenario -> its (start, end) unix time, for the panels test


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Cluster, str]]:
    with cluster_for_scenarios() as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(cluster) -> Iterator[Any]:
    """A real Prometheus scraping every host, from before the first scenario."""
    prom = start_prometheus(cluster[0])
    if prom is None and os.environ.get("CI"):
        pytest.fail("prometheus not found (bash .ci/run installs the Debian package prometheus)")
    try:
        yield prom
    finally:
        if prom is not None:
            prom.stop()


def run(name: str, scenario: Any, cluster: tuple[Cluster, str], **kwargs: Any) -> dict[str, Any]:
    started = time.time()
    figures = scenario(*cluster, **kwargs)
    WINDOWS[name] = (started, time.time())
    print(f"\n{name}: {json.dumps(figures)}")
    return figures


def no_failures(figures: dict[str, Any]) -> None:
    assert figures["failed_with_one_retry"] == 0, figures
    assert figures["lost"] == 0 and figures["wrong_vectors"] == 0, figures
    assert figures["openai_failed"] == 0, figures


def test_the_harness_deploys_the_projects_config_with_only_the_named_overrides():
    base = yaml.safe_load(open("deploy/serve-cluster.yaml"))
    changed = serve_config({"autoscaling_config.max_replicas": 3, "args.models": ["potion-base-8M"]})
    deployment = changed["applications"][0]["deployments"][0]
    assert deployment["autoscaling_config"]["max_replicas"] == 3
    assert changed["applications"][0]["args"]["models"] == ["potion-base-8M"]
    deployment["autoscaling_config"]["max_replicas"] = base["applications"][0]["deployments"][0][
        "autoscaling_config"]["max_replicas"]
    changed["applications"][0]["args"]["models"] = base["applications"][0]["args"]["models"]
    assert changed == base


def test_ingress_config_probes_kuberays_readiness_check():
    config = haproxy_config({"a": "192.0.2.1", "b": "192.0.2.2"}, bind="127.0.0.1:8000")
    assert "option httpchk GET /-/healthz" in config and "http-check expect string success" in config
    assert "inter 1s fall 2 rise 1" in config
    assert "server a 192.0.2.1:8000" in config and "server b 192.0.2.2:8000" in config


@needs_namespaces
def test_spread_every_host_answers_a_share(cluster, prometheus):
    figures = run("spread", spread, cluster)
    no_failures(figures)
    assert len(figures["replicas_by_host"]) == 2 and set(figures["replicas_by_host"].values()) == {1}
    assert set(figures["share_by_host"]) == set(figures["replicas_by_host"])
    assert all(share > 0.25 for share in figures["share_by_host"].values()), figures


@needs_namespaces
def test_handles_across_hosts(cluster):
    c, _ = cluster
    figures = run("handles across hosts", handles_across_hosts, cluster)
    assert figures["caller_host"] == c.head.address and c.head.name not in figures["replica_hosts"]
    assert figures["max_abs_diff"] <= 1e-6 and figures["replicas_answering"] == 2


@needs_namespaces
def test_scale_out_lands_on_another_host_and_back(cluster, prometheus):
    figures = run("scale out and in", scale_out_and_in, cluster)
    no_failures(figures)
    assert figures["first_request_on_new_host_s"] is not None
    assert sum(figures["replicas_by_host_after"].values()) == 2


@needs_namespaces
@pytest.mark.parametrize("how", ["kill", "link"])
def test_host_loss(cluster, prometheus, how):
    figures = run(f"host loss ({how})", host_loss, cluster, how=how)
    no_failures(figures)
    assert figures["longest_pause_s"] <= 2.0, figures
    assert figures["dropped_by_ingress_s"] is not None and figures["dropped_by_ingress_s"] <= 5.0, figures
    assert sum(figures["replicas_by_host_after"].values()) == 2  # capacity back
    assert figures["workers_alive_after"] == len(cluster[0].workers), figures  # the host back in the cluster


@needs_namespaces
def test_rolling_update_under_load(cluster, prometheus):
    figures = run("rolling update", rolling_update, cluster)
    no_failures(figures)
    assert figures["new_model_answered"], figures


@needs_namespaces
def test_bulk_job_across_hosts():
    """The Ray Data job on a cluster of its own (it needs the workers' CPUs the service holds in the other)."""
    figures = bulk(lines=20_000)
    print(f"\nbulk across hosts: {json.dumps(figures)}")
    assert figures["rows"] == 20_000 and figures["ids_exact"] and figures["max_abs_diff"] <= 1e-6
    assert len(figures["hosts_with_embedding_actors"]) == 2, figures


@needs_namespaces
def test_every_dashboard_panel_shows_each_scenario(cluster, prometheus):
    """Every panel of deploy/grafana/swiftembed.json, with its own PromQL, has data over each scenario's window
    in a Prometheus scraping every host."""
    if prometheus is None:
        pytest.skip("prometheus not found (bash .ci/run installs the Debian package prometheus)")
    assert WINDOWS, "no scenario ran before this test"
    time.sleep(max(0.0, max(end for _, end in WINDOWS.values()) + EXPORT_LAG_S - time.time()))
    empty = {name: without_data(panel_series(prometheus, start, end + EXPORT_LAG_S))
             for name, (start, end) in WINDOWS.items()}
    assert not any(empty.values()), empty
