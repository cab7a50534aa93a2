"""Ray Serve: single-text /embed against a no-op deployment with the same Serve config, per ingress profile.

    .venv/bin/python benchmarks/bench_serve.py [--duration 8] [--rounds 3] [--profiles default throughput]

For each profile (`default`: Serve's HTTP proxy; `throughput`: RAY_SERVE_THROUGHPUT_OPTIMIZED=1 with HAProxy
ingress) a fresh local Ray runs benchmarks/serve_driver.py; wrk (Debian) drives 127.0.0.1 at concurrency 1
and 64, rounds interleaved between the two routes; medians are printed with the throughput ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, run_wrk, summarize  # noqa: E402
from tests.servers import free_port  # noqa: E402

BODY = json.dumps({"texts": ["A man with a hard hat is dancing."]}).encode()


def start(profile: str, port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "serve_driver.py"), str(port), profile],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.strip() == "READY":
            break
    else:
        raise RuntimeError(f"driver for {profile} exited with {process.wait()}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the ingress (proxy or HAProxy) may take a moment after serve.run
        try:
            if httpx.post(f"http://127.0.0.1:{port}/embed", content=BODY, timeout=2).status_code == 200 and \
                    httpx.post(f"http://127.0.0.1:{port}/noop", content=BODY, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{profile}: routes not answering")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profiles", nargs="+", default=["default", "throughput"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    results: dict[str, dict[str, float]] = {}
    for profile in args.profiles:
        port = free_port()
        driver = start(profile, port)
        try:
            cases = {f"{profile} {route} c{c}": (f"http://127.0.0.1:{port}{path}", c)
                     for c in (1, 64) for route, path in (("/embed", "/embed"), ("no-op", "/noop"))}
            for url, c in cases.values():
                run_wrk(url, BODY, connections=c, duration_s=2, threads=1 if c == 1 else 2)
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
            for _ in range(args.rounds):
                for name, (url, c) in cases.items():
                    runs[name].append(run_wrk(url, BODY, connections=c, duration_s=args.duration,
                                              threads=1 if c == 1 else 2))
            results.update({name: summarize(r) for name, r in runs.items()})
        finally:
            driver.terminate()
            driver.wait(timeout=120)

    print(f"machine: {machine()}; wrk {args.duration}s x {args.rounds} rounds, medians; 1 replica each")
    print(f"{'case':30s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'non-2xx':>8s}")
    for name, r in results.items():
        print(f"{name:30s} {r['rps']:9.0f} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['non_2xx']:8.0f}")
    print()
    for profile in args.profiles:
        for c in (1, 64):
            ours, noop = results[f"{profile} /embed c{c}"], results[f"{profile} no-op c{c}"]
            print(f"{profile}: /embed vs no-op throughput at c{c}: {100 * ours['rps'] / noop['rps']:.1f}%")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
