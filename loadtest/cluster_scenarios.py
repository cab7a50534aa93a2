"""The cluster scenarios of docs/reliability.md: SwiftEmbed on several hosts behind an ingress, under load while
hosts join, fail and update.

    .venv/bin/python -m loadtest.cluster_scenarios [--json out.json] [--pictures docs/img] [--only spread ...]
    .venv/bin/python -m loadtest.cluster_scenarios --markdown out.json      # docs/reliability.md's tables

Runs as root (network namespaces; see loadtest/cluster.py). One cluster of a head and three 1-CPU worker hosts
serves the scenarios in SCENARIOS in turn (the bulk job and the large table build clusters of their own), a real
Prometheus scraping every host; each scenario runs a bounded load through the ingress on 127.0.0.1 (a raw HTTP
client that retries a failed request, and the official openai client with one retry) and reports requests sent,
failed requests for a client that retries once, the longest pause between two answers, and its own timings.
tests/test_cluster.py runs the same functions and checks their figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loadtest.cluster import METRICS_PORT, Cluster, Host, http_get, namespaces_missing, running
from loadtest.node_fault import RetryingLoad

APP, DEPLOYMENT = "swiftembed", "SwiftEmbed"
NICE = 10  # the load shares the hosts' cores: it yields to them (clients of a real service run elsewhere)

# The project's deploy/serve-cluster.yaml with what a cluster of three 1-CPU hosts and bounded scenarios need:
# one model to start with (the rolling update adds the second), and the autoscaler's delays shortened.
FIRST = {
    "args.models": ["potion-base-8M"],
    "autoscaling_config.min_replicas": 2,
    "autoscaling_config.initial_replicas": 2,
    "autoscaling_config.max_replicas": 2,
}
AUTOSCALING = {
    **FIRST,
    "autoscaling_config.max_replicas": 3,
    "autoscaling_config.upscale_delay_s": 2,
    "autoscaling_config.downscale_delay_s": 8,
    "autoscaling_config.look_back_period_s": 3,
    "autoscaling_config.target_ongoing_requests": 2,
}
UPDATED = {**FIRST, "args.models": ["potion-base-8M", "swiftembed-potion-sts-8M"],
           "user_config": {"max_batch_size": 32, "batch_wait_timeout_s": 0.0}}


@dataclass
class Watch:
    """Samples, every 0.1 s in a thread, which hosts the ingress routes to and how many 2xx each has answered."""

    cluster: Cluster
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)  # time, up host -> 2xx so far

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.cluster.ingress_servers()))
            except OSError:
                pass
            self._stop.wait(0.1)

    def first(self, condition: Callable[[dict[str, int]], bool], after: float) -> float | None:
        """Seconds from `after` until a sample met `condition`."""
        return next((round(t - after, 2) for t, up in self.samples if t >= after and condition(up)), None)


def host_metric(host: Host, family_name: str, suffix: str = "") -> float:
    """The sum of a metric's samples on this host's own Ray metrics endpoint (0 when it has none)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = http_get(f"http://{host.address}:{METRICS_PORT}/metrics", 3.0)
    if status != 200:
        return 0.0
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == family_name for sample in family.samples if sample.name.endswith(suffix))


def host_requests(host: Host) -> float:
    """Requests this host's replicas have answered, by its own metrics."""
    return host_metric(host, "ray_swiftembed_requests", "_total")


class OpenAILoad:
    """The official openai client (max_retries=1) embedding one text at a time in a thread, until stopped."""

    def __init__(self, url: str) -> None:
        from openai import OpenAI

        self.client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=1, timeout=10)
        self.sent = self.failed = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> OpenAILoad:
        self._thread.start()
        return self

    def _run(self) -> None:
        import os

        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        while not self._stop.is_set():
            self.sent += 1
            try:
                got = self.client.embeddings.create(model="potion-base-8M", input=[f"openai request {self.sent}"])
                assert len(got.data[0].embedding) == 256
            except Exception as exc:  # noqa: BLE001 - every failure is counted and named
                self.failed += 1
                self.errors.append(type(exc).__name__)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(30)
        return {"openai_requests": self.sent, "openai_failed": self.failed, "openai_errors": sorted(set(self.errors))}


