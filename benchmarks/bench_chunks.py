"""Long documents: /embed/chunks (one pass per document) beside the client-side way, in one run; JSON for the docs.

    .venv/bin/python benchmarks/bench_chunks.py [--paths standalone serve-replica] [--duration 3] [--rounds 3]
        [--json benchmarks/results/chunks.json]

For documents of about 1k, 10k and 100k tokens cut into chunks of 128 tokens overlapping by 32:
- `one-pass`: `POST /embed/chunks {"texts": [document], "chunk_tokens": 128, "overlap_tokens": 32}`;
- `client-side`: what a client of TEI, Infinity or OpenAI does: cut the document itself (here into exactly the
  same chunks, cut before the run, so the client's own cutting costs nothing), then `POST /embed` with the chunk
  texts in one request; the server tokenizes every overlap again.
Both answer the same vectors. wrk on 127.0.0.1, rounds interleaved, medians; "ratio" is the median of per-round
one-pass / client-side req/s.

Then, per path and document, a client's whole way at one request at a time (`end to end`, Python with httpx, the
answer read but not parsed, as the same bytes come back either way): `client cut + /embed` tokenizes the document
with the model's own `tokenizers.Tokenizer`, cuts windows of 128 tokens every 96 by its offsets (what a
token-based text splitter does) and posts them to `/embed`; `one-pass` posts the document to `/embed/chunks`.
Documents per second, rounds interleaved, medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_paths import CLIENT_CPUS, PIN, start_path  # noqa: E402
from benchmarks.common import benchmark_texts, commit, machine, run_wrk, summarize  # noqa: E402
from swiftembed import Embedder  # noqa: E402
from tests.servers import free_port  # noqa: E402

SIZES = (1_000, 10_000, 100_000)
CHUNK, OVERLAP = 128, 32
CONCURRENCY = (1, 2)


def documents(embedder: Embedder) -> dict[int, str]:
    """A document of about each size in tokens, made of benchmark sentences."""
    sentences, _ = benchmark_texts(20_000)
    counts = [len(ids) for ids in embedder.tokenize(sentences)]
    out = {}
    for size in SIZES:
        total, parts = 0, []
        for sentence, count in zip(sentences * 10, counts * 10):
            if total >= size:
                break
            parts.append(sentence)
            total += count
        out[size] = " ".join(parts)
    return out


def client_cut(tokenizer: Tokenizer, doc: str) -> list[str]:
    """What a client without /embed/chunks does: tokenize the document, cut windows of CHUNK tokens starting every
    CHUNK - OVERLAP tokens, and take each window's text by the tokens' offsets."""
    offsets = tokenizer.encode(doc, add_special_tokens=False).offsets
    step = CHUNK - OVERLAP
    return [doc[offsets[i][0] : offsets[min(i + CHUNK, len(offsets)) - 1][1]]
            for i in range(0, max(len(offsets) - OVERLAP, 1), step)]


def bench_end_to_end(path: str, url: str, tokenizer: Tokenizer, docs: dict[int, str], seconds: float,
                     rounds: int) -> dict[str, dict]:
    """Per document: a client's time from document in hand to chunk vectors in hand, one request at a time."""
    results = {}
    with httpx.Client(timeout=120) as http:
        def one_pass(doc: str) -> None:
            r = http.post(f"{url}/embed/chunks", content=json.dumps(
                {"texts": [doc], "chunk_tokens": CHUNK, "overlap_tokens": OVERLAP}).encode())
            r.raise_for_status()

        def cut_and_embed(doc: str) -> None:
            r = http.post(f"{url}/embed", content=json.dumps({"texts": client_cut(tokenizer, doc)}).encode())
            r.raise_for_status()

        for size, doc in docs.items():
            ways = {"one-pass": one_pass, "client cut + /embed": cut_and_embed}
            times: dict[str, list[float]] = {way: [] for way in ways}
            rates: dict[str, list[float]] = {way: [] for way in ways}
            for way in ways.values():  # warm-up
                way(doc)
            for _ in range(rounds):
                for way, call in ways.items():
                    done, began = 0, time.perf_counter()
                    while (elapsed := time.perf_counter() - began) < seconds or done < 3:
                        start = time.perf_counter()
                        call(doc)
                        times[way].append(time.perf_counter() - start)
                        done += 1
                    rates[way].append(done / elapsed)
            for way in ways:
                results[f"{path} | {size} | c1 | {way} | end to end"] = {
                    "rps": statistics.median(rates[way]), "p50_ms": statistics.median(times[way]) * 1e3}
            ratios = [a / b for a, b in zip(rates["one-pass"], rates["client cut + /embed"])]
            results[f"{path} | {size} | c1 | one-pass | end to end"]["ratio"] = statistics.median(ratios)
    return results


