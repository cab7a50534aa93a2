"""Helpers shared by the benchmark scripts: the text set, machine facts, interleaved timing."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def benchmark_texts(count: int = 10_000) -> tuple[list[str], str]:
    """`count` unique short sentences: STS-B train from ../shared when present, else generated ones."""
    path = SHARED / "data" / "stsb" / "sts-train.csv"
    if path.exists():
        rows = [line.rstrip("\n").split("\t") for line in path.open(encoding="utf-8")]
        texts = list(dict.fromkeys(t for row in rows if len(row) >= 7 for t in row[5:7]))[:count]
        return texts, f"{len(texts)} unique STS-B train sentences"
    import random

    rng = random.Random(0)
    words = open("/usr/share/dict/words").read().split() if Path("/usr/share/dict/words").exists() else None
    words = words or ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "runs", "beach", "man"]
    texts = [" ".join(rng.choices(words, k=rng.randint(5, 20))) + "." for _ in range(count)]
    return texts, f"{count} generated sentences"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()}"


def commit() -> str:
    """The checked-out commit, with `+dirty` when the work tree has uncommitted changes to tracked files."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def interleaved(cases: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Run every case once per round, rounds interleaved, so machine noise hits all cases alike."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():  # warm-up (caches, lazy imports)
        fn()
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def run_wrk(
    url: str,
    body: bytes,
    *,
    connections: int,
    duration_s: int,
    threads: int = 1,
    headers: dict[str, str] | None = None,
    cpus: str | None = None,
) -> dict[str, float]:
    """One bounded wrk run (POST `body` to `url`, which must be on 127.0.0.1): requests/s, p50/p99 in ms.

    `cpus` pins wrk to those CPUs (taskset -c), away from a server pinned elsewhere.
    """
    import re
    import subprocess
    import tempfile

    if not url.startswith(("http://127.0.0.1", "http://localhost")):
        raise ValueError("load only ever targets 127.0.0.1")
    headers = {"Content-Type": "application/json", **(headers or {})}
    with tempfile.NamedTemporaryFile("wb", suffix=".body", delete=False) as handle:
        handle.write(body)
    lua = "\n".join(
        [
            'wrk.method = "POST"',
            f'local f = io.open("{handle.name}", "rb"); wrk.body = f:read("*a"); f:close()',
            *[f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()],
        ]
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua)
    out = subprocess.run(
        [*(["taskset", "-c", cpus] if cpus else []), "wrk", f"-t{max(1, min(threads, connections))}",
         f"-c{connections}", f"-d{duration_s}s", "--latency",
         "--timeout", "10s", "-s", script.name, url],
        capture_output=True, text=True, timeout=duration_s + 60, check=True,
    ).stdout
    os.unlink(handle.name)
    os.unlink(script.name)

    def ms(token: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", token).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]

    percentiles = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)", out, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "p50_ms": ms(percentiles["50"]),
        "p99_ms": ms(percentiles["99"]),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
        "socket_errors": 1.0 if socket_errors else 0.0,
    }


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median of each figure over repeated runs."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def run_h2load(
    url: str,
    body: bytes,
    *,
    connections: int,
    streams: int = 1,
    duration_s: int,
    headers: dict[str, str],
    h1: bool = False,
    cpus: str | None = None,
) -> dict[str, float]:
    """One bounded h2load run (POST `body` to `url` on 127.0.0.1; `h1`: HTTP/1.1, else HTTP/2 with `streams` in
    flight per connection): requests/s, mean latency in ms, and requests that did not get a 2xx (a gRPC error
    still answers 200: count those at the server). One h2load thread, pinned to `cpus` if given."""
    import re
    import subprocess
    import tempfile

    if not url.startswith(("http://127.0.0.1", "http://localhost")):
        raise ValueError("load only ever targets 127.0.0.1")
    with tempfile.NamedTemporaryFile("wb", suffix=".body", delete=False) as handle:
        handle.write(body)
    command = [*(["taskset", "-c", cpus] if cpus else []), "h2load", *(["--h1"] if h1 else []), "-t1",
               f"-c{connections}", f"-m{streams}", f"-D{duration_s}", "--warm-up-time=1", "-d", handle.name,
               *[arg for key, value in headers.items() for arg in ("-H", f"{key}: {value}")], url]
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60, check=True).stdout
    os.unlink(handle.name)
    rps = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)

    def ms(token: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", token).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    assert done is not None and mean is not None, out[-2000:]
    return {"rps": rps, "mean_ms": ms(mean.group(1)), "requests": float(done.group(2)),
            "failed": float(int(done.group(2)) - int(done.group(3)))}