class Load:
    """The raw HTTP load (RetryingLoad: 8 connections, every request retried on a 5xx or a broken connection)
    and the openai client, together; `figures` counts against `t0`, the scenario's event."""

    def __init__(self, url: str, concurrency: int = 8, **kwargs: Any) -> None:
        self.raw = RetryingLoad(url, concurrency=concurrency, nice=NICE, **kwargs)
        self.openai = OpenAILoad(url)

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        self.raw.start()
        self.openai.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if not hasattr(self, "openai_figures"):
            self.raw.stop()
            self.openai_figures = self.openai.stop()
            self.seconds = time.monotonic() - self.started

    def figures(self, t0: float) -> dict[str, Any]:
        from swiftembed import Embedder

        self.stop()
        raw = self.raw.figures(t0, Embedder.load())
        return {
            "requests": raw["requests"] + self.openai_figures["openai_requests"],
            "failed_with_one_retry": raw["failed_with_one_retry"] + self.openai_figures["openai_failed"],
            "lost": raw["lost"],
            "wrong_vectors": raw["wrong_vectors"],
            "longest_pause_s": raw["longest_pause_between_answers_s"],
            "requests_per_s": round((raw["requests"] + self.openai_figures["openai_requests"]) / self.seconds),
            "raw_attempt_outcomes": raw["attempt_outcomes"],
            **self.openai_figures,
        }


def replicas_by_host(cluster: Cluster) -> dict[str, int]:
    """RUNNING replicas per host, in Serve's view."""
    by_ip = {h.address: h.name for h in cluster.members}
    app = cluster.serve_status()["applications"].get(APP, {})
    replicas = app.get("deployments", {}).get(DEPLOYMENT, {}).get("replicas", [])
    counts: dict[str, int] = {}
    for r in replicas:
        if r.get("state") == "RUNNING":
            name = by_ip.get(r.get("node_ip"), r.get("node_ip"))
            counts[name] = counts.get(name, 0) + 1
    return counts


def settled(cluster: Cluster, replicas: int) -> bool:
    """The app RUNNING, its deployment HEALTHY with exactly `replicas` replicas, all RUNNING (none STOPPING)."""
    app = cluster.serve_status()["applications"].get(APP, {})
    deployment = app.get("deployments", {}).get(DEPLOYMENT, {})
    states = [r.get("state") for r in deployment.get("replicas", [])]
    return (app.get("status") == "RUNNING" and deployment.get("status") == "HEALTHY"
            and states == ["RUNNING"] * replicas)


def workers_alive(cluster: Cluster) -> int:
    """Worker hosts with an ALIVE node, in the head's view."""
    alive = {ip for ip, state in cluster.nodes().values() if state == "ALIVE"}
    return sum(h.address in alive for h in cluster.workers)


def running_replicas(cluster: Cluster) -> int:
    return sum(replicas_by_host(cluster).values())


def app_status(cluster: Cluster) -> str:
    return cluster.serve_status()["applications"].get(APP, {}).get("status", "")


def settle(cluster: Cluster, replicas: int, timeout: float = 120) -> float:
    """Until Serve has settled on `replicas` replicas (`settled`), every one's host in the ingress."""
    def ready() -> bool:
        return settled(cluster, replicas) and set(replicas_by_host(cluster)) <= set(cluster.ingress_servers())

    return cluster.wait_for(ready, timeout, f"{replicas} replicas running and routed")


# The scenarios -----------------------------------------------------------------------------------------------


def spread(cluster: Cluster, url: str, seconds: float = 6.0) -> dict[str, Any]:
    """One replica on each of two worker hosts: both answer a share of the load, by their own metrics."""
    settle(cluster, 2)
    placed = replicas_by_host(cluster)
    before = {h.name: host_requests(h) for h in cluster.members}
    with Load(url) as load:
        time.sleep(seconds)
    figures = load.figures(load.started)
    answered = figures["requests"] - figures["failed_with_one_retry"]

    def counted() -> dict[str, float]:
        return {h.name: host_requests(h) - before[h.name] for h in cluster.members}

    # Ray exports a replica's counters every few seconds: wait until the hosts account for every answer.
    cluster.wait_for(lambda: sum(counted().values()) >= answered, 30, "every answer in the hosts' metrics")
    by_host = counted()
    total = sum(by_host.values())
    return {**figures, "replicas_by_host": placed,
            "share_by_host": {name: round(n / total, 3) for name, n in by_host.items() if n}}


