"""Answer encodings for 100 texts a request, on every server side by side in one run; JSON for docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_encodings.py [--paths fastapi standalone serve-replica] [--duration 5]
        [--rounds 3] [--connections 8] [--json benchmarks/results/encodings.json]

Encodings: JSON floats and base64 (what the openai Python client asks for by default) on /v1/embeddings, int8 and
ubinary in JSON and raw little-endian float32, int8 and packed bits (`Accept: application/octet-stream`) on
/embed. Each server gets the same request bodies; the FastAPI + model2vec server (benchmarks/fastapi_app.py)
answers each encoding the way its author would write it. All servers run at once and rounds interleave every
(server, encoding) case, so a slow spell of the shared machine hits them alike; medians are reported, each as a
multiple of FastAPI answering the same encoding (median of per-round ratios), and per server each encoding's rate
against raw float32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_paths import APPS, CLIENT_CPUS, PIN, start_path  # noqa: E402
from benchmarks.common import commit, machine, run_wrk, summarize  # noqa: E402
from tests.servers import free_port  # noqa: E402

TEXTS = [f"A man with a hard hat is dancing number {i}." for i in range(100)]
JSON_TYPE = {"Content-Type": "application/json"}
# encoding -> (path, body, headers)
ENCODINGS: dict[str, tuple[str, bytes, dict[str, str]]] = {
    "float": ("/v1/embeddings", json.dumps({"input": TEXTS, "model": "potion-base-8M",
                                            "encoding_format": "float"}).encode(), JSON_TYPE),
    "base64": ("/v1/embeddings", json.dumps({"input": TEXTS, "model": "potion-base-8M",
                                             "encoding_format": "base64"}).encode(), JSON_TYPE),
    "int8": ("/embed", json.dumps({"texts": TEXTS, "precision": "int8"}).encode(), JSON_TYPE),
    "ubinary": ("/embed", json.dumps({"texts": TEXTS, "precision": "ubinary"}).encode(), JSON_TYPE),
    "raw": ("/embed", json.dumps({"texts": TEXTS}).encode(), {**JSON_TYPE, "Accept": "application/octet-stream"}),
    "raw-int8": ("/embed", json.dumps({"texts": TEXTS, "precision": "int8"}).encode(),
                 {**JSON_TYPE, "Accept": "application/octet-stream"}),
    "raw-ubinary": ("/embed", json.dumps({"texts": TEXTS, "precision": "ubinary"}).encode(),
                    {**JSON_TYPE, "Accept": "application/octet-stream"}),
}
FASTAPI_ENCODINGS = ("float", "base64", "int8", "ubinary", "raw")  # it has no raw int8 or ubinary
PATHS = ("fastapi", "standalone", "serve-replica")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--encodings", nargs="+", default=list(ENCODINGS), choices=list(ENCODINGS))
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    code = commit()
    servers = {path: start_path(path, free_port()) for path in args.paths}
    try:
        cases = {}
        answer_bytes: dict[str, int] = {}
        for path, (_, noop_url) in servers.items():
            base = noop_url.removesuffix("/noop")
            for encoding in args.encodings:
                if path == "fastapi" and encoding not in FASTAPI_ENCODINGS:
                    continue
                route, body, headers = ENCODINGS[encoding]
                answer = httpx.post(base + route, content=body, headers=headers, timeout=30)
                answer.raise_for_status()
                name = f"{path} | {encoding}"
                answer_bytes[name] = len(answer.content)
                cases[name] = (base + route, body, headers, CLIENT_CPUS if PIN and path in APPS else None)
        c = args.connections
        for url, body, headers, cpus in cases.values():  # warm-up
            run_wrk(url, body, connections=c, duration_s=1, threads=2, headers=headers, cpus=cpus)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, (url, body, headers, cpus) in cases.items():
                runs[name].append(run_wrk(url, body, connections=c, duration_s=args.duration, threads=2,
                                          headers=headers, cpus=cpus))
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=120)

    results: dict[str, dict[str, float]] = {}
    for name, rounds in runs.items():
        path, encoding = (part.strip() for part in name.split("|"))
        result = {**summarize(rounds), "bytes_per_answer": answer_bytes[name],
                  "bytes_per_vector": round(answer_bytes[name] / len(TEXTS))}
        for key, base in (("vs_fastapi", f"fastapi | {encoding}"), ("vs_raw", f"{path} | raw")):
            if base in runs and base != name:
                ratios = [r["rps"] / b["rps"] for r, b in zip(rounds, runs[base]) if b["rps"]]
                if not ratios:
                    raise RuntimeError(f"{base}: no requests answered ({runs[base]})")
                result[key] = statistics.median(ratios)
        results[name] = result

    print(f"machine: {machine()}; commit {code}; command: {' '.join(sys.argv)}")
    print(f"100 texts a request, {c} connections; medians of {args.rounds} rounds")
    print(f"{'path | encoding':28s} {'req/s':>8s} {'p50 ms':>8s} {'bytes/vector':>12s} {'vs FastAPI':>10s} "
          f"{'vs raw':>7s}")
    for name, r in results.items():
        multiple = f"{r['vs_fastapi']:.1f}x" if "vs_fastapi" in r else ""
        to_raw = f"{100 * r['vs_raw']:.0f}%" if "vs_raw" in r else ""
        print(f"{name:28s} {r['rps']:8.0f} {r['p50_ms']:8.3f} {r['bytes_per_vector']:12d} {multiple:>10s} "
              f"{to_raw:>7s}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        stamp = {"machine": machine(), "commit": code, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "command": ["benchmarks/bench_encodings.py", *sys.argv[1:]], "connections": c, "texts": len(TEXTS)}
        args.json.write_text(json.dumps({**stamp, "results": results}, indent=2))


if __name__ == "__main__":
    main()
