"""Two versions of the code side by side in one run: the standalone server of a base commit and of this tree.

    .venv/bin/python benchmarks/bench_ab.py BASE_COMMIT [--shapes single batch-100 jsonl-1000 binary-100]
        [--duration 5] [--rounds 5] [--json benchmarks/results/ab.json]
    .venv/bin/python benchmarks/bench_ab.py --markdown benchmarks/results/ab.json   # its table for the docs

For a change that must not slow any path (a restructure): BASE_COMMIT is checked out into a temporary worktree,
and both versions' standalone apps (benchmarks/noop_app.py: the server `swiftembed serve --standalone` builds)
run at once on CPU 0, wrk on CPU 1 driving one at a time; rounds alternate between them for every shape and
concurrency, and each case reports the median requests/s of each and the median of the per-round ratios
(this tree / base), which cancels the slow spells of a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_paths import CLIENT_CPUS, CONCURRENCY, PIN, SERVER_CPUS  # noqa: E402
from benchmarks.common import commit, machine, run_wrk, summarize  # noqa: E402
from benchmarks.shapes import SHAPES  # noqa: E402
from tests.servers import free_port, wait_healthy  # noqa: E402


def start(tree: Path) -> tuple[subprocess.Popen, str]:
    """The standalone app of the code in `tree` (its own modules first on the path), and its URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [*(["taskset", "-c", SERVER_CPUS] if PIN else []), sys.executable, "-m", "uvicorn", "benchmarks.noop_app:app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"], env=env, cwd=tree)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, timeout=180, process=process)
    return process, url


def render(path: str) -> str:
    """A run's JSON as the Markdown table of docs/benchmarks.md."""
    data = json.loads(Path(path).read_text())
    run = data["run"]
    rows = [f"Generated from `{path}`: base `{run['base'][:12]}`, this tree `{run['commit']}`; machine: "
            f"{run['machine']}; {run['rounds']} rounds of {run['duration_s']} s per side and case, alternating.", "",
            "| shape | connections | base req/s | this tree req/s | ratio (median, range) |", "|---|---|---|---|---|"]
    for name, r in data["results"].items():
        shape, c = name.split(" | ")
        rows.append(f"| {shape} | {c.removeprefix('c')} | {r['base']['rps']:,.0f} | {r['head']['rps']:,.0f} | "
                    f"{r['ratio']:.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f}) |")
    return "\n".join(rows)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--markdown":
        print(render(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("--shapes", nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    base_commit = subprocess.run(["git", "rev-parse", args.base], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="swiftembed-ab-") as tmp:
        base_tree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), base_commit], cwd=ROOT, check=True,
                       capture_output=True)
        servers = []
        try:
            servers = [start(base_tree), start(ROOT)]
            (_, base_url), (_, head_url) = servers
            cpus = CLIENT_CPUS if PIN else None
            cases = [(shape, c) for shape in args.shapes for c in CONCURRENCY[shape]]
            runs: dict[str, dict[str, list[dict[str, float]]]] = {}
            for shape_name, c in cases:  # warm-up
                shape = SHAPES[shape_name]
                for url in (base_url, head_url):
                    run_wrk(url + shape.path, shape.body, connections=c, duration_s=1, threads=min(c, 2),
                            headers=shape.headers, cpus=cpus)
            for _ in range(args.rounds):
                for shape_name, c in cases:
                    shape = SHAPES[shape_name]
                    case = runs.setdefault(f"{shape_name} | c{c}", {"base": [], "head": []})
                    for side, url in (("base", base_url), ("head", head_url)):
                        case[side].append(run_wrk(url + shape.path, shape.body, connections=c, duration_s=args.duration,
                                                  threads=min(c, 2), headers=shape.headers, cpus=cpus))
        finally:
            for process, _ in servers:
                process.terminate()
                process.wait(timeout=60)
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, capture_output=True)
    results = {}
    for name, case in runs.items():
        ratios = [h["rps"] / b["rps"] for b, h in zip(case["base"], case["head"]) if b["rps"]]
        results[name] = {"base": summarize(case["base"]), "head": summarize(case["head"]),
                         "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
        print(f"{name:22} base {results[name]['base']['rps']:>9,.0f} req/s   this tree "
              f"{results[name]['head']['rps']:>9,.0f} req/s   ratio {results[name]['ratio']:.3f} "
              f"({min(ratios):.3f}-{max(ratios):.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"run": {"base": base_commit, "commit": commit(), "machine": machine(),
                                                        "rounds": args.rounds, "duration_s": args.duration},
                                               "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
