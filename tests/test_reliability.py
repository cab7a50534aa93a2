"""Reliability and security of the HTTP service, on a real standalone server and through Ray Serve (issue 6).

- Bad input: tests/api_checks.BAD_REQUESTS (also run by test_http / test_serve) checked strictly here, with a
  correct request after every bad one, plus heavy cases (bodies over the limit, a huge text, a body that stops
  or stalls mid-way) and edge inputs that must be *accepted*.
- Overload: the standalone bound (`max_concurrency`, 503 + Retry-After) and Serve's `max_ongoing_requests` /
  `max_queued_requests` (503, Retry-After only with `backpressure_config.retry_after_s`): excess requests are
  refused fast, admitted ones keep a bounded latency, and the service answers normally once load stops.
- Soak: bounded load with the server's RSS sampled; it must stay flat.
- Security: the API key is never logged or shown, no request chooses a model or a path, limits are on by
  default, CORS is off unless configured.

Every load run is bounded in time and requests and targets 127.0.0.1 only. Figures are printed (run with -s);
docs/reliability.md records them.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from swiftembed.service.settings import Settings
from tests import api_checks
from tests.servers import free_port, wait_healthy

ATOL = 1e-6


# Servers ---------------------------------------------------------------------------------------------------------
@dataclass
class Server:
    """A running service: base URL, the process serving it (the standalone server or a Serve replica) and,
    for a standalone server, its log file."""

    url: str
    pid: int
    log: Path | None = None
    kind: str = "standalone"


@contextmanager
def launch(*args: str, env: dict[str, str] | None = None, log: Path | None = None) -> Iterator[Server]:
    """`swiftembed serve --standalone` on a free loopback port, stdout and stderr into `log`."""
    port = free_port()
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "swiftembed.cli", "serve", "--standalone", "--host", "127.0.0.1", "--port", str(port),
         *args],
        env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process=process)
        yield Server(url, process.pid, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log:
            out.close()


@contextmanager
def deployed(base: str, name: str, settings: dict | None = None, **options) -> Iterator[Server]:
    """A SwiftEmbed application on the session's Ray Serve (proxy at `base`) at /<name>; `options` go to the
    deployment, `settings` to the app's Settings."""
    from ray import serve

    from swiftembed.ray.deployment import SwiftEmbedDeployment

    options.setdefault("ray_actor_options", {"num_cpus": 0.25})
    serve.run(SwiftEmbedDeployment.options(**options).bind(settings=settings or {}), name=name,
              route_prefix=f"/{name}")
    try:
        handle = serve.get_app_handle(name)
        pid = handle.info.remote().result()["pid"]
        yield Server(f"{base}/{name}", pid, kind="serve")
    finally:
        serve.delete(name)


