"""Headless load runner: step a locust user class through user counts, write CSV/JSON and a PNG plot.

    .venv/bin/python loadtest/run_load.py --url http://127.0.0.1:8000 --users 1 4 16 64 --seconds 15 \
        --user-class SingleText --out out/load

    .venv/bin/python loadtest/run_load.py --start standalone ...   # starts `swiftembed serve --standalone` itself

Each step is bounded (`--seconds`, and locust stops on its own); the target must be on 127.0.0.1. The report
has p50/p95/p99 latency, requests/s and texts/s per user count; the plot shows them against users.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.shapes import TEXTS_PER_REQUEST, USER_CLASSES  # noqa: E402


def run_step(url: str, user_class: str, users: int, seconds: int, workdir: Path) -> dict[str, float]:
    prefix = workdir / f"{user_class}-{users}"
    subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless",
         "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", url, "--csv", str(prefix),
         "--only-summary", "--stop-timeout", "5", "--loglevel", "WARNING", user_class],
        check=False, timeout=seconds + 120, capture_output=True,
    )
    with open(f"{prefix}_stats.csv", newline="") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    total = rows["Aggregated"]
    rps = float(total["Requests/s"])
    return {
        "users": users,
        "requests": int(total["Request Count"]),
        "failures": int(total["Failure Count"]),
        "rps": rps,
        "texts_per_s": rps * TEXTS_PER_REQUEST[user_class],
        "p50_ms": float(total["50%"]),
        "p95_ms": float(total["95%"]),
        "p99_ms": float(total["99%"]),
    }


def plot(results: list[dict[str, float]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = [r["users"] for r in results]
    fig, left = plt.subplots(figsize=(8, 4.5))
    for key, style in (("p50_ms", "-o"), ("p95_ms", "-s"), ("p99_ms", "-^")):
        left.plot(users, [r[key] for r in results], style, label=key.replace("_ms", " latency"))
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrent users")
    left.set_ylabel("latency (ms)")
    right = left.twinx()
    right.plot(users, [r["rps"] for r in results], "--", color="black", label="requests/s")
    right.set_ylabel("requests/s")
    lines = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = left.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    left.legend(lines, labels, loc="upper left")
    left.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--start", choices=("standalone",), help="start the target server on a free port")
    parser.add_argument("--user-class", choices=USER_CLASSES, default="SingleText")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("out/load"))
    args = parser.parse_args()
    if max(args.users) > 512 or args.seconds > 600:
        parser.error("steps are bounded: at most 512 users and 600 s per step")

    server = None
    if args.start == "standalone":
        from tests.servers import free_port, wait_healthy

        port = free_port()
        command = [sys.executable, "-m", "swiftembed.cli", "serve", "--standalone", "--port", str(port)]
        server = subprocess.Popen(command)
        args.url = f"http://127.0.0.1:{port}"
        wait_healthy(args.url, process=server)
    if urlparse(args.url).hostname not in ("127.0.0.1", "localhost"):
        parser.error("load tests target 127.0.0.1 only")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as work:
            results = [run_step(args.url, args.user_class, u, args.seconds, Path(work)) for u in args.users]
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    stem = args.out / f"load-{args.user_class}"
    with open(f"{stem}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
    Path(f"{stem}.json").write_text(json.dumps({"url": args.url, "user_class": args.user_class, "steps": results},
                                               indent=2))
    plot(results, f"SwiftEmbed {args.user_class} at {args.url}", Path(f"{stem}.png"))
    for r in results:
        print(f"users {r['users']:4d}: {r['rps']:8.1f} req/s {r['texts_per_s']:9.0f} texts/s  p50 {r['p50_ms']:.0f} "
              f"p95 {r['p95_ms']:.0f} p99 {r['p99_ms']:.0f} ms  failures {r['failures']}/{r['requests']}")
    print(f"wrote {stem}.csv, .json, .png")


if __name__ == "__main__":
    main()
