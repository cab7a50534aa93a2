"""Compare static models on every measure the training issue names, in one run, as a Markdown table.

    .venv/bin/python -m training.report swiftembed/models/potion-base-8M swiftembed/models/swiftembed-potion-sts-8M

For each model directory: STS-B dev Spearman (held out: training never reads it), the failure-mode suite per
category, encode throughput on 10,000 STS-B train sentences (rounds interleaved between the models, so machine
noise hits them alike; median texts/s and the ratio to the first model), and the table's size on disk.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import benchmark_texts, interleaved, machine, median  # noqa: E402
from swiftembed.core.embedder import Embedder  # noqa: E402
from swiftembed.eval.quality import SUITE_COUNTS, accuracy, check_suite, evaluate_sts, read_pairs, run_suite  # noqa: E402

STSB_DEV = ROOT.parent / "shared" / "data" / "stsb" / "sts-dev.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    embedders = {path.name: Embedder.load(path) for path in args.models}
    dev = read_pairs(STSB_DEV)
    cases = check_suite()
    texts, source = benchmark_texts(10_000)
    times = interleaved({name: (lambda e=e: e.encode(texts)) for name, e in embedders.items()}, args.rounds)
    first = next(iter(embedders))

    print(f"machine: {machine()}; texts for throughput: {source}; rounds: {args.rounds}\n")
    header = ["model", "STS-B dev Spearman", *SUITE_COUNTS, "suite overall", "encode texts/s", "vs first",
              "table MB"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, embedder in embedders.items():
        sts = evaluate_sts(lambda t, e=embedder: e.encode(t), dev)
        suite = accuracy(run_suite(lambda t, e=embedder: e.encode(t), cases))
        rate = len(texts) / median(times[name])
        ratio = median(times[first]) / median(times[name])
        size = sum(f.stat().st_size for f in Path(embedder.model.path).glob("*.safetensors")) / 1e6
        row = [name, f"{sts.spearman:.2f}", *(f"{suite[c]['correct']}/{suite[c]['cases']}" for c in SUITE_COUNTS),
               f"{suite['overall']['correct']}/{suite['overall']['cases']}", f"{rate:,.0f}", f"{100 * ratio:.0f}%",
               f"{size:.1f}"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
