"""Autoscaling, exercised live: the cluster config's `autoscaling_config`, scaled to this machine (1 to 2 replicas,
short delays), under `serve run` as a user starts it, with either ingress. A load step makes Serve add a replica,
serving goes on without a failed request, and after the load Serve scales back down. The times to scale are
printed (run with -s)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from swiftembed.ray.ingress import serve_environment
from tests.servers import free_port, wait_healthy

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
REPLICA = "ServeReplica:swiftembed:SwiftEmbed"
SCALED = {  # deploy/serve-cluster.yaml's autoscaling_config, scaled to 2 CPUs and a short test
    "min_replicas": 1, "initial_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
    "upscale_delay_s": 1, "downscale_delay_s": 4, "look_back_period_s": 2,
}


def scaled_config(port: int, ingress: str) -> dict:
    config = yaml.safe_load((ROOT / "deploy" / "serve-cluster.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    args = config["applications"][0]["args"]
    if ingress == "replica":  # the replicas answer on the port themselves, as in the cluster config
        args.update(http_port=port, http_host="127.0.0.1", http_drain_s=1)
    else:
        config["proxy_location"] = "HeadOnly"
        for key in ("http_port", "http_host", "http_drain_s", "grpc_port"):  # gRPC runs beside a replica's own HTTP
            args.pop(key, None)
    (deployment,) = config["applications"][0]["deployments"]
    deployment["autoscaling_config"] = {**deployment["autoscaling_config"], **SCALED}
    deployment["ray_actor_options"] = {"num_cpus": 0.5}
    return config


def replicas(root: psutil.Process) -> int:
    count = 0
    for p in root.children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and REPLICA in " ".join(p.cmdline()):
                count += 1
        except psutil.Error:
            pass
    return count


def wait_for(condition, timeout: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.2)
    return None


class Load:
    """Closed-loop clients on /similarity in a thread until stopped; every answer but a 200 is a failure."""

    def __init__(self, url: str, clients: int) -> None:
        self.url, self.clients = url, clients
        self.statuses: Counter = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.run()), daemon=True)

    async def run(self) -> None:
        # Much work per request and a small answer: the replica, not this Python client, is the bottleneck.
        body = {"source": "a dog runs", "targets": [f"autoscaling text {i} about dogs, cats and the weather"
                                                     for i in range(1000)]}
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:

            async def worker() -> None:
                while not self.stop.is_set() and sum(self.statuses.values()) < 2_000_000:
                    try:
                        response = await client.post("/similarity", json=body)
                        self.statuses[response.status_code] += 1
                    except httpx.HTTPError as exc:
                        self.statuses[type(exc).__name__] += 1

            await asyncio.gather(*(worker() for _ in range(self.clients)))

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


@pytest.mark.parametrize("ingress", ["replica", "haproxy", "proxy"])
def test_load_step_scales_up_then_down_without_failures(tmp_path, ingress):
    port = free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(scaled_config(port, ingress)))
    env = {**os.environ, **serve_environment(ingress, port),
           "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
           # Replicas push their load twice a second (default 10 s), so the short delays above mean something.
           "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
           "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(Path(sys.executable).parent / "serve"), "run", str(config)], env=env,
                                   stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, timeout=180, process=process)
        root = psutil.Process(process.pid)
        assert wait_for(lambda: replicas(root) == 1, 60) is not None
        with Load(url, clients=16) as load:
            up_s = wait_for(lambda: replicas(root) == 2, 90)
            assert up_s is not None, f"no second replica under load:\n{log.read_text()[-3000:]}"
            time.sleep(3)  # serving goes on across the new replica's arrival
        served = dict(load.statuses)
        down_s = wait_for(lambda: replicas(root) == 1, 90)
        assert down_s is not None, f"did not scale back down:\n{log.read_text()[-3000:]}"
        assert served.get(200, 0) > 20 and set(served) == {200}, served
        print(f"\n{ingress}: scaled up in {up_s:.1f} s under load, down in {down_s:.1f} s after it; "
              f"{served.get(200, 0)} requests, none failed")
        assert httpx.post(f"{url}/embed", json={"texts": ["after"]}, timeout=30).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)  # `serve run` stops Serve and its local Ray on Ctrl-C
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
