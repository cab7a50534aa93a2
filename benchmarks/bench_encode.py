"""In-process encode throughput: SwiftEmbed vs model2vec vs tokenization alone, one process, same texts.

    .venv/bin/python benchmarks/bench_encode.py [--texts 10000] [--rounds 15]

Prints texts/s (median over interleaved rounds) and the ratios the core issue targets: our encode over
model2vec's `StaticModel.encode`, and the cost pooling + normalization add on top of our tokenization.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import benchmark_texts, interleaved, machine, median  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    from model2vec import StaticModel

    from swiftembed import Embedder
    from swiftembed.core.model import DEFAULT_MODEL_DIR

    texts, source = benchmark_texts(args.texts)
    ours = Embedder.load()
    hf_only = Embedder.load(fast_tokenizer=False)
    reference = StaticModel.from_pretrained(str(DEFAULT_MODEL_DIR))
    hf = ours.tokenizer._tokenizer  # the exact HF tokenizer our slow path uses (padding/truncation set)
    batch = ours.tokens(texts)

    cases = {
        "swiftembed encode": lambda: ours.encode(texts),
        "swiftembed encode (HF tokenizer only)": lambda: hf_only.encode(texts),
        "model2vec StaticModel.encode": lambda: reference.encode(texts),
        "HF tokenizer encode_batch_fast": lambda: hf.encode_batch_fast(texts, add_special_tokens=False),
        "swiftembed tokenization alone": lambda: ours.tokens(texts),
        "swiftembed pool + normalize alone": lambda: ours.finish(ours.pool(batch, mean=False), inplace=True),
    }
    times = interleaved(cases, args.rounds)
    rate = {name: len(texts) / median(t) for name, t in times.items()}

    print(f"machine: {machine()}")
    print(f"texts: {source}; rounds: {args.rounds}; TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM')}")
    print(f"{'case':42s} {'median ms':>10s} {'texts/s':>10s}")
    for name, t in times.items():
        print(f"{name:42s} {median(t) * 1e3:10.2f} {rate[name]:10.0f}")
    ours_ms = median(times["swiftembed encode"])
    tok_ms = median(times["swiftembed tokenization alone"])
    print()
    print(f"swiftembed / model2vec throughput: {rate['swiftembed encode'] / rate['model2vec StaticModel.encode']:.2f}x")
    print(
        "swiftembed (HF tokenizer only) / model2vec: "
        f"{rate['swiftembed encode (HF tokenizer only)'] / rate['model2vec StaticModel.encode']:.2f}x"
    )
    tok_ratio = rate["swiftembed tokenization alone"] / rate["HF tokenizer encode_batch_fast"]
    print(f"swiftembed tokenization / HF tokenizer: {tok_ratio:.2f}x")
    print(f"pooling + normalization on top of our tokenization: {100 * (ours_ms - tok_ms) / tok_ms:+.1f}%")
    pool_ms = median(times["swiftembed pool + normalize alone"])
    print(f"pool + normalize alone as share of tokenization: {100 * pool_ms / tok_ms:.1f}%")


if __name__ == "__main__":
    main()
