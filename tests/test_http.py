"""The HTTP API on a real uvicorn on 127.0.0.1, driven by the official openai client and httpx."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests import api_checks
from tests.servers import standalone_server


@pytest.fixture(scope="module")
def url():
    with standalone_server() as base:
        yield base


@pytest.fixture(scope="module")
def strict_url():
    env = {"SWIFTEMBED_API_KEY": "s3cret", "SWIFTEMBED_MAX_BODY_BYTES": "4096", "SWIFTEMBED_MAX_TEXTS": "4",
           "SWIFTEMBED_MAX_TOKEN_VECTORS": "8"}
    with standalone_server("--max-chars", "20", "--long-text", "reject", env=env) as base:
        yield base


def test_openai_client(url, embedder):
    api_checks.check_openai_client(url, embedder)


def test_embed_routes(url, embedder):
    api_checks.check_embed_routes(url, embedder)


def test_jsonl_streams_line_for_line(url, embedder):
    api_checks.check_jsonl(url, embedder)


def test_similarity_and_tokenize(url, embedder):
    api_checks.check_similarity_and_tokenize(url, embedder)


def test_service_routes(url, embedder):
    api_checks.check_service_routes(url, embedder)


def test_models_by_name(url, embedders):
    api_checks.check_models(url, embedders)


def test_chunks(url, embedders, sentences):
    api_checks.check_chunks(url, embedders, " ".join(sentences[:300]))


def test_sparse(url, embedders, sentences):
    api_checks.check_sparse(url, embedders, [*sentences[:20], "", "the the the dog dog", "naïve café [CLS]"])


def test_token_vectors(url, embedders, sentences):
    api_checks.check_token_vectors(url, embedders, [*sentences[:20], "", "the the the dog dog", "naïve café [CLS]"])


def test_cohere_client(url, embedders):
    api_checks.check_cohere_client(url, embedders)


def test_compact_vectors_on_embed(url, embedder):
    api_checks.check_compact_embed(url, embedder)


def test_bad_requests(url):
    api_checks.check_bad_requests(url)


def test_metrics_exposition(url):
    httpx.post(f"{url}/embed", json={"texts": ["count me", "and me"]})
    text = httpx.get(f"{url}/metrics").text
    assert 'swiftembed_requests_total{model="potion-base-8M",route="/embed",status="200"}' in text
    assert "swiftembed_request_latency_ms_bucket" in text and 'le="0.5"' in text
    assert 'swiftembed_texts_total{model="potion-base-8M",route="/embed"}' in text
    httpx.post(f"{url}/embed", json={"texts": ["sts"], "model": "swiftembed-potion-sts-8M"})
    httpx.post(f"{url}/embed", json={"texts": ["x"], "model": "text-embedding-3-small"})
    text = httpx.get(f"{url}/metrics").text
    assert 'swiftembed_requests_total{model="swiftembed-potion-sts-8M",route="/embed",status="200"}' in text
    assert 'swiftembed_requests_total{model="none",route="/embed",status="404"}' in text
    assert "text-embedding-3-small" not in text  # a client's name never becomes a label value
    # Every metric of the one table, batch metrics included, as Ray's replicas export them (less `ray_`).
    from swiftembed.service.metrics import METRICS

    for metric in METRICS:
        name = metric.name if metric.kind == "histogram" else f"{metric.name}_total"
        assert f"# TYPE {name} {metric.kind}" in text, metric.name
    assert 'swiftembed_batch_size_bucket{le="2.0",model="potion-base-8M"}' in text


def test_body_that_stops_midway(url):
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"texts\": [\"abc")
    assert httpx.post(f"{url}/embed", json={"texts": ["after"]}).status_code == 200


def test_auth(strict_url):
    assert httpx.get(f"{strict_url}/health").status_code == 200
    assert httpx.get(f"{strict_url}/metrics").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        r = httpx.post(f"{strict_url}/embed", json={"texts": ["a"]}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"
    ok = httpx.post(f"{strict_url}/embed", json={"texts": ["a"]}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    from openai import AuthenticationError, OpenAI

    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{strict_url}/v1", api_key="wrong", max_retries=0).embeddings.create(model="potion-base-8M",
                                                                                             input="a")
    client = OpenAI(base_url=f"{strict_url}/v1", api_key="s3cret")
    assert client.embeddings.create(model="potion-base-8M", input="a").data


def test_limits(strict_url):
    auth = {"Authorization": "Bearer s3cret"}
    big = httpx.post(f"{strict_url}/embed", json={"texts": ["x" * 10 for _ in range(400)]}, headers=auth)
    assert big.status_code == 413 and "4096 bytes" in big.json()["error"]["message"]
    many = httpx.post(f"{strict_url}/embed", json={"texts": ["a"] * 5}, headers=auth)
    assert many.status_code == 413 and many.json()["error"]["code"] == "too_many_texts"
    long = httpx.post(f"{strict_url}/embed", json={"texts": ["y" * 21]}, headers=auth)
    assert long.status_code == 422 and "20" in long.json()["error"]["message"]
    tei = httpx.post(f"{strict_url}/embed", json={"inputs": ["y" * 21]}, headers=auth)
    assert tei.status_code == 422 and tei.json()["error_type"] == "Validation"
    vectors = httpx.post(f"{strict_url}/embed_all", json={"inputs": ["one two three four", "five six seven eight"]},
                         headers=auth)
    assert vectors.status_code == 200 and [len(rows) for rows in vectors.json()] == [4, 4]
    vectors = httpx.post(f"{strict_url}/embed_all", json={"inputs": ["a b c d e f g h i j"]},
                         headers=auth)
    assert vectors.status_code == 413 and vectors.json()["error_type"] == "Validation", vectors.text
    info = httpx.get(f"{strict_url}/info", headers=auth).json()
    assert info["limits"] == {"max_texts": 4, "max_chars": 20, "long_text": "reject", "max_body_bytes": 4096,
                              "max_jsonl_bytes": 268435456, "max_jsonl_lines": 1000000, "max_document_chars": 4000000,
                              "max_token_vectors": 8, "body_chunk_timeout_s": 5.0, "body_timeout_s": 10.0,
                              "max_batch_size": 64, "batch_wait_timeout_s": 0.0, "grpc_port": None, "auth": True}
    spec = httpx.get(f"{strict_url}/openapi.json", headers=auth)
    assert "s3cret" not in spec.text
    # The spec says what the front door does: a key everywhere but on the two open paths.
    assert spec.json()["security"] == [{"bearer": []}]
    paths = spec.json()["paths"]
    assert paths["/health"]["get"]["security"] == [] and paths["/metrics"]["get"]["security"] == []
    assert "security" not in paths["/embed"]["post"] and "security" not in paths["/info"]["get"]


def test_body_deadline_answers_its_reader_and_leaves_other_cancellations_alone(embedder):
    """The swept body deadline (BodyDeadlines) turns a stalled read into 408 and takes its cancellation back; a
    cancellation from anyone else (a client gone, a server stopping) still cancels the request."""
    import asyncio

    from swiftembed.core.catalog import Catalog
    from swiftembed.http.routes import EmbeddingApi
    from swiftembed.service.batcher import Batcher
    from swiftembed.service.inputs import ApiError
    from swiftembed.service.metrics import NoMetrics
    from swiftembed.service.service import EmbeddingService
    from swiftembed.service.settings import Settings

    settings = Settings(body_chunk_timeout_s=0.2, body_timeout_s=0.5)
    api = EmbeddingApi(EmbeddingService(Catalog.of(embedder), Batcher(), settings), NoMetrics())
    scope = {"type": "http", "headers": [(b"content-type", b"application/json")]}

    async def stalled_receive() -> dict:
        await asyncio.sleep(3600)
        return {}

    async def dripping_receive() -> dict:  # a piece every 0.1 s, forever: the whole-body deadline ends it
        await asyncio.sleep(0.1)
        return {"type": "http.request", "body": b" ", "more_body": True}

    async def reader(receive) -> tuple[str, int]:
        try:
            await api.front.read_json(scope, receive)
        except ApiError as error:
            task = asyncio.current_task()
            assert task is not None
            return error.status, task.cancelling()
        return "read", 0

    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await reader(stalled_receive) == (408, 0)  # cut at the 0.2 s chunk deadline
        assert 0.2 <= loop.time() - start < 0.6
        start = loop.time()
        assert await reader(dripping_receive) == (408, 0)  # cut at the 0.5 s body deadline
        assert 0.5 <= loop.time() - start < 0.9
        other = asyncio.create_task(reader(stalled_receive))
        await asyncio.sleep(0.05)
        other.cancel()
        with pytest.raises(asyncio.CancelledError):
            await other

    asyncio.run(main())
