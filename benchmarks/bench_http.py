"""Standalone HTTP server: our routes against a no-op route on the same server, in one run.

    .venv/bin/python benchmarks/bench_http.py [--duration 8] [--rounds 3]

Starts `uvicorn benchmarks.noop_app:app` on 127.0.0.1 (one process), drives it with wrk (Debian package), and
prints the median over interleaved rounds of requests/s, p50 and p99 for: one text on /embed at
concurrency 1 and 64, the no-op route with the same body, and 100-text batches as JSON and as raw float32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import benchmark_texts, machine, run_wrk, summarize  # noqa: E402
from tests.servers import free_port, wait_healthy  # noqa: E402


def start_server(port: int, noop_texts: int) -> subprocess.Popen:
    env = {**os.environ, "NOOP_TEXTS": str(noop_texts), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "benchmarks.noop_app:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        env=env, cwd=ROOT,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    texts, source = benchmark_texts(100)
    single = json.dumps({"texts": ["A man with a hard hat is dancing."]}).encode()
    batch = json.dumps({"texts": texts}).encode()
    octet = {"Accept": "application/octet-stream"}
    groups = {
        # noop_texts: the size of the no-op route's prepared answer for these cases
        1: {
            "single /embed c1": ("/embed", single, 1, {}),
            "single no-op c1": ("/noop", single, 1, {}),
            "single /embed c64": ("/embed", single, 64, {}),
            "single no-op c64": ("/noop", single, 64, {}),
        },
        100: {
            "batch-100 /embed JSON c1": ("/embed", batch, 1, {}),
            "batch-100 no-op JSON c1": ("/noop", batch, 1, {}),
            "batch-100 /embed binary c1": ("/embed", batch, 1, octet),
            "batch-100 no-op binary c1": ("/noop", batch, 1, octet),
            "batch-100 /embed JSON c8": ("/embed", batch, 8, {}),
            "batch-100 /embed binary c8": ("/embed", batch, 8, octet),
        },
    }
    results: dict[str, dict[str, float]] = {}
    for noop_texts, cases in groups.items():
        port = free_port()
        server = start_server(port, noop_texts)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, process=server)
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
            for name, (path, body, conns, headers) in cases.items():  # warm-up
                run_wrk(url + path, body, connections=conns, duration_s=1, threads=2, headers=headers)
            for _ in range(args.rounds):
                for name, (path, body, conns, headers) in cases.items():
                    runs[name].append(
                        run_wrk(url + path, body, connections=conns, duration_s=args.duration, threads=2 if conns > 1 else 1,
                                headers=headers)
                    )
            results.update({name: summarize(r) for name, r in runs.items()})
        finally:
            server.terminate()
            server.wait(timeout=30)

    print(f"machine: {machine()}; texts: {source}; wrk {args.duration}s x {args.rounds} rounds, medians")
    print(f"{'case':30s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'non-2xx':>8s}")
    for name, r in results.items():
        print(f"{name:30s} {r['rps']:9.0f} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['non_2xx']:8.0f}")
    print()
    for c in ("c1", "c64"):
        ratio = results[f"single /embed {c}"]["rps"] / results[f"single no-op {c}"]["rps"]
        print(f"single-text /embed vs no-op throughput at {c}: {100 * ratio:.1f}%")
    json_rps, bin_rps = results["batch-100 /embed JSON c1"]["rps"], results["batch-100 /embed binary c1"]["rps"]
    print(f"batch-100 binary vs JSON throughput at c1: {bin_rps / json_rps:.2f}x "
          f"({100 * bin_rps:.0f} vs {100 * json_rps:.0f} texts/s)")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