def scale_out_and_in(cluster: Cluster, url: str, max_s: float = 45.0) -> dict[str, Any]:
    """A load step: the autoscaler adds a replica, which lands on the third host; the ingress routes to it once
    ready; after the step, back to two."""
    cluster.deploy(AUTOSCALING)  # autoscaling fields only: a lightweight update, no replica restarts
    settle(cluster, 2)
    before = set(replicas_by_host(cluster))
    spare = next(h.name for h in cluster.workers if h.name not in before)
    # 32 texts of ~200 accented words a request, raw float32 answers: the replicas, not the load generator, are the
    # limit (with one short text a request, the Python load generator is).
    with Watch(cluster) as watch, Load(url, concurrency=16, texts_per_request=32, raw=True, words=200) as load:
        t0, event_unix = load.started, time.time()
        cluster.wait_for(lambda: watch.first(lambda up: up.get(spare, 0) > 0, t0) is not None, max_s,
                         "the new host serving")
        time.sleep(2)
        load.stop()
        step_end = time.monotonic()
        cluster.wait_for(lambda: running_replicas(cluster) == 2, 60, "scale-in to 2")
        scaled_in = time.monotonic() - step_end
        figures = load.figures(t0)
    return {
        **figures,
        "new_host": spare,
        "event_unix": event_unix,
        "new_host_in_ingress_s": watch.first(lambda up: spare in up, t0),
        "first_request_on_new_host_s": watch.first(lambda up: up.get(spare, 0) > 0, t0),
        "scaled_in_after_step_s": round(scaled_in, 1),
        "replicas_by_host_after": replicas_by_host(cluster),
    }


def host_loss(cluster: Cluster, url: str, how: str = "kill", before_s: float = 3.0, down_s: float = 10.0,
              after_s: float = 6.0) -> dict[str, Any]:
    """A serving worker host lost mid-load: its processes SIGKILLed (`kill`) or its link cut (`link`). The
    ingress drops it, Serve replaces its replica on the spare host, the host comes back (Ray started again, or
    the link restored) and rejoins the cluster."""
    cluster.deploy(FIRST)
    settle(cluster, 2)
    victim = next(h for h in cluster.workers if h.name in replicas_by_host(cluster))
    old_node = next(i for i, (ip, state) in cluster.nodes().items() if ip == victim.address and state == "ALIVE")
    dead_at: list[float] = []

    def replaced() -> bool:
        nodes = cluster.nodes()
        if not dead_at and nodes[old_node][1] == "DEAD":
            dead_at.append(time.monotonic())
        return running_replicas(cluster) == 2 and victim.name not in replicas_by_host(cluster)

    restarted: list[float] = []

    def rejoined() -> bool:
        nodes = cluster.nodes()
        exited = victim.ray is not None and victim.ray.poll() is not None
        if how == "link" and not restarted and (exited or time.monotonic() - back_at > RAYLET_EXIT_S):
            # Given up while cut off, its raylet exits once it can reach the head again (and `ray start --block`
            # with it): started again, as Kubernetes restarts a pod's container whose process ended.
            restarted.append(time.monotonic())
            victim.kill()
            cluster.start_ray(victim)
        return any(ip == victim.address and state == "ALIVE" and i != old_node for i, (ip, state) in nodes.items())

    with Watch(cluster) as watch, Load(url) as load:
        time.sleep(before_s)
        t0, event_unix = time.monotonic(), time.time()
        if how == "kill":
            killed = victim.kill()
        else:
            victim.link(up=False)
            killed = 0
        replaced_s = cluster.wait_for(replaced, 90, "the replica replaced")
        if how == "link":
            # The link stays cut until the cluster has given the node up: restored just before that, the node
            # was sometimes marked dead a moment later and its host never came back (the run then had a worker
            # host fewer, and a rolling update after it no room for its new replica). So every run is alike.
            cluster.wait_for(lambda: replaced() and bool(dead_at), 120, "the cut-off node marked dead", every=0.25)
        time.sleep(max(0.0, down_s - (time.monotonic() - t0)))
        back_at = time.monotonic()
        if how == "kill":
            cluster.start_ray(victim)
        else:
            victim.link(up=True)
        rejoined_s = cluster.wait_for(rejoined, 90, "the host rejoined")
        if how == "kill" and not dead_at:
            cluster.wait_for(lambda: replaced() and bool(dead_at), 60, "the lost node marked dead", every=0.25)
        # Until Serve has finished with the lost replica (a cut-off one stays STOPPING until it can be reached).
        settled_s = cluster.wait_for(lambda: settled(cluster, 2), 180, "Serve settled")
        time.sleep(after_s)
        load.stop()
        figures = load.figures(t0)
    return {
        **figures,
        "how": "SIGKILL of every process on the host" if how == "kill" else "link cut",
        "event_unix": event_unix,
        "processes_killed": killed,
        "dropped_by_ingress_s": watch.first(lambda up: victim.name not in up, t0),
        "replica_replaced_s": round(replaced_s, 1),
        "node_marked_dead_s": round(dead_at[0] - t0, 1) if dead_at else None,
        "host_back_after_s": round(back_at - t0, 1),
        "rejoined_cluster_s": round(rejoined_s, 1),
        "ray_restarted_after_link_back_s": round(restarted[0] - back_at, 1) if restarted else None,
        "settled_after_host_back_s": round(settled_s, 1),
        "replicas_by_host_after": replicas_by_host(cluster),
        "workers_alive_after": workers_alive(cluster),
    }


