"""The benchmarks' baselines are what they claim: the FastAPI + model2vec server answers the model's vectors, the
standalone no-op sits at our front door, and docs/benchmarks.md is exactly what report.py makes of its JSON."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_fastapi_baseline_answers_the_models_vectors(embedder):
    pytest.importorskip("model2vec")
    from fastapi.testclient import TestClient

    from benchmarks.fastapi_app import app

    texts = ["A man with a hard hat is dancing.", "naïve café", ""]
    with TestClient(app) as client:
        r = client.post("/embed", json={"texts": texts})
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["embeddings"], embedder.encode(texts), atol=1e-6)
    # Each encoding it answers (benchmarks/bench_encodings.py) holds the same vectors.
    with TestClient(app) as client:
        raw = client.post("/embed", json={"texts": texts}, headers={"Accept": "application/octet-stream"}).content
        packed = client.post("/embed", json={"texts": texts, "precision": "ubinary"}).json()["embeddings"]
        scaled = client.post("/embed", json={"texts": texts, "precision": "int8"}).json()["embeddings"]
        b64 = client.post("/v1/embeddings", json={"input": texts, "encoding_format": "base64"}).json()["data"]
    np.testing.assert_allclose(np.frombuffer(raw, "<f4").reshape(3, -1), embedder.encode(texts), atol=1e-6)
    np.testing.assert_array_equal(packed, embedder.encode(texts, precision="ubinary"))
    assert np.abs(np.asarray(scaled) / 127 - embedder.encode(texts)).max() < 0.01
    decoded = [np.frombuffer(__import__("base64").b64decode(d["embedding"]), "<f4") for d in b64]
    np.testing.assert_allclose(decoded, embedder.encode(texts), atol=1e-6)


def test_standalone_noop_goes_through_the_front_door():
    from benchmarks.noop_app import ANSWERS, app

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.post("/noop", content=b'{"texts": ["x"]}', headers={"X-Shape": "batch-100"})

    r = asyncio.run(post())
    assert r.status_code == 200 and r.content == ANSWERS["batch-100"][0]
    assert "x-processing-time-ms" in r.headers and "x-token-count" in r.headers  # the front door's headers


def test_benchmarks_doc_is_generated_from_the_committed_run():
    from benchmarks.report import render

    run = ROOT / "benchmarks" / "results" / "paths.json"
    data = json.loads(run.read_text())
    assert {"commit", "date", "machine", "command", "results"} <= set(data)
    results = ROOT / "benchmarks" / "results"
    before, chunks, ab = results / "before.json", results / "chunks.json", results / "ab-restructure.json"
    encodings = results / "encodings.json"
    expected = render(
        data, "benchmarks/results/paths.json",
        json.loads(before.read_text()) if before.exists() else None, "benchmarks/results/before.json",
        json.loads(chunks.read_text()) if chunks.exists() else None, "benchmarks/results/chunks.json",
        "benchmarks/results/ab-restructure.json" if ab.exists() else "",
        json.loads(encodings.read_text()) if encodings.exists() else None, "benchmarks/results/encodings.json",
    )
    assert (ROOT / "docs" / "benchmarks.md").read_text() == expected, "run benchmarks/report.py"


def test_grpc_noop_answers_the_real_answers_size(embedder):
    """benchmarks/noop_grpc.py, the gRPC baseline, answers Embed and EmbedStream with a message the size of the real
    server's answer, and bench_grpc.py's pre-encoded bodies are the framing grpcio itself sends."""
    import subprocess
    import sys

    import grpc

    from benchmarks.bench_grpc import frame
    from swiftembed.grpc import tei_pb2 as pb
    from swiftembed.grpc import tei_pb2_grpc as rpc
    from tests.servers import free_port, stop_process

    port = free_port()
    noop = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "noop_grpc.py"), str(port)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert noop.stdout is not None and noop.stdout.readline().startswith("READY")
        text = "A man with a hard hat is dancing number 0."
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = rpc.EmbedStub(channel)
            answer = stub.Embed(pb.EmbedRequest(inputs=text, normalize=True))
            streamed = list(stub.EmbedStream(iter([pb.EmbedRequest(inputs=text)] * 3)))
        real = pb.EmbedResponse(embeddings=embedder.encode(text).tolist(),
                                metadata=pb.Metadata(compute_chars=len(text), compute_tokens=11, total_time_ns=12_345))
        assert abs(answer.ByteSize() - real.ByteSize()) <= 4 and len(streamed) == 3  # varint widths of the times
    finally:
        stop_process(noop)
    message = pb.EmbedRequest(inputs=text).SerializeToString()
    assert frame(message) == b"\x00" + len(message).to_bytes(4, "big") + message


def test_grpc_results_hold_every_case_and_ratio():
    data = json.loads((ROOT / "benchmarks" / "results" / "grpc.json").read_text())
    assert {"command", "date", "commit", "machine", "tool", "results", "ratios", "runs"} <= set(data)
    assert {"single | http", "single | grpc", "batch-100 | http", "batch-100 | grpc"} <= set(data["results"])
    assert "single | grpc / http" in data["ratios"]
    # No call failed but those in flight when a timed run ended (h2load cuts them; the server counts them as 500).
    cut = sum(case["connections"] * case.get("streams", 1) for name, case in data["cases"].items()
              if name.endswith(("| grpc", "grpc-mux"))) * data["rounds"]
    assert set(data["grpc_failed_at_server"]) <= {"500"} and data["grpc_failed_at_server"].get("500", 0) <= cut
