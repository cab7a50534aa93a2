"""Bulk embedding throughput on one large corpus: streaming CLI path vs Ray Data vs model2vec, in one run.

    .venv/bin/python benchmarks/bench_bulk.py [--lines 500000] [--rounds 3] [--cpus 2]

The corpus (written to a temporary directory, deleted afterwards) recombines STS-B train sentences (first
half of one, second half of another) when ../shared is present, else generated text. Cases, interleaved per
round, texts/s as the median over rounds:

- streaming: `swiftembed encode -i corpus.txt -o out.npy` in-process (`open_input` + `encode_stream`, chunk
  4096, memory-mapped output), file reading included;
- Ray Data: `swiftembed batch corpus.txt OUT` (`run_batch`) on a local Ray with `--cpus` CPUs, one embedding
  actor per CPU, Parquet output; actor start-up included, Ray start-up (done once) not. The same job on a
  one-line input gives its fixed cost (actors starting, model and shared table loading), and the rate
  without it estimates Ray Data's throughput on corpora large enough to hide it;
- in memory: `Embedder.encode` and model2vec's `StaticModel.encode` (its default thread pool) on the same
  texts already in a list, no I/O.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # model2vec sets it on first use; fix it for all cases

from benchmarks.common import SHARED, interleaved, machine, median  # noqa: E402


def corpus_lines(count: int, seed: int = 0) -> tuple[list[str], str]:
    """`count` lines recombined from STS-B train sentences, else from a small word list."""
    path = SHARED / "data" / "stsb" / "sts-train.csv"
    rng = random.Random(seed)
    if path.exists():
        rows = [line.rstrip("\n").split("\t") for line in path.open(encoding="utf-8")]
        base = [t.split() for t in dict.fromkeys(t for row in rows if len(row) >= 7 for t in row[5:7])]
        lines = []
        for _ in range(count):
            a, b = rng.choice(base), rng.choice(base)
            lines.append(" ".join(a[: len(a) // 2] + b[len(b) // 2 :]))
        return lines, f"{count} lines recombined from {len(base)} STS-B train sentences"
    words = "the a man woman dog cat is running jumps over lazy quick brown fox on beach in park".split()
    return [" ".join(rng.choices(words, k=rng.randint(4, 24))) for _ in range(count)], f"{count} generated lines"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (and its embedding actors)")
    args = parser.parse_args()

    import numpy as np
    import ray
    from model2vec import StaticModel

    from swiftembed import Embedder
    from swiftembed.core.model import DEFAULT_MODEL_DIR
    from swiftembed.files.bulk import NpyWriter, encode_stream, open_input
    from swiftembed.ray.data_job import run_batch

    texts, source = corpus_lines(args.lines)
    work = Path(tempfile.mkdtemp(prefix="bench_bulk_"))
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    one_line = work / "one.txt"
    one_line.write_text(texts[0] + "\n", encoding="utf-8")
    size_mb = corpus.stat().st_size / 1e6
    embedder = Embedder.load()
    reference = StaticModel.from_pretrained(str(DEFAULT_MODEL_DIR))
    runs = iter(range(1_000_000))
    workers: list[int] = []

    def streaming() -> None:
        records, total = open_input(corpus, "text")
        written = encode_stream(embedder, records, NpyWriter(work / "out.npy", embedder.dim, np.dtype("f4")))
        assert written == len(texts)

    def ray_data(source: Path = corpus, rows: int = len(texts)) -> None:
        out = work / f"ray-{next(runs)}"
        result = run_batch(source, out, workers=args.cpus)
        assert result.rows == rows, result
        workers.append(result.workers)
        shutil.rmtree(out)

    start = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - start
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        cases = {
            "streaming encode -> .npy (CLI path)": streaming,
            f"Ray Data batch -> Parquet ({args.cpus} CPUs)": ray_data,
            "Ray Data batch, one-line input (fixed cost)": lambda: ray_data(one_line, 1),
            "Embedder.encode, in memory": lambda: embedder.encode(texts),
            "model2vec StaticModel.encode, in memory": lambda: reference.encode(texts),
        }
        times = interleaved(cases, args.rounds)
    finally:
        ray.shutdown()
        shutil.rmtree(work)
    rate = {name: len(texts) / median(t) for name, t in times.items()}

    stream, ray_name, fixed, ours, m2v = list(cases)
    print(f"machine: {machine()}")
    print(f"corpus: {source}, {size_mb:.0f} MB; rounds: {args.rounds}; "
          f"TOKENIZERS_PARALLELISM={os.environ['TOKENIZERS_PARALLELISM']}")
    print(f"Ray start-up (once, not in the figures): {ray_start:.1f} s; Ray Data workers: {sorted(set(workers))}")
    print(f"{'case':44s} {'median s':>9s} {'texts/s':>10s}   all rounds (s)")
    for name, t in times.items():
        shown = "-" if name == fixed else f"{rate[name]:.0f}"
        print(f"{name:44s} {median(t):9.2f} {shown:>10s}   {' '.join(f'{x:.2f}' for x in t)}")
    print()
    steady = len(texts) / (median(times[ray_name]) - median(times[fixed]))
    print(f"Ray Data without its fixed cost: {steady:.0f} texts/s, {steady / rate[stream]:.2f}x streaming")
    print(f"Ray Data / streaming: {rate[ray_name] / rate[stream]:.2f}x")
    print(f"streaming / model2vec: {rate[stream] / rate[m2v]:.2f}x")
    print(f"Ray Data / model2vec: {rate[ray_name] / rate[m2v]:.2f}x")
    print(f"streaming / in-memory Embedder.encode: {rate[stream] / rate[ours]:.2f}x")


if __name__ == "__main__":
    main()
