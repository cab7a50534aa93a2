"""TEI's gRPC API against HTTP on the same standalone server, both loaded by the same C tool (h2load).

    .venv/bin/python benchmarks/bench_grpc.py [--duration 5] [--rounds 3] [--json benchmarks/results/grpc.json]

One `swiftembed serve --standalone --grpc-port` pinned to CPU 0, h2load (one thread) pinned to CPU 1, 127.0.0.1 only:
- `single`: one text a request. HTTP: POST /embed {"texts": [text]} over HTTP/1.1 (`h2load --h1`), 64 connections.
  gRPC: unary tei.v1.Embed/Embed, 64 connections of one stream each (`grpc`), and 8 connections of 8 streams
  (`grpc-mux`, what one HTTP/2 client with many calls in flight does).
- `batch-100`: 100 texts. HTTP: /embed with 100 texts, 8 connections. gRPC: one EmbedStream call carrying 100
  messages (TEI's proto holds one text a message), 8 connections; requests/s counts calls, texts/s is 100x that.
- `grpc-noop`: the same gRPC loads on benchmarks/noop_grpc.py (`grpc.aio` answering a prepared answer of the same
  size, no embedding), also on CPU 0: what `grpc.aio` alone allows.
gRPC bodies are pre-encoded length-prefixed messages (`content-type: application/grpc`, `te: trailers`); both ask for
unit vectors (HTTP's default; gRPC's `normalize: true`). Each round runs every case once, in turn; the figures are
medians over rounds and each ratio the median of per-round gRPC/HTTP ratios. Before the load every body is sent once
and its answer checked against the library; after it, the server's /metrics must count no gRPC call that failed (a
gRPC error still answers HTTP 200, which h2load counts as a success), beyond the calls in flight when a timed run
ends (h2load cuts those, and the server counts a call whose client left as HTTP counts one: 500; any other status
fails the run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import commit, machine, run_h2load, summarize  # noqa: E402
from benchmarks.shapes import SENTENCE  # noqa: E402
from swiftembed import Embedder  # noqa: E402
from swiftembed.grpc import tei_pb2 as pb  # noqa: E402
from tests.servers import free_port, stop_process, wait_healthy  # noqa: E402

PIN = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
SERVER_CPUS, CLIENT_CPUS = "0", "1"
GRPC_HEADERS = {"content-type": "application/grpc", "te": "trailers"}
JSON_HEADERS = {"content-type": "application/json"}


def frame(message: bytes) -> bytes:
    """One gRPC message as it travels: uncompressed flag, big-endian length, the message."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def cases(http_port: int, grpc_port: int, noop_port: int) -> dict[str, dict]:
    texts = [SENTENCE.format(i) for i in range(100)]
    one = pb.EmbedRequest(inputs=texts[0], normalize=True).SerializeToString()
    many = [pb.EmbedRequest(inputs=t, normalize=True).SerializeToString() for t in texts]
    http, rpc, noop = (f"http://127.0.0.1:{port}" for port in (http_port, grpc_port, noop_port))
    return {
        "single | http": {"url": http + "/embed", "body": json.dumps({"texts": texts[:1]}).encode(),
                          "headers": JSON_HEADERS, "h1": True, "connections": 64, "texts": 1},
        "single | grpc": {"url": rpc + "/tei.v1.Embed/Embed", "body": frame(one), "headers": GRPC_HEADERS,
                          "connections": 64, "texts": 1, "messages": [one]},
        "single | grpc-mux": {"url": rpc + "/tei.v1.Embed/Embed", "body": frame(one), "headers": GRPC_HEADERS,
                              "connections": 8, "streams": 8, "texts": 1, "messages": [one]},
        "single | grpc-noop": {"url": noop + "/tei.v1.Embed/Embed", "body": frame(one), "headers": GRPC_HEADERS,
                               "connections": 64, "texts": 1},
        "batch-100 | http": {"url": http + "/embed", "body": json.dumps({"texts": texts}).encode(),
                             "headers": JSON_HEADERS, "h1": True, "connections": 8, "texts": 100},
        "batch-100 | grpc": {"url": rpc + "/tei.v1.Embed/EmbedStream", "body": b"".join(map(frame, many)),
                             "headers": GRPC_HEADERS, "connections": 8, "texts": 100, "messages": many},
        "batch-100 | grpc-noop": {"url": noop + "/tei.v1.Embed/EmbedStream", "body": b"".join(map(frame, many)),
                                  "headers": GRPC_HEADERS, "connections": 8, "texts": 100},
    }