def rolling_update(cluster: Cluster, url: str) -> dict[str, Any]:
    """A new config under load (a model added, batch settings changed): replicas replaced one by one. Serve
    starts a new replica before it stops an old one, so the update needs room for one more: the spare host."""
    cluster.deploy(FIRST)
    settle(cluster, 2)
    cluster.wait_for(lambda: workers_alive(cluster) == len(cluster.workers), 60, "every worker host in the cluster")
    old = set(replica_ids(cluster))
    with Load(url) as load:
        time.sleep(2)
        t0, event_unix = time.monotonic(), time.time()
        cluster.deploy(UPDATED)
        try:
            done = cluster.wait_for(lambda: app_status(cluster) == "RUNNING" and not old & set(replica_ids(cluster))
                                    and running_replicas(cluster) == 2, 180, "the update rolled out")
        except TimeoutError as error:
            raise TimeoutError(f"{error}; Serve's view: {serve_view(cluster)}; nodes: {cluster.nodes()}") from None
        time.sleep(2)
        load.stop()
        figures = load.figures(t0)
    status, body = http_post_json(url + "/embed", {"texts": ["a dog runs"], "model": "swiftembed-potion-sts-8M"})
    return {**figures, "update_s": round(done, 1), "new_model_status": status, "event_unix": event_unix,
            "new_model_answered": status == 200 and len(body.get("embeddings", [[]])[0]) == 256}


def handles_across_hosts(cluster: Cluster, url: str, calls: int = 1000) -> dict[str, Any]:
    """A caller on the head host (no replica there) calling the embed handle: answered by replicas on other
    hosts, vectors equal to the library's."""
    code = f"""
import asyncio, json, numpy as np, ray
from ray import serve
from swiftembed import Embedder
ray.init(address="auto", namespace="serve", log_to_driver=False)

async def main():
    handle = serve.get_app_handle({APP!r})
    texts = [f"handle call {{i}} across hosts" for i in range({calls})]
    got = np.stack([(await handle.embed.remote([t]))[0] for t in texts])
    pids = {{(await handle.info.remote())["pid"] for _ in range(40)}}
    want = Embedder.load().encode(texts)
    return {{"calls": len(texts), "max_abs_diff": float(np.abs(got - want).max()), "replicas_answering": len(pids),
            "caller_host": ray.util.get_node_ip_address()}}

print(json.dumps(asyncio.run(main())))
"""
    out = cluster.python_on_head(code)
    figures = json.loads(out.strip().splitlines()[-1])
    figures["replica_hosts"] = replicas_by_host(cluster)
    return figures


