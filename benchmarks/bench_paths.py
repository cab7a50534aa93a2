"""Every serving path x request shape, each next to its baseline from the same run; JSON for docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_paths.py [--paths library fastapi standalone serve-haproxy serve-proxy handle
        transformer] [--shapes single batch-100 jsonl-1000 binary-100] [--duration 6] [--rounds 3]
        [--json benchmarks/results/paths.json]

Paths and their baselines:
- `library`: Embedder.encode in-process, beside model2vec's StaticModel.encode on the same texts; `ours+wire` adds
  parsing the request body and writing the answer, i.e. all that our route adds to a no-op route.
- `fastapi`: the ordinary alternative, benchmarks/fastapi_app.py (FastAPI + pydantic + model2vec, one uvicorn);
  every HTTP path's figure is also given as a multiple of it.
- `standalone`: `swiftembed serve --standalone`'s app (one uvicorn), beside a no-op handler at the same front
  door (benchmarks/noop_app.py).
- `serve-replica` (what `swiftembed serve` starts: each replica answers HTTP itself), `serve-haproxy` (Ray's HAProxy
  ingress) and `serve-proxy` (Ray's default proxy): SwiftEmbed on Ray Serve beside a no-op deployment of the same
  options in the same Serve (benchmarks/serve_driver.py).
- `serve-replica-x2`, `serve-haproxy-x2`: the same with two replicas of ours (and one no-op replica), on the same
  2 cores.
- `handle`: `await handle.embed.remote(texts)` from another deployment, beside a no-op handle method.
- `transformer` (optional, needs the `eval` extra): the standalone app with all-MiniLM-L6-v2 as its backend.
HTTP load is wrk (Debian) on 127.0.0.1 only, at concurrency 1 and 64 for single texts and 1 and 8 for the larger
shapes; rounds interleave our route and its no-op, and medians are reported, with the median of per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import commit, machine, run_wrk, summarize  # noqa: E402
from benchmarks.shapes import SHAPES, Shape  # noqa: E402
from tests.servers import free_port, wait_healthy  # noqa: E402

CONCURRENCY = {"single": (1, 64), "batch-100": (1, 8), "jsonl-1000": (1, 8), "binary-100": (1, 8)}
HTTP_PATHS = ("fastapi", "standalone", "serve-replica", "serve-haproxy", "serve-proxy")
DEFAULT_PATHS = ("library", *HTTP_PATHS, "handle")
# One-process servers run on CPU 0 and wrk on CPU 1 (with 2+ CPUs): the scheduler cannot stack them on one core,
# which made back-to-back runs of the same route differ by up to 20% on this 2-core VM.
PIN = os.cpu_count() and os.cpu_count() >= 2 and shutil.which("taskset")
SERVER_CPUS, CLIENT_CPUS = "0", "1"
APPS = {"standalone": "benchmarks.noop_app:app", "fastapi": "benchmarks.fastapi_app:app",
        "transformer": "benchmarks.transformer_app:app"}
FASTAPI_SHAPES = ("single", "batch-100")  # its one route takes {"texts": [...]} and answers JSON


def start_path(path: str, port: int) -> tuple[subprocess.Popen, str]:
    """The server for `path` on `port`, and the URL of its no-op route."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    noop_url = f"http://127.0.0.1:{port}/noop"
    if path in APPS:
        process = subprocess.Popen(
            [*(["taskset", "-c", SERVER_CPUS] if PIN else []), sys.executable, "-m", "uvicorn", APPS[path],
             "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning", "--no-access-log"], env={**env, "HF_HUB_OFFLINE": "1"}, cwd=ROOT)
        wait_healthy(f"http://127.0.0.1:{port}", timeout=180, process=process)
        return process, noop_url
    ingress = "haproxy" if path == "handle" else path.removeprefix("serve-").removesuffix("-x2")
    replicas = "2" if path.endswith("-x2") else "1"
    process = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "serve_driver.py"), str(port), ingress,
                                replicas, str(free_port())],
                               stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("READY"):
            noop_url = line.split()[1]
            break
    else:
        raise RuntimeError(f"{path}: driver exited with {process.wait()}")
    deadline = time.monotonic() + 60
    single = SHAPES["single"]
    while time.monotonic() < deadline:  # the ingress may lag serve.run by a moment
        try:
            if all(httpx.post(url, content=single.body, headers=single.headers, timeout=2).status_code == 200
                   for url in (f"http://127.0.0.1:{port}/embed", noop_url)):
                return process, noop_url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{path}: routes not answering")


