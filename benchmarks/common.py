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