def head_loss(cluster: Cluster, url: str, watch_s: float = 75.0) -> dict[str, Any]:
    """The head host's processes SIGKILLed under load: how long the replicas keep answering without the GCS, and
    how long the shortest recovery takes (Ray started again on every host, the config deployed again)."""
    settle(cluster, 2)
    with Watch(cluster) as watch, Load(url) as load:
        time.sleep(2)
        t0 = time.monotonic()
        cluster.head.kill()
        deadline = t0 + watch_s
        while time.monotonic() < deadline and cluster.ingress_servers():
            time.sleep(0.5)
        load.stop()
        figures = load.figures(t0)
    last_answer = max((t for t, outcome in load.raw.attempts if outcome == "200"), default=t0)
    serving_for = round(last_answer - t0, 1)
    lost_all_at = watch.first(lambda up: not up, t0)
    # The shortest recovery: every host's Ray started again (workers' raylets exit once the GCS is gone for
    # good), then the same `serve deploy`.
    started = time.monotonic()
    for host in cluster.members:
        host.kill()
    cluster.start()
    cluster.deploy(FIRST)
    settle(cluster, 2, timeout=180)
    return {**{k: figures[k] for k in ("requests", "requests_per_s", "raw_attempt_outcomes")},
            "answered_after_head_loss_s": serving_for, "ingress_empty_after_s": lost_all_at,
            "watched_s": watch_s, "recovery_s": round(time.monotonic() - started, 1)}


def large_table(rows: int = 500_000, dim: int = 256, counts: tuple[int, ...] = (1, 2, 4)) -> dict[str, Any]:
    """A synthetic model the size of the largest public static models (500,000 x 256 float32, 512 MB) served by
    1, 2 and 4 replicas on one worker host of its own cluster (a head and that worker): each replica's own
    memory (USS) and the time to start them, showing one copy of the table per host (Ray's object store)."""
    import numpy as np
    import psutil

    from tests.conftest import wordlevel_tokenizer, write_model

    figures: dict[str, Any] = {"table_mb": round(rows * dim * 4 / 2**20), "replicas": {}}
    with Cluster(hosts=2, worker_cpus=4, object_store_mb=1536) as cluster:
        model = cluster.workdir / "large-model"  # /var/tmp: every host sees it
        started = time.monotonic()
        table = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
        write_model(model, wordlevel_tokenizer([f"w{i}" for i in range(rows - 1)]), table)
        del table
        figures["model_written_s"] = round(time.monotonic() - started, 1)
        cluster.start()
        worker = cluster.workers[0]

        def deploy(models: list[str], count: int) -> dict[str, Any]:
            t = time.monotonic()
            cluster.deploy({"args.models": models, "autoscaling_config": None, "num_replicas": count,
                            "ray_actor_options.num_cpus": 0.5, "max_surge_percent": None})
            cluster.wait_for(lambda: settled(cluster, count), 300, f"{count} replicas of {models}")
            ready_s = time.monotonic() - t
            pids = [pid for pid in worker.pids()
                    if "ServeReplica:swiftembed" in " ".join(psutil.Process(pid).cmdline())]
            memory = [psutil.Process(pid).memory_full_info() for pid in pids]
            # Ray exports the object store's use every few seconds: read it once it shows the models' tables.
            cluster.wait_for(lambda: host_metric(worker, "ray_object_store_memory") >= table_bytes(models), 30,
                             "the object store's use exported")
            return {"ready_s": round(ready_s, 1), "uss_mb_each": sorted(round(m.uss / 2**20) for m in memory),
                    "rss_mb_each": sorted(round(m.rss / 2**20) for m in memory),
                    "object_store_mb_on_host": round(host_metric(worker, "ray_object_store_memory") / 2**20)}

        def table_bytes(models: list[str]) -> int:
            return rows * dim * 4 if models[0].startswith("large=") else 29_528 * 256 * 4

        # The same replica with the bundled 29,528-row model: what a replica costs without a large table.
        figures["baseline_potion_base_8M"] = deploy(["potion-base-8M"], 1)
        for count in counts:
            figures["replicas"][count] = deploy([f"large={model}"], count)
            status, body = http_get(worker.url("/info?model=large"), 5)
            assert status == 200 and json.loads(body)["vocab_size"] == rows, body[:300]
            print(json.dumps({"large-table": {count: figures["replicas"][count]}}), flush=True)
    return figures