def bench_http(path: str, shapes: list[Shape], duration: int, rounds: int) -> dict[str, dict[str, float]]:
    port = free_port()
    server, noop_url = start_path(path, port)
    cpus = CLIENT_CPUS if PIN and path in APPS else None
    url = f"http://127.0.0.1:{port}"
    try:
        cases = {}
        for shape in shapes:
            if path == "fastapi" and shape.name not in FASTAPI_SHAPES:
                continue
            # The transformer is ~1000x slower: concurrency would only queue requests past wrk's window.
            for c in (1,) if path == "transformer" else CONCURRENCY[shape.name]:
                cases[f"{path} | {shape.name} | c{c} | ours"] = (url + shape.path, shape, c, shape.headers)
                if path != "fastapi":  # the baseline itself
                    cases[f"{path} | {shape.name} | c{c} | no-op"] = (noop_url, shape, c,
                                                                      {**shape.headers, "X-Shape": shape.name})
        for target, shape, c, headers in cases.values():  # warm-up
            run_wrk(target, shape.body, connections=c, duration_s=1, threads=min(c, 2), headers=headers, cpus=cpus)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, (target, shape, c, headers) in cases.items():
                runs[name].append(run_wrk(target, shape.body, connections=c, duration_s=duration, threads=min(c, 2),
                                          headers=headers, cpus=cpus))
        results = {name: summarize(r) for name, r in runs.items()}
        for name, result in results.items():
            result["texts_per_s"] = result["rps"] * cases[name][1].texts
        add_ratios(runs, results)
        return results
    finally:
        server.terminate()
        server.wait(timeout=120)


def add_ratios(runs: dict[str, list[dict[str, float]]], results: dict[str, dict[str, float]]) -> None:
    """Each round's ours / no-op pair ran back to back: the median of their ratios cancels slow spells."""
    for name in runs:
        base = runs.get(name.removesuffix("ours") + "no-op")
        if name.endswith("| ours") and base:
            ratios = [run["rps"] / b["rps"] for run, b in zip(runs[name], base) if b["rps"]]
            results[name].update(ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))


def bench_handle(shapes: list[Shape], duration: int, rounds: int) -> dict[str, dict[str, float]]:
    """`handle.embed.remote(texts)` from another deployment vs a no-op handle method (benchmarks/serve_driver.py)."""
    port = free_port()
    server, _ = start_path("handle", port)
    try:
        cases = {}
        for shape in shapes:
            if shape.path == "/embed" and shape.name != "binary-100":  # the handle answers arrays: one per size
                for c in CONCURRENCY[shape.name]:
                    for target in ("ours", "no-op"):
                        spec = {"target": "noop" if target == "no-op" else "ours", "texts": shape.texts,
                                "concurrency": c}
                        cases[f"handle | {shape.name} | c{c} | {target}"] = (spec, shape)

        def call(spec: dict[str, object], seconds: float) -> dict[str, float]:
            r = httpx.post(f"http://127.0.0.1:{port}/caller", json={**spec, "seconds": seconds}, timeout=seconds + 60)
            r.raise_for_status()
            return {**r.json(), "non_2xx": 0.0}

        for spec, _ in cases.values():  # warm-up
            call(spec, 1)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, (spec, _) in cases.items():
                runs[name].append(call(spec, duration))
        results = {name: summarize(r) for name, r in runs.items()}
        for name, result in results.items():
            result["texts_per_s"] = result["rps"] * cases[name][1].texts
        add_ratios(runs, results)
        return results
    finally:
        server.terminate()
        server.wait(timeout=120)


def add_fastapi_multiples(results: dict[str, dict[str, float]]) -> None:
    """Every HTTP route's req/s as a multiple of the FastAPI + model2vec server's for the same shape and load."""
    for name, result in results.items():
        path, shape, c, route = (part.strip() for part in name.split("|"))
        base = results.get(f"fastapi | {shape} | {c} | ours")
        if route == "ours" and path not in ("fastapi", "library", "handle") and base:
            result["vs_fastapi"] = result["rps"] / base["rps"]