def bench(path: str, embedder: Embedder, docs: dict[int, str], duration: int, rounds: int) -> dict[str, dict]:
    port = free_port()
    server, _ = start_path(path, port)
    url = f"http://127.0.0.1:{port}"
    cpus = CLIENT_CPUS if PIN and path == "standalone" else None
    try:
        cases: dict[str, tuple[str, bytes, int, int]] = {}
        for size, doc in docs.items():
            chunks = embedder.chunk(doc, CHUNK, OVERLAP)
            texts = [doc[c.start : c.end] for c in chunks]
            one_pass = json.dumps({"texts": [doc], "chunk_tokens": CHUNK, "overlap_tokens": OVERLAP}).encode()
            client = json.dumps({"texts": texts}).encode()
            for c in CONCURRENCY:
                cases[f"{path} | {size} | c{c} | one-pass"] = (url + "/embed/chunks", one_pass, c, len(chunks))
                cases[f"{path} | {size} | c{c} | client-side"] = (url + "/embed", client, c, len(chunks))
        for target, body, c, _ in cases.values():  # warm-up
            run_wrk(target, body, connections=c, duration_s=1, threads=c, cpus=cpus)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, (target, body, c, _) in cases.items():
                runs[name].append(run_wrk(target, body, connections=c, duration_s=duration, threads=c, cpus=cpus))
        results = {}
        for name, r in runs.items():
            results[name] = {**summarize(r), "chunks": cases[name][3]}
            results[name]["chunks_per_s"] = results[name]["rps"] * cases[name][3]
        for name in runs:
            if name.endswith("one-pass"):
                other = name.replace("one-pass", "client-side")
                ratios = [a["rps"] / b["rps"] for a, b in zip(runs[name], runs[other]) if b["rps"]]
                results[name]["ratio"] = statistics.median(ratios)
        tokenizer = Tokenizer.from_str(embedder.tokenizer._tokenizer.to_str())  # the model's own, as a client has it
        tokenizer.no_truncation()
        results.update(bench_end_to_end(path, url, tokenizer, docs, duration, rounds))
        return results
    finally:
        server.terminate()
        server.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", nargs="+", default=["standalone", "serve-replica"])
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    code = commit()  # what is measured: the checkout as the run starts
    embedder = Embedder.load()
    docs = documents(embedder)
    results: dict[str, dict] = {}
    for path in args.paths:
        results.update(bench(path, embedder, docs, args.duration, args.rounds))
        print(f"done: {path}", flush=True)
    for name, r in results.items():
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else ""
        print(f"{name:<60} {r['rps']:>9,.1f} req/s {r.get('chunks_per_s', 0):>10,.0f} chunks/s p50 "
              f"{r['p50_ms']:>8.2f} ms {ratio}")
    run = {"machine": machine(), "commit": code, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": ["benchmarks/bench_chunks.py", *sys.argv[1:]], "chunk_tokens": CHUNK,
           "overlap_tokens": OVERLAP, "results": results}
    if args.json:
        args.json.write_text(json.dumps(run, indent=1) + "\n")


if __name__ == "__main__":
    main()