def bulk(lines: int = 40_000) -> dict[str, Any]:
    """`swiftembed batch` (Ray Data) run from the head host over a cluster of its own (a head and two 1-CPU
    workers, input and output on a folder every host sees): every row equal to the library's vector, and the
    embedding actors spread over both workers."""
    import numpy as np
    import pyarrow.parquet as pq

    from swiftembed import Embedder

    with Cluster(hosts=3, worker_cpus=1) as cluster:
        corpus = cluster.workdir / "corpus.txt"
        texts = [f"bulk line {i} about topic {i % 97} and the weather in city {i % 13}" for i in range(lines)]
        corpus.write_text("\n".join(texts) + "\n")
        out = cluster.workdir / "bulk-out"
        cluster.start()
        env = cluster.env(cluster.head)
        env["RAY_ADDRESS"] = f"{cluster.head.address}:6379"
        started = time.monotonic()
        done = cluster.head.run([sys.executable, "-m", "swiftembed.cli", "batch", str(corpus), str(out),
                                 "--address", "auto", "--workers", "2"], env, timeout=300)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"swiftembed batch failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        table = pq.read_table(out)
        ids = np.asarray(table.column("id").to_pylist())
        got = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))[np.argsort(ids)]
        want = Embedder.load().encode(texts)
        ips = {node: ip for node, (ip, _) in cluster.nodes().items()}
        actors = cluster.api("/api/v0/actors?limit=1000&detail=true")["data"]["result"]["result"]
        hosts = sorted({h.name for a in actors if "ShardEmbedder" in a.get("class_name", "")
                        for h in cluster.members if h.address == ips.get(a.get("node_id"))})
        return {"rows": int(len(ids)), "rows_expected": lines, "ids_exact": sorted(ids.tolist()) ==
                list(range(1, lines + 1)), "max_abs_diff": float(np.abs(got - want).max()),
                "hosts_with_embedding_actors": hosts, "job_s": round(seconds, 1)}


# Observability across hosts ---------------------------------------------------------------------------------

RAYLET_EXIT_S = 20.0  # a node given up while cut off: its raylet exits this soon after the link is back, or is ended
EXPORT_LAG_S = 15.0  # Ray exports a replica's metrics every few seconds: a window is read this much past its end


def start_prometheus(cluster: Cluster) -> Any:
    """A real Prometheus in the root namespace scraping every host's Ray metrics port every second (None where
    the Debian package is missing)."""
    from loadtest import prometheus
    from tests.servers import free_port

    path = prometheus.binary()
    if path is None:
        return None
    return prometheus.Prometheus.start(path, cluster.workdir / "prometheus",
                                       [f"{h.address}:{METRICS_PORT}" for h in cluster.members], free_port())


def panel_series(prom: Any, start: float, end: float) -> dict[str, list[tuple[str, list[float], list[float]]]]:
    """Every dashboard panel's queries over [start, end] (unix time), as Grafana would ask: panel title ->
    [(legend, times relative to start, values)] with the series that have data."""
    import math

    from loadtest.prometheus import panels, substitute

    out: dict[str, list[tuple[str, list[float], list[float]]]] = {}
    for panel in panels():
        series = out.setdefault(panel["title"], [])
        for target in panel.get("targets", []):
            body = prom.query_range(substitute(target["expr"]), start, end, step=1.0)
            for result in body.get("data", {}).get("result", []):
                points = [(float(t) - start, float(v)) for t, v in result["values"] if math.isfinite(float(v))]
                if points:
                    labels = ",".join(f"{k}={v}" for k, v in result["metric"].items() if k != "__name__")
                    series.append((f"{target['refId']} {labels}".strip(), [t for t, _ in points],
                                   [v for _, v in points]))
    return out


def without_data(series: dict[str, list[Any]]) -> list[str]:
    """The panels that showed nothing."""
    return sorted(title for title, lines in series.items() if not lines)


def render_panels(series: dict[str, list[Any]], title: str, path: str, events: dict[str, float]) -> None:
    """The dashboard's panels over a scenario as one PNG (matplotlib: the `load` extra), events marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(name, lines) for name, lines in series.items() if lines]
    if not shown:
        return
    cols = 4
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False)
    for ax, (name, lines) in zip(axes.flat, shown):
        for legend, times, values in lines[:8]:
            ax.plot(times, values, linewidth=1, label=legend[:40])
        for event, at in events.items():
            ax.axvline(at, color="red", linestyle="--", linewidth=0.8)
            ax.text(at, ax.get_ylim()[1], event, color="red", fontsize=6, va="top")
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("s", fontsize=6)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


EVENTS = {"scale-out-and-in": "load step", "host-kill": "host killed", "link-cut": "link cut",
          "rolling-update": "new config"}

SCENARIOS: dict[str, Callable[[Cluster, str], dict[str, Any]]] = {
    "spread": spread,
    "scale-out-and-in": scale_out_and_in,
    "host-kill": lambda c, u: host_loss(c, u, "kill"),
    "link-cut": lambda c, u: host_loss(c, u, "link"),
    "rolling-update": rolling_update,
    "handles-across-hosts": handles_across_hosts,
    "head-loss": head_loss,
}
OWN_CLUSTER = {"bulk-across-hosts": bulk, "large-table": large_table}  # scenarios that build a cluster of their own


def serve_view(cluster: Cluster) -> dict[str, Any]:
    """The application's and deployment's status and message, and each replica's state and host (diagnostics)."""
    app = cluster.serve_status()["applications"].get(APP, {})
    deployment = app.get("deployments", {}).get(DEPLOYMENT, {})
    return {"app": app.get("status"), "app_message": app.get("message"), "deployment": deployment.get("status"),
            "deployment_message": deployment.get("message"),
            "replicas": [(r.get("replica_id"), r.get("state"), r.get("node_ip"))
                         for r in deployment.get("replicas", [])]}