def bench_library(shapes: list[Shape], duration: int, rounds: int) -> dict[str, dict[str, float]]:
    import orjson
    from model2vec import StaticModel

    from swiftembed import Embedder
    from swiftembed.core.model import DEFAULT_MODEL_DIR
    from swiftembed.http import wire

    ours, reference = Embedder.load(), StaticModel.from_pretrained(str(DEFAULT_MODEL_DIR))
    results = {}
    for shape in shapes:
        texts = [t for t in (json.loads(line)["text"] for line in shape.body.splitlines())] \
            if shape.name == "jsonl-1000" else json.loads(shape.body)["texts"]
        def encode_and_write(texts: list[str], shape: Shape = shape) -> bytes:  # what a route adds to a no-op
            if shape.name == "jsonl-1000":
                texts = [orjson.loads(line)["text"] for line in shape.body.splitlines()]
            else:
                texts = orjson.loads(shape.body)["texts"]
            vectors = ours.encode(texts)
            if shape.name == "binary-100":
                return wire.raw_body(vectors)
            if shape.name == "jsonl-1000":
                return wire.jsonl_lines(range(len(vectors)), vectors)
            return wire.json_bytes({"embeddings": vectors, "model": ours.model_id, "dimensions": ours.dim})

        cases = (("ours", ours.encode), ("model2vec", reference.encode), ("ours+wire", encode_and_write))
        for label, encode in cases:
            samples: list[float] = []
            for _ in range(rounds):
                end = time.perf_counter() + duration / 2
                while time.perf_counter() < end:
                    start = time.perf_counter()
                    encode(texts)
                    samples.append(time.perf_counter() - start)
            p50 = statistics.median(samples)
            results[f"library | {shape.name} | c1 | {label}"] = {
                "rps": 1 / p50, "p50_ms": p50 * 1e3, "p99_ms": statistics.quantiles(samples, n=100)[98] * 1e3,
                "non_2xx": 0.0, "texts_per_s": shape.texts / p50,
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", nargs="+", default=list(DEFAULT_PATHS))
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    shapes = [SHAPES[name] for name in args.shapes]
    code = commit()  # what is measured: the checkout as the run starts
    results: dict[str, dict[str, float]] = {}
    for path in args.paths:
        if path == "library":
            results.update(bench_library(shapes, args.duration, args.rounds))
        elif path == "handle":
            results.update(bench_handle(shapes, args.duration, args.rounds))
        else:
            results.update(bench_http(path, shapes, args.duration, args.rounds))
        print(f"done: {path}", file=sys.stderr, flush=True)

    add_fastapi_multiples(results)
    print(f"machine: {machine()}; command: {' '.join(sys.argv)}")
    print("vs base: HTTP paths give the median of per-round ratios to the no-op (min-max over rounds); the library "
          "path, the ratio of medians to model2vec")
    print(f"{'path | shape | concurrency | route':52s} {'req/s':>9s} {'texts/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} "
          f"{'non-2xx':>7s} {'vs base':>16s} {'vs FastAPI':>10s}")
    for name, r in results.items():
        if "ratio" in r:
            ratio = f"{100 * r['ratio']:.0f}% ({100 * r['ratio_min']:.0f}-{100 * r['ratio_max']:.0f})"
        else:
            base = name.rsplit("|", 1)[0] + ("| model2vec" if name.startswith("library") else "| no-op")
            base_rps = results.get(base, {}).get("rps") if base != name else None
            ratio = f"{100 * r['rps'] / base_rps:.0f}%" if base_rps else ""
        multiple = f"{r['vs_fastapi']:.1f}x" if "vs_fastapi" in r else ""
        print(f"{name:52s} {r['rps']:9.0f} {r['texts_per_s']:9.0f} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} "
              f"{r['non_2xx']:7.0f} {ratio:>16s} {multiple:>10s}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        stamp = {"machine": machine(), "commit": code, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "command": ["benchmarks/bench_paths.py", *sys.argv[1:]]}
        args.json.write_text(json.dumps({**stamp, "results": results}, indent=2))


if __name__ == "__main__":
    main()
