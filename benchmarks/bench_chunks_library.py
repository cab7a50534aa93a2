"""Chunking one long document in the library vs client-side: `Embedder.chunk` against cutting the same chunks'
texts and encoding them as a batch (what a client does without the library's help). In-process, no HTTP.

    .venv/bin/python benchmarks/bench_chunks_library.py [--tokens 100000] [--chunk 128] [--overlap 32] [--rounds 5]

Prints the median time of each way per model and their ratio (client-side / library), plus the chunk count.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import benchmark_texts, interleaved, machine, median  # noqa: E402


def document(embedder, tokens: int) -> str:
    """STS-B sentences joined (paragraphs now and then) until the text holds `tokens` tokens."""
    sentences, _ = benchmark_texts(6000)
    hf = embedder.tokenizer._tokenizer
    parts: list[str] = []
    count = 0
    while count < tokens:
        for i, sentence in enumerate(sentences):
            parts.append(sentence + ("\n\n" if i % 9 == 8 else " "))
            count += len(hf.encode(sentence, add_special_tokens=False).ids)
            if count >= tokens:
                break
    return "".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=None, help="bundled names (default: every bundled model)")
    args = parser.parse_args()

    from swiftembed import Embedder
    from swiftembed.core.catalog import BUNDLED

    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    print(f"document: {args.tokens} tokens; chunk {args.chunk} tokens, overlap {args.overlap}; rounds {args.rounds}")
    print(f"{'model':28s} {'chunks':>7s} {'library ms':>11s} {'client ms':>10s} {'client/library':>15s}")
    for name in args.models or BUNDLED:
        embedder = Embedder.load(name)
        text = document(embedder, args.tokens)
        chunks = embedder.chunk(text, args.chunk, args.overlap)
        spans = [(c.start, c.end) for c in chunks]

        def library(text=text, embedder=embedder):
            return embedder.chunk(text, args.chunk, args.overlap)

        def client(text=text, embedder=embedder, spans=spans):
            return embedder.encode([text[start:end] for start, end in spans])

        times = interleaved({"library": library, "client": client}, args.rounds)
        lib, cli = median(times["library"]), median(times["client"])
        print(f"{name:28s} {len(chunks):7d} {lib * 1e3:11.1f} {cli * 1e3:10.1f} {cli / lib:15.2f}")


if __name__ == "__main__":
    main()