def replica_ids(cluster: Cluster) -> list[str]:
    app = cluster.serve_status()["applications"].get(APP, {})
    return [r["replica_id"] for r in app.get("deployments", {}).get(DEPLOYMENT, {}).get("replicas", [])
            if r.get("state") == "RUNNING"]


def http_post_json(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    import httpx

    r = httpx.post(url, json=body, timeout=10)
    return r.status_code, r.json()


def cluster_for_scenarios() -> Any:
    """The cluster every scenario shares: a head and three 1-CPU workers, FIRST deployed, the ingress up."""
    return running(hosts=4, overrides=FIRST, worker_cpus=1, extra_env={
        # Replicas push their load twice a second (default 10 s), so the short autoscaling delays mean something.
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
        "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    })


def render(results: dict[str, Any]) -> str:
    """The run's figures as the Markdown of docs/reliability.md ("Several hosts behind an ingress")."""
    meta = results.get("run", {})
    rows = ["| scenario | requests | failed (one retry) | longest pause | what happened |", "|---|---|---|---|---|"]
    notes = {
        "spread": lambda f: "shares by each host's own metrics: " + ", ".join(
            f"{v:.0%}" for v in f["share_by_host"].values()),
        "scale-out-and-in": lambda f: f"3rd replica on the spare host: in the ingress {f['new_host_in_ingress_s']} s "
        f"after the step began, first answer {f['first_request_on_new_host_s']} s; back to 2 replicas "
        f"{f['scaled_in_after_step_s']} s after the step",
        "host-kill": lambda f: f"{f['processes_killed']} processes SIGKILLed; out of the ingress in "
        f"{f['dropped_by_ingress_s']} s; replica replaced on the spare host in {f['replica_replaced_s']} s; node "
        f"marked dead {f['node_marked_dead_s']} s; Ray started again at {f['host_back_after_s']} s, rejoined "
        f"{f['rejoined_cluster_s']} s later",
        "link-cut": lambda f: f"out of the ingress in {f['dropped_by_ingress_s']} s; replica replaced in "
        f"{f['replica_replaced_s']} s; node marked dead {f['node_marked_dead_s']} s; link back at "
        f"{f['host_back_after_s']} s, Ray started again {f['ray_restarted_after_link_back_s']} s later, rejoined "
        f"{f['rejoined_cluster_s']} s after the link; Serve done with the cut-off replica "
        f"{f['settled_after_host_back_s']} s after that",
        "rolling-update": lambda f: f"model added + batch size changed, replicas replaced one by one in "
        f"{f['update_s']} s; the new model answers: {f['new_model_answered']}",
        "head-loss": lambda f: f"replicas answered {f['answered_after_head_loss_s']} s without the head, then "
        f"stopped (ingress empty at {f['ingress_empty_after_s']} s); recovery (Ray on every host + `serve "
        f"deploy`) {f['recovery_s']} s",
    }
    for name, note in notes.items():
        f = results.get(name)
        if not f:
            continue
        failed = f.get("failed_with_one_retry", "-")
        pause = f"{f['longest_pause_s']} s" if f.get("longest_pause_s") is not None else "-"
        rows.append(f"| {name} | {f['requests']:,} | {failed} | {pause} | {note(f)} |")
    handles = results.get("handles-across-hosts")
    if handles:
        rows.append(f"| handles-across-hosts | {handles['calls']} calls | 0 | - | caller on the head host, "
                    f"{handles['replicas_answering']} replicas on other hosts answered; max difference from the "
                    f"library {handles['max_abs_diff']} |")
    bulk_run = results.get("bulk-across-hosts")
    if bulk_run:
        rows.append(f"| bulk-across-hosts | {bulk_run['rows']:,} rows | 0 | - | `swiftembed batch` on Ray Data "
                    f"from the head host: ids exact {bulk_run['ids_exact']}, max difference from the library "
                    f"{bulk_run['max_abs_diff']}, embedding actors on {len(bulk_run['hosts_with_embedding_actors'])} "
                    f"hosts, {bulk_run['job_s']} s |")
    table = "\n".join(rows) + "\n" if len(rows) > 2 else ""
    large = results.get("large-table")
    if large:
        base = large["baseline_potion_base_8M"]
        table += (f"A large table ({large['table_mb']} MiB, 500,000 x 256 float32, synthetic), replicas on one "
                  f"host (the bundled potion-base-8M for comparison: USS {base['uss_mb_each'][0]} MB, ready in "
                  f"{base['ready_s']} s):\n\n| replicas on the host | USS each (MB) | RSS each (MB) | object store "
                  "on the host (MB) | ready after deploy (s) |\n|---|---|---|---|---|\n")
        for count, row in large["replicas"].items():
            table += (f"| {count} | {', '.join(map(str, row['uss_mb_each']))} | "
                      f"{', '.join(map(str, row['rss_mb_each']))} | {row['object_store_mb_on_host']} | "
                      f"{row['ready_s']} |\n")
    stamp = (f"Generated from `{meta.get('json', 'the run JSON')}`: run {meta.get('date', '?')} on commit "
             f"`{meta.get('commit', '?')}`; machine: {meta.get('machine', '?')}. Command: `{meta.get('command', '')}`.")
    return stamp + "\n\n" + table


def stamp(argv: list[str], json_path: str | None) -> dict[str, str]:
    """When, on what code and machine, by which command: as the benchmark tables are stamped."""
    from datetime import UTC, datetime

    from benchmarks.common import commit, machine

    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(), "machine": machine(),
            "command": " ".join(["python -m loadtest.cluster_scenarios", *argv]), "json": json_path or ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("--only", nargs="*", choices=[*SCENARIOS, *OWN_CLUSTER],
                        help="these scenarios (default: all)")
    parser.add_argument("--markdown", help="only render this run JSON as docs/reliability.md's table")
    parser.add_argument("--pictures", help="render each scenario's dashboard panels as PNG into this folder")
    args = parser.parse_args(argv)
    if args.markdown:
        with open(args.markdown) as f:
            print(render(json.load(f)))
        return 0
    why = namespaces_missing()
    if why:
        print(f"cluster_scenarios: cannot run: {why}", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"run": stamp(sys.argv[1:] if argv is None else argv, args.json)}
    started = time.monotonic()
    chosen = args.only or [*SCENARIOS, *OWN_CLUSTER]
    for name in [n for n in chosen if n in OWN_CLUSTER]:
        t = time.monotonic()
        results[name] = OWN_CLUSTER[name]()
        results[name]["scenario_s"] = round(time.monotonic() - t, 1)
    if not any(n in SCENARIOS for n in chosen):
        chosen = []
    with cluster_for_scenarios() if chosen else contextlib.nullcontext((None, "")) as (cluster, url):
        prom = start_prometheus(cluster) if cluster else None
        results["setup_s"] = round(time.monotonic() - started, 1)
        try:
            for name in [n for n in chosen if n in SCENARIOS]:
                t, begun = time.monotonic(), time.time()
                results[name] = SCENARIOS[name](cluster, url)
                results[name]["scenario_s"] = round(time.monotonic() - t, 1)
                if prom is not None and name != "head-loss":  # without the head, Ray exports nothing
                    time.sleep(EXPORT_LAG_S)
                    series = panel_series(prom, begun, time.time())
                    results[name]["panels_without_data"] = without_data(series)
                    if args.pictures:
                        render_panels(series, f"SwiftEmbed dashboard during '{name}' (4 hosts, 127.0.0.1 ingress)",
                                      f"{args.pictures}/cluster-{name}.png",
                                      {EVENTS.get(name, "event"): results[name]["event_unix"] - begun}
                                      if "event_unix" in results[name] else {})
                print(json.dumps({name: results[name]}), flush=True)
        finally:
            if prom is not None:
                prom.stop()
    text = json.dumps(results, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