def check(case: dict, grpc_port: int, embedder: Embedder) -> None:
    """The body answers what the library gives, through grpcio's client (gRPC) or httpx (HTTP)."""
    if "/tei.v1." in case["url"] and "messages" not in case:  # the no-op: a prepared answer
        return
    if "messages" not in case:
        texts = json.loads(case["body"])["texts"]
        got = httpx.post(case["url"], content=case["body"], headers=case["headers"], timeout=30).json()["embeddings"]
        np.testing.assert_allclose(got, embedder.encode(texts), atol=1e-6)
        return
    path = case["url"].split(str(grpc_port), 1)[1]
    texts = [pb.EmbedRequest.FromString(m).inputs for m in case["messages"]]
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        if path.endswith("Stream"):
            answers = list(channel.stream_stream(path)(iter(case["messages"])))
        else:
            answers = [channel.unary_unary(path)(case["messages"][0])]
    got = [pb.EmbedResponse.FromString(a).embeddings for a in answers]
    np.testing.assert_allclose(got, embedder.encode(texts), atol=1e-6)


def grpc_failures(http_port: int) -> dict[str, float]:
    """gRPC calls the server counted with a status other than 200, by status."""
    text = httpx.get(f"http://127.0.0.1:{http_port}/metrics", timeout=30).text
    failed: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("swiftembed_requests_total{") and 'route="grpc:' in line and 'status="200"' not in line:
            status = line.split('status="', 1)[1].split('"', 1)[0]
            failed[status] = failed.get(status, 0.0) + float(line.split()[-1])
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per run (after a 1 s warm-up)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        sys.exit("h2load not found (apt-get install nghttp2-client)")
    embedder = Embedder.load()
    http_port, grpc_port, noop_port = free_port(), free_port(), free_port()
    pin = ["taskset", "-c", SERVER_CPUS] if PIN else []
    noop = subprocess.Popen([*pin, sys.executable, str(ROOT / "benchmarks" / "noop_grpc.py"), str(noop_port)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    server = subprocess.Popen(
        [*pin, sys.executable, "-m", "swiftembed.cli", "serve",
         "--standalone", "--host", "127.0.0.1", "--port", str(http_port), "--grpc-port", str(grpc_port)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    cpus = CLIENT_CPUS if PIN else None
    try:
        wait_healthy(f"http://127.0.0.1:{http_port}", process=server)
        assert noop.stdout is not None and noop.stdout.readline().startswith("READY")
        table = cases(http_port, grpc_port, noop_port)
        for case in table.values():
            check(case, grpc_port, embedder)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in table}
        for _ in range(args.rounds):
            for name, case in table.items():
                runs[name].append(run_h2load(case["url"], case["body"], connections=case["connections"],
                                             streams=case.get("streams", 1), duration_s=args.duration,
                                             headers=case["headers"], h1=case.get("h1", False), cpus=cpus))
        failures = grpc_failures(http_port)
    finally:
        stop_process(server)
        stop_process(noop)
    results = {name: {**summarize(r), "texts_per_s": summarize(r)["rps"] * table[name]["texts"]}
               for name, r in runs.items()}
    ratios = {}
    pairs = [(name, f"{name.split(' | ')[0]} | http") for name in runs if not name.endswith(("http", "noop"))]
    pairs += [(name, f"{name.split(' | ')[0]} | grpc-noop") for name in runs if name.endswith(("| grpc", "grpc-mux"))]
    pairs += [(name, f"{name.split(' | ')[0]} | http") for name in runs if name.endswith("noop")]
    for name, base in pairs:
        per_round = [a["rps"] / b["rps"] for a, b in zip(runs[name], runs[base])]
        ratios[f"{name} / {base.split(' | ')[1]}"] = {"median": statistics.median(per_round), "min": min(per_round),
                                                      "max": max(per_round)}
    for name, result in results.items():
        print(f"{name:<20} {result['rps']:>9.0f} req/s {result['texts_per_s']:>10.0f} texts/s "
              f"mean {result['mean_ms']:.2f} ms, non-2xx {result['failed']:.0f}")
    for name, ratio in ratios.items():
        print(f"{name:<32} {ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f} over rounds)")
    cut = sum(case["connections"] * case.get("streams", 1) for name, case in table.items()
              if "| grpc" in name and "noop" not in name) * args.rounds
    print(f"gRPC calls the server counted as failed, by status: {failures} (500: calls in flight when a run ended, "
          f"up to {cut})")
    if set(failures) - {"500"} or failures.get("500", 0) > cut or any(r["failed"] for r in results.values()):
        sys.exit("some requests failed: the figures are not comparable")
    if args.json:
        args.json.write_text(json.dumps({
            "command": "benchmarks/bench_grpc.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit(), "machine": machine(),
            "tool": "h2load (nghttp2) for both: --h1 for HTTP/1.1, HTTP/2 for gRPC; one thread"
                    + (f", pinned to CPU {CLIENT_CPUS}; server on CPU {SERVER_CPUS}" if PIN else ""),
            "duration_s": args.duration, "rounds": args.rounds,
            "cases": {name: {k: v for k, v in case.items() if k not in ("body", "messages", "url")}
                      for name, case in table.items()},
            "results": results, "ratios": ratios, "grpc_failed_at_server": failures, "runs": runs,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