@pytest.fixture(scope="module")
def standalone(tmp_path_factory) -> Iterator[Server]:
    with launch(log=tmp_path_factory.mktemp("standalone") / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def serve_app(ray_serve) -> Iterator[Server]:
    with deployed(ray_serve.url, "rel") as server:
        yield server


@pytest.fixture(params=["standalone", pytest.param("serve", marks=pytest.mark.ray)])
def server(request) -> Server:
    return request.getfixturevalue("standalone" if request.param == "standalone" else "serve_app")


def assert_correct(url: str, embedder, headers: dict[str, str] | None = None) -> None:
    """The service answers, and answers right."""
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    r = httpx.post(f"{url}/embed", json={"texts": ["still fine", "a dog runs"]}, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["embeddings"], embedder.encode(["still fine", "a dog runs"]), atol=ATOL)


def assert_error(r: httpx.Response, status: int, what: str = "") -> None:
    assert r.status_code == status, (what, r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), (what, r.headers)
    error = r.json()["error"]
    if isinstance(error, dict):  # OpenAI envelope; TEI-shaped requests get a string and error_type
        assert error["message"] and error["type"], what
    else:
        assert error and r.json()["error_type"], what


# Bad input --------------------------------------------------------------------------------------------------------
def test_bad_input_table(server, embedder):
    """Every row of the shared table gets its documented 4xx and a JSON error, and the next request is served right."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for name, path, body, headers, status in api_checks.BAD_REQUESTS:
            r = http.post(path, content=body, headers={"Content-Type": "application/json", **headers})
            assert_error(r, status, name)
            ok = http.post("/embed", json={"texts": [name]})
            assert ok.status_code == 200, (name, ok.text)
            np.testing.assert_allclose(ok.json()["embeddings"][0], embedder.encode(name), atol=ATOL)
        assert_error(http.get("/embed"), 405, "GET on a POST route")
        r = http.post("/embed", content=b'{"texts": ["a"]}')  # no Content-Type at all: read as JSON
        assert r.status_code == 200
    assert_correct(server.url, embedder)


ACCEPTED = [
    # (name, path, body, texts or token id lists expected, dimensions). Bodies go out as ASCII JSON, so every
    # non-ASCII or control character travels as a \\u escape (the emoji as a surrogate pair).
    ("empty string", "/embed", {"texts": [""]}, [""], None),
    ("escaped NUL", "/embed", {"texts": ["a\u0000b"]}, ["a\u0000b"], None),
    ("surrogate pair escape", "/embed", {"texts": ["\U0001f600 smile"]}, ["\U0001f600 smile"], None),
    ("control characters", "/embed", {"texts": ["\t\x01\x1f\x7f"]}, ["\t\x01\x1f\x7f"], None),
    ("integral float dimensions", "/embed", {"texts": ["a dog"], "dimensions": 8.0}, ["a dog"], 8),
    ("unknown fields ignored", "/embed", {"texts": ["a dog"], "extra": {"x": [1]}}, ["a dog"], None),
    ("openai null options", "/v1/embeddings",
     {"input": "a dog", "encoding_format": None, "dimensions": None, "user": None, "model": None}, ["a dog"], None),
    ("openai integral float token ids", "/v1/embeddings", {"input": [2.0, 3.0], "encoding_format": "float"},
     [[2, 3]], None),
]


def test_edge_inputs_accepted(server, embedder):
    """Inputs that look odd but are valid get 200 and the right vectors."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for name, path, body, expected, dims in ACCEPTED:
            r = http.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
            assert r.status_code == 200, (name, r.text)
            got = r.json()["embeddings"] if path == "/embed" else [d["embedding"] for d in r.json()["data"]]
            if isinstance(expected[0], list):
                want = embedder.finish(embedder.pool(embedder.tokenizer.from_ids(expected)))
            else:
                want = embedder.encode(expected, dimensions=dims)
            np.testing.assert_allclose(got, want, atol=ATOL, err_msg=name)
            if name == "empty string":
                assert not np.any(got)


def _raw_post(url: str, path: str, head_extra: bytes, body: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split("/", 1)[0].split(":")
    prefix = url.removeprefix("http://").partition("/")[2]
    full = (f"/{prefix}" if prefix else "") + path
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST {full} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n".encode() + head_extra
                 + b"\r\n" + body)
    return sock


def test_bodies_over_the_limit(server, embedder):
    """16 MiB is the default JSON body limit: a declared larger body and an undeclared (chunked) one both get 413."""
    limit = Settings().max_body_bytes
    texts = ["x" * 1000] * (limit // 1000 + 1024)
    body = json.dumps({"texts": texts[:2000]}).encode() + b" " * (limit + 1024)  # valid JSON past the limit
    declared = httpx.post(f"{server.url}/embed", content=body, headers={"Content-Type": "application/json"},
                          timeout=60)
    assert_error(declared, 413, "declared")
    assert str(limit) in declared.json()["error"]["message"]

    def chunks():
        for start in range(0, len(body), 1 << 20):
            yield body[start : start + (1 << 20)]

    try:
        chunked = httpx.post(f"{server.url}/embed", content=chunks(), headers={"Content-Type": "application/json"},
                             timeout=60)
        assert_error(chunked, 413, "chunked")
    except httpx.WriteError:  # the server may answer 413 and close before the client finishes sending
        pass
    assert_correct(server.url, embedder)


def test_huge_single_text(server, embedder):
    """One 8 MB text (under the body limit): cut at max_chars, embedded, and the service is fine after."""
    text = ("lorem ipsum dolor sit amet " * 300_000)[:8_000_000]
    r = httpx.post(f"{server.url}/embed", json={"texts": [text]}, timeout=120)
    assert r.status_code == 200, r.text[:300]
    np.testing.assert_allclose(r.json()["embeddings"][0], embedder.encode(text[: Settings().max_chars]), atol=ATOL)
    assert_correct(server.url, embedder)


def test_body_that_stops_or_stalls_midway(server, embedder):
    """A client that declares 1000 bytes, sends 15 and hangs up; another that sends 15 and goes quiet: neither
    costs other clients anything, and a stalled one is answered 400 once it disconnects."""
    sock = _raw_post(server.url, "/embed", b"Content-Length: 1000\r\n", b'{"texts": ["abc')
    sock.close()
    stalled = [_raw_post(server.url, "/embed", b"Content-Length: 1000\r\n", b'{"texts": ["abc') for _ in range(8)]
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for i in range(20):
                r = http.post("/embed", json={"texts": [f"while stalled {i}"]})
                assert r.status_code == 200
    finally:
        for s in stalled:
            s.close()
    assert_correct(server.url, embedder)


STALL_SETTINGS = {"max_concurrency": 4, "body_chunk_timeout_s": 1.0, "body_timeout_s": 2.0}


@contextmanager
def strict_body_server(kind: str, ray_serve_url: str | None) -> Iterator[Server]:
    """A server with 4 slots and 1 s / 2 s body timeouts: standalone (flags through the environment) or Serve."""
    if kind == "standalone":
        env = {f"SWIFTEMBED_{k.upper()}": str(v) for k, v in STALL_SETTINGS.items()}
        with launch(env=env) as server:
            yield server
    else:
        assert ray_serve_url is not None
        with deployed(ray_serve_url, "stall", settings=STALL_SETTINGS) as server:
            yield server


def _status_of(sock: socket.socket) -> int | str:
    try:
        head = sock.recv(64)
    except OSError as exc:
        return type(exc).__name__
    return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else f"no answer {head[:20]!r}"


@pytest.mark.slow  # waits out body deadlines: outside the fast lane
@pytest.mark.parametrize("kind", ["standalone", pytest.param("serve", marks=pytest.mark.ray)])
def test_stalled_bodies_get_408_and_free_their_slots(kind, request, embedder):
    """A slow-loris: 8 clients send part of a body and go quiet, against 4 slots. The 4 admitted ones are answered
    408 once their bodies stop arriving and free their slots (without the body timeout they would hold them for as
    long as they keep their connections), so correct clients are served again within the timeout."""
    base = request.getfixturevalue("ray_serve").url if kind == "serve" else None
    with strict_body_server(kind, base) as server:
        stalled_statuses: Counter = Counter()
        answered_in: list[float] = []

        def stall() -> None:
            start = time.monotonic()
            sock = _raw_post(server.url, "/embed", b"Content-Length: 1000\r\n", b'{"texts": ["abc')
            sock.settimeout(10)
            status = _status_of(sock)
            stalled_statuses[status] += 1
            if status == 408:
                answered_in.append(time.monotonic() - start)
            sock.close()

        attackers = [threading.Thread(target=stall, daemon=True) for _ in range(8)]
        for thread in attackers:
            thread.start()
        time.sleep(0.5)
        served: Counter = Counter()
        first_served = None
        with httpx.Client(base_url=server.url, timeout=10) as http:
            start = time.monotonic()
            while time.monotonic() - start < 6:
                r = http.post("/embed", json={"texts": ["served during the attack"]})
                served[r.status_code] += 1
                if r.status_code == 200 and first_served is None:
                    first_served = time.monotonic() - start
                if r.status_code != 200:
                    time.sleep(0.05)
        for thread in attackers:
            thread.join(timeout=15)
        figures = {"stalled": dict(stalled_statuses), "correct": dict(served), "first_served_s": first_served,
                   "408_after_s": [round(min(answered_in, default=0), 2), round(max(answered_in, default=0), 2)]}
        report(f"stalled bodies {kind}", figures)
        assert stalled_statuses[408] >= 4 and set(stalled_statuses) <= {408, 503}, figures  # admitted: cut off
        assert max(answered_in) < 2 + 1.5, figures  # within the body timeout (2 s) and some slack
        assert first_served is not None and first_served < 2 + 1.5, figures  # the freed slots serve others
        assert served[200] >= 10 and set(served) <= {200, 503}, figures
        assert_correct(server.url, embedder)


# Load helpers -----------------------------------------------------------------------------------------------------
@dataclass
class Sample:
    start: float
    latency: float
    status: int | str  # an HTTP status, or the exception's class name
    retry_after: str | None = None
    body: bytes = b""
    server_ms: float = float("nan")  # X-Processing-Time-Ms: time inside the app (standalone) or replica (Serve)
    content_type: str = ""


async def _load(url: str, body: dict, *, concurrency: int, seconds: float, max_requests: int,
                path: str = "/embed", headers: dict[str, str] | None = None, timeout: float = 30.0) -> list[Sample]:
    samples: list[Sample] = []
    deadline = time.perf_counter() + seconds
    payload = json.dumps(body).encode()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def worker() -> None:
            while time.perf_counter() < deadline and len(samples) < max_requests:
                start = time.perf_counter()
                try:
                    r = await client.post(path, content=payload,
                                          headers={"Content-Type": "application/json", **(headers or {})})
                    head = b"" if r.status_code == 200 else r.content[:200]
                    samples.append(Sample(start, time.perf_counter() - start, r.status_code,
                                          r.headers.get("retry-after"), head,
                                          float(r.headers.get("x-processing-time-ms", "nan")),
                                          r.headers.get("content-type", "")))
                except httpx.HTTPError as exc:
                    samples.append(Sample(start, time.perf_counter() - start, type(exc).__name__))

        await asyncio.gather(*[worker() for _ in range(concurrency)])
    return samples


def load(url: str, body: dict, **kwargs) -> list[Sample]:
    return asyncio.run(_load(url, body, **kwargs))


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(samples: list[Sample], seconds: float) -> dict:
    ok = [s.latency for s in samples if s.status == 200]
    refused = [s.latency for s in samples if s.status in (429, 503)]
    server = [s.server_ms for s in samples if s.status == 200]
    return {
        "requests": len(samples),
        "seconds": round(seconds, 1),
        "statuses": dict(Counter(str(s.status) for s in samples)),
        "ok_ms_p50_p99_max": [round(1e3 * pct(ok, 50), 1), round(1e3 * pct(ok, 99), 1),
                              round(1e3 * max(ok, default=float("nan")), 1)],
        "refused_ms_p50_p99_max": [round(1e3 * pct(refused, 50), 1), round(1e3 * pct(refused, 99), 1),
                                   round(1e3 * max(refused, default=float("nan")), 1)],
        "ok_server_ms_p50_p99_max": [round(pct(server, 50), 1), round(pct(server, 99), 1),
                                     round(max(server, default=float("nan")), 1)],
        "retry_after": dict(Counter(str(s.retry_after) for s in samples if s.status in (429, 503))),
        "refusal": next((f"{s.content_type}: {s.body[:120].decode(errors='replace')}" for s in samples
                         if s.status in (429, 503)), None),
    }


def report(name: str, figures: dict) -> None:
    print(f"\nFIGURES {name}: {json.dumps(figures)}")


def unloaded_ms(url: str, body: dict, n: int = 20, path: str = "/embed") -> float:
    with httpx.Client(base_url=url, timeout=30) as http:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            assert http.post(path, json=body).status_code == 200
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


# 512 texts pooled per request, in a worker thread (standalone) or the replica's pool thread (Serve), so requests
# really overlap in flight; the answer is 511 scores, so the client's own JSON work stays small.
HEAVY_PATH = "/similarity"
HEAVY = {"source": "the weather today",
         "targets": [f"sentence {i} about the weather, markets and games" for i in range(511)]}


@pytest.mark.slow  # a sustained run: outside the fast lane
def test_overload_standalone_refuses_fast_and_recovers(tmp_path, embedder):
    """max_concurrency 4, 48 clients: the excess gets 503 + Retry-After at once, admitted requests stay bounded."""
    with launch(env={"SWIFTEMBED_MAX_CONCURRENCY": "4"}, log=tmp_path / "server.log") as srv:
        base = unloaded_ms(srv.url, HEAVY, path=HEAVY_PATH)
        start = time.perf_counter()
        samples = load(srv.url, HEAVY, path=HEAVY_PATH, concurrency=48, seconds=6, max_requests=20_000)
        figures = {"unloaded_ms": round(base, 1), **summarize(samples, time.perf_counter() - start)}
        report("overload standalone (max_concurrency=4, 48 clients, /similarity with 512 texts)", figures)
        statuses = Counter(s.status for s in samples)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[503] > 0 and statuses[200] > 0, statuses
        refused = [s for s in samples if s.status == 503]
        assert all(s.retry_after == "1" for s in refused)
        assert all(json.loads(s.body)["error"]["code"] == "overloaded" for s in refused[:50])
        # Refusals skip the work: faster than admitted requests. Admitted requests' time inside the app is bounded
        # by the 4 in flight, not by the 48 clients. (Client-side latency on this shared 2-core machine is mostly
        # CPU contention between the load generator, the server and whatever else runs, so it only gets a cap.)
        admitted = [s for s in samples if s.status == 200]
        assert pct([s.latency for s in refused], 50) < pct([s.latency for s in admitted], 50), figures
        assert pct([s.server_ms for s in admitted], 99) < max(500.0, 20 * base), figures
        assert max(s.latency for s in samples) < 15.0, figures
        # Recovered: every request is served again once the load stops.
        after = load(srv.url, HEAVY, path=HEAVY_PATH, concurrency=2, seconds=2, max_requests=40)
        assert {s.status for s in after} == {200}
        assert_correct(srv.url, embedder)


@pytest.mark.ray
def test_overload_serve_backpressure(ray_serve, embedder):
    """max_ongoing_requests 2 and max_queued_requests 4: Serve refuses the excess with 503.

    Ray 2.60 sends Retry-After only when `backpressure_config.retry_after_s` is set; SwiftEmbed's deployment sets
    it to 1 s, and a config can change it."""
    from ray.serve.config import BackpressureConfig

    figures = {}
    with deployed(ray_serve.url, "ovl", max_ongoing_requests=2, max_queued_requests=4) as srv:
        base = unloaded_ms(srv.url, HEAVY, path=HEAVY_PATH)
        start = time.perf_counter()
        samples = load(srv.url, HEAVY, path=HEAVY_PATH, concurrency=32, seconds=6, max_requests=20_000)
        figures["default"] = {"unloaded_ms": round(base, 1), **summarize(samples, time.perf_counter() - start)}
        statuses = Counter(s.status for s in samples)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[503] > 0 and statuses[200] > 0, statuses
        refused = [s for s in samples if s.status == 503]
        assert all(s.retry_after == "1" for s in refused)  # the deployment's own backpressure_config
        assert b"backpressure" in refused[0].body
        admitted = [s for s in samples if s.status == 200]
        # Under the HAProxy ingress the replica decides a refusal when it reads the request, after the request's
        # wait in HAProxy's queue, so refusals are no faster than admissions; they must still come quickly.
        assert pct([s.latency for s in refused], 50) < 1.0, figures
        assert pct([s.server_ms for s in admitted], 99) < max(1000.0, 20 * base), figures
        assert max(s.latency for s in samples) < 15.0, figures
        after = load(srv.url, HEAVY, path=HEAVY_PATH, concurrency=2, seconds=2, max_requests=40)
        assert {s.status for s in after} == {200}
        assert_correct(srv.url, embedder)
    with deployed(ray_serve.url, "ovl2", max_ongoing_requests=2, max_queued_requests=4,
                  backpressure_config=BackpressureConfig(retry_after_s=5)) as srv:
        samples = load(srv.url, HEAVY, path=HEAVY_PATH, concurrency=32, seconds=3, max_requests=10_000)
        figures["retry_after_s=5"] = summarize(samples, 3)
        refused = [s for s in samples if s.status == 503]
        assert refused and all(s.retry_after == "5" for s in refused), figures
    report("overload serve (max_ongoing_requests=2, max_queued_requests=4, 32 clients, /similarity, 512 texts)",
           figures)


# Soak ------------------------------------------------------------------------------------------------------------
SOAK_BODIES = [
    ("/embed", {"texts": [f"soak text {i} with some words" for i in range(16)]}),
    ("/v1/embeddings", {"input": ["soak", "openai route"], "encoding_format": "base64"}),
    ("/similarity", {"source": "a dog runs", "targets": ["a puppy runs", "tax law"]}),
    ("/tokenize", {"texts": ["soak tokenize"]}),
    ("/embed", {"texts": []}),  # a bad request now and then: 422
]


def _rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def _ingress_pid(url: str, timeout: float = 30.0) -> int:
    """The process listening on the service's port: HAProxy, or Serve's proxy actor with `--ingress proxy`. Ray
    reloads HAProxy (a new process) after a deployment changes, so: the one that has held the port for a second."""
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    deadline, last = time.monotonic() + timeout, None
    while True:
        pids = {c.pid for c in psutil.net_connections(kind="tcp") if c.status == "LISTEN" and c.laddr.port == port}
        if len(pids) == 1 and pids == last:
            return pids.pop()
        assert time.monotonic() < deadline, f"no one process settled on port {port}: {pids}"
        last = pids
        time.sleep(1.0)


SOAK_REQUESTS = int(os.environ.get("SWIFTEMBED_SOAK_REQUESTS", "8000"))  # per measured phase
LEAK_LIMIT_BYTES = 200  # per request; the leak the check must catch is 1,024


async def _soak_phase(url: str, requests: int, statuses: Counter) -> None:
    """`requests` mixed requests (some bad) from 4 clients."""
    count = iter(range(requests))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def worker() -> None:
            for i in count:
                path, body = SOAK_BODIES[i % len(SOAK_BODIES)]
                try:
                    statuses[(path, (await client.post(path, json=body)).status_code)] += 1
                except httpx.HTTPError as exc:
                    statuses[(path, type(exc).__name__)] += 1

        await asyncio.gather(*[worker() for _ in range(4)])


def measure_growth(url: str, pids: dict[str, int], requests: int = SOAK_REQUESTS, phases: int = 4) -> dict:
    """Memory growth per request of each process: after a warm-up, RSS after each of `phases` phases of `requests`
    requests. The first phase absorbs caches and allocator arenas filling up; of the later ones, the smallest
    growth is the leak rate, since a leak grows the process in every phase. A Serve replica needs this: Ray's
    metric recorder grows it for ~100,000 requests before it levels off (docs/reliability.md: 0-2.5 MiB a phase
    of 8,000 for the first fourteen phases, 0-0.4 MiB after), so one early phase alone reads anywhere from 5 to
    400 B a request."""
    statuses: Counter = Counter()
    asyncio.run(_soak_phase(url, 2000, statuses))  # warm-up
    rss = [{name: _rss_mib(pid) for name, pid in pids.items()}]
    start = time.perf_counter()
    for _ in range(phases):
        asyncio.run(_soak_phase(url, requests, statuses))
        rss.append({name: _rss_mib(pid) for name, pid in pids.items()})
    figures: dict = {"requests_per_phase": requests, "seconds": round(time.perf_counter() - start, 1),
                     "statuses": {f"{p} {s}": n for (p, s), n in sorted(statuses.items(), key=str)}}
    for name in pids:
        figures[f"{name}_rss_mib"] = [round(r[name], 2) for r in rss]
        growth = [(rss[i + 1][name] - rss[i][name]) * 2**20 / requests for i in range(1, phases)]
        figures[f"{name}_bytes_per_request"] = round(min(growth), 1)
    return figures


@pytest.mark.slow  # a sustained run: outside the fast lane
def test_the_leak_check_catches_1kb_per_request(tmp_path):
    """The check below, on an app that keeps 1 KB per request (tests/leaky_app.py): it must see it."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "tests.leaky_app:app", "--port", str(port),
                                "--log-level", "warning"], cwd=Path(__file__).resolve().parents[1])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process=process)
        figures = measure_growth(url, {"server": process.pid})
    finally:
        process.terminate()
        process.wait(timeout=15)
    report("leak check on a leaking app", figures)
    assert figures["server_bytes_per_request"] > 800, figures  # ~1 KB a request, seen
    assert figures["server_bytes_per_request"] > 4 * LEAK_LIMIT_BYTES, figures


@pytest.mark.slow  # a sustained run: outside the fast lane
def test_soak_memory_flat(server, embedder):
    """Phases of SOAK_REQUESTS mixed requests (some bad) from 4 clients: the serving processes (the standalone
    server; or Serve's replica and ingress) grow by less than LEAK_LIMIT_BYTES a request (see measure_growth)."""
    pids = {"server": server.pid} if server.kind == "standalone" else {"replica": server.pid,
                                                                       "ingress": _ingress_pid(server.url)}
    figures = measure_growth(server.url, pids)
    figures["server"] = server.kind
    report(f"soak {server.kind}", figures)
    bad = {k: n for k, n in figures["statuses"].items() if not k.endswith((" 200", " 422"))}
    assert not bad, bad
    assert figures["statuses"]["/embed 422"] > 0, figures
    for name in pids:
        assert figures[f"{name}_bytes_per_request"] < LEAK_LIMIT_BYTES, (name, figures)
    assert_correct(server.url, embedder)


# Security -------------------------------------------------------------------------------------------------------
def test_limits_on_by_default():
    s = Settings()
    assert (s.max_texts, s.max_chars, s.long_text) == (2048, 100_000, "truncate")
    assert (s.max_body_bytes, s.max_jsonl_bytes, s.max_jsonl_lines) == (16 * 2**20, 256 * 2**20, 1_000_000)
    assert s.max_concurrency == 256 and s.api_key is None and s.cors_origins == ()
    assert Settings.from_env({}) == s
    keyed = Settings(api_key="hunter2-key")
    assert "hunter2-key" not in repr(keyed) and "hunter2-key" not in json.dumps(keyed.public())
    with pytest.raises(ValueError):
        Settings(max_body_bytes=0)


def test_api_key_compared_in_constant_time():
    from swiftembed.http.frontdoor import FrontDoor

    source = inspect.getsource(FrontDoor.refuse)
    assert "hmac.compare_digest(given, self.expected)" in source
    assert "== self.expected" not in source and "given ==" not in source and "startswith" not in source
    assert hmac.compare_digest(b"Bearer a", b"Bearer a") and not hmac.compare_digest(b"Bearer a", b"Bearer ab")


def _key_attempts(key: str) -> list[dict[str, str]]:
    return [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {key[:-1]}"},  # one character short
        {"Authorization": f"Bearer {key}x"},  # one too many
        {"Authorization": f"Bearer {key[:-1]}{'0' if key[-1] != '0' else '1'}"},  # last character wrong
        {"Authorization": key},  # no scheme
        {"Authorization": f"bearer {key}"},  # scheme in other case: refused (exact match)
        {"Authorization": f"Basic {key}"},
        {"X-Api-Key": key},
    ]


def _check_key_handling(url: str, key: str, embedder) -> None:
    for headers in _key_attempts(key):
        for path in ("/embed", "/v1/embeddings", "/info", "/openapi.json", "/nope"):
            r = httpx.post(f"{url}{path}", json={"texts": ["a"], "input": "a"}, headers=headers, timeout=30) \
                if path not in ("/info", "/openapi.json") else httpx.get(f"{url}{path}", headers=headers, timeout=30)
            assert_error(r, 401, f"{path} {headers}")
            assert key not in r.text and key not in str(r.headers)
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200  # open, for probes
    right = {"Authorization": f"Bearer {key}"}
    assert_correct(url, embedder, headers=right)
    for path in ("/info", "/openapi.json"):
        r = httpx.get(f"{url}{path}", headers=right, timeout=30)
        assert r.status_code == 200 and key not in r.text
    assert httpx.get(f"{url}/info", headers=right, timeout=30).json()["limits"]["auth"] is True


def test_api_key_from_a_file_not_the_command_line(tmp_path):
    """`--api-key-file` (and SWIFTEMBED_API_KEY_FILE) keep the key out of the process list; `--api-key` still
    works but warns."""
    key_file = tmp_path / "key"
    key_file.write_text("file-key-123\n")
    with launch("--api-key-file", str(key_file)) as server:
        assert httpx.post(f"{server.url}/embed", json={"texts": ["a"]}).status_code == 401
        ok = httpx.post(f"{server.url}/embed", json={"texts": ["a"]}, headers={"Authorization": "Bearer file-key-123"})
        assert ok.status_code == 200
        assert b"file-key-123" not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
    with launch("--api-key", "flag-key-456", log=tmp_path / "flag.log") as server:
        ok = httpx.post(f"{server.url}/embed", json={"texts": ["a"]}, headers={"Authorization": "Bearer flag-key-456"})
        assert ok.status_code == 200
    assert "--api-key is visible" in (tmp_path / "flag.log").read_text()
    assert Settings.from_env({"SWIFTEMBED_API_KEY_FILE": str(key_file)}).api_key == "file-key-123"
    (tmp_path / "empty").write_text("\n")
    for bad in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(ValueError, match="API key file"):
            Settings.from_env({"SWIFTEMBED_API_KEY_FILE": str(bad)})


def test_api_key_never_logged_standalone(tmp_path, embedder):
    key = "sk-" + secrets.token_hex(24)
    log = tmp_path / "server.log"
    with launch(env={"SWIFTEMBED_API_KEY": key}, log=log) as srv:
        _check_key_handling(srv.url, key, embedder)
        # Something the server does log (an invalid HTTP request), carrying the key, to show the log is live.
        host, port = srv.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(f"GARBAGE {key} \x00\r\n\r\n".encode())
            sock.recv(1024)
        assert_correct(srv.url, embedder, headers={"Authorization": f"Bearer {key}"})
    text = log.read_text(errors="replace")
    assert "Invalid HTTP request" in text, text[-2000:]  # the log was captured
    assert key not in text
    assert key[8:24] not in text  # nor a fragment of it


@pytest.mark.ray
def test_api_key_never_logged_serve(ray_serve, embedder):
    """Through Serve: wrong and right keys, then every file of Ray's session logs searched for the key."""
    import ray

    key = "sk-" + secrets.token_hex(24)
    with deployed(ray_serve.url, "sec", settings={"api_key": key, "cors_origins": ("http://app.test",)}) as srv:
        _check_key_handling(srv.url, key, embedder)
        _check_cors_configured(srv.url, key)
        time.sleep(1.5)  # let Ray's log monitor flush the replica's and proxy's logs
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    hits = [str(p) for p in logs.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert not hits, hits


def test_request_cannot_choose_model_or_path(server, embedder, tmp_path):
    """A request chooses only among the served models, by name: a model directory, a FIFO (opening it would hang),
    system files and Hub ids are refused with 404 `model_not_found` and never opened; a long name is not echoed
    in full."""
    from tests.conftest import wordlevel_tokenizer, write_model

    tiny = write_model(tmp_path / "tiny", wordlevel_tokenizer(["a", "dog", "runs"]),
                       np.ones((4, 8), dtype=np.float32))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    candidates = [str(tiny), str(tiny / "model.safetensors"), str(fifo), "/etc/passwd", "../../../../etc/shadow",
                  "file:///etc/passwd", "sentence-transformers/all-MiniLM-L6-v2", "minishlab/potion-base-32M",
                  "~/.ssh/id_rsa", "x" * 10_000]
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for model in candidates:
            r = http.post("/v1/embeddings", json={"model": model, "input": ["a dog runs"], "encoding_format": "float"})
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", (model, r.text[:200])
            assert len(r.content) < 600, r.content[:200]
            r = http.post("/embed", json={"model": model, "model_path": model, "texts": ["a dog runs"]})
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = http.post("/embed", json={"model_path": str(tiny), "texts": ["a dog runs"]})  # unknown fields: ignored
        assert r.status_code == 200 and r.json()["model"] == embedder.model_id
        np.testing.assert_allclose(r.json()["embeddings"], embedder.encode(["a dog runs"]), atol=ATOL)
        assert http.get("/info").json()["model"] == embedder.model_id
    opened = open_files(server.pid)
    assert not any(str(tmp_path) in path for path in opened), opened


def open_files(pid: int) -> set[str]:
    """What a process has open; an fd closed between listing and reading is simply gone."""
    opened = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            opened.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return opened


def test_cors_off_by_default(server):
    origin = {"Origin": "http://app.test"}
    r = httpx.post(f"{server.url}/embed", json={"texts": ["a"]}, headers=origin, timeout=30)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    pre = httpx.options(f"{server.url}/embed", headers={**origin, "Access-Control-Request-Method": "POST"}, timeout=30)
    assert "access-control-allow-origin" not in pre.headers and pre.status_code in (404, 405)


def _check_cors_configured(url: str, key: str) -> None:
    preflight = {"Origin": "http://app.test", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    pre = httpx.options(f"{url}/embed", headers=preflight, timeout=30)  # browsers send no key on a preflight
    assert pre.status_code == 200, pre.text
    assert pre.headers["access-control-allow-origin"] == "http://app.test"
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    ok = httpx.post(f"{url}/embed", json={"texts": ["a"]}, timeout=30,
                    headers={"Origin": "http://app.test", "Authorization": f"Bearer {key}"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://app.test"
    assert "x-embedding-count" in ok.headers["access-control-expose-headers"].lower()
    denied = httpx.post(f"{url}/embed", json={"texts": ["a"]}, headers={"Origin": "http://app.test"}, timeout=30)
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "http://app.test"
    other = httpx.post(f"{url}/embed", json={"texts": ["a"]}, timeout=30,
                       headers={"Origin": "http://evil.test", "Authorization": f"Bearer {key}"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    bad_pre = httpx.options(f"{url}/embed", headers={**preflight, "Origin": "http://evil.test"}, timeout=30)
    assert bad_pre.status_code == 400 and "access-control-allow-origin" not in bad_pre.headers


def test_cors_when_configured_standalone(tmp_path):
    key = "sk-" + secrets.token_hex(16)
    with launch("--cors-origin", "http://app.test", env={"SWIFTEMBED_API_KEY": key}) as srv:
        _check_cors_configured(srv.url, key)
