"""The standalone backend batches concurrent requests: same vectors as alone, every option honoured, one kernel
call per model present."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np

from swiftembed.core.catalog import Catalog
from swiftembed.http.routes import create_app
from swiftembed.service.batcher import Batcher


def _client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def _post_all(app, bodies: list[dict]) -> list[httpx.Response]:
    async with _client(app) as client:
        return await asyncio.gather(*(client.post("/embed", json=body) for body in bodies))


def test_concurrent_requests_share_a_batch_and_keep_their_options(embedder, sentences):
    backend = Batcher(probe_every=1)  # every request probes: batches form whenever requests overlap
    app = create_app(embedder, backend=backend)
    texts = sentences[:24]
    bodies = [{"texts": [t]} for t in texts[:12]]
    bodies += [{"texts": texts[12:15]}, {"texts": [texts[15]], "normalize": False},
               {"texts": [texts[16]], "dimensions": 32}, {"inputs": texts[17]},
               {"inputs": [texts[18], texts[19]], "normalize": False}]
    responses = asyncio.run(_post_all(app, bodies))
    assert backend.largest_batch > 1
    assert all(r.status_code == 200 for r in responses)
    for body, response in zip(bodies[:12], responses):
        assert np.array_equal(np.asarray(response.json()["embeddings"], np.float32), embedder.encode(body["texts"]))
    got = [np.asarray(r.json()["embeddings"] if isinstance(r.json(), dict) else r.json(), np.float32)
           for r in responses[12:]]
    np.testing.assert_array_equal(got[0], embedder.encode(texts[12:15]))
    np.testing.assert_allclose(got[1], embedder.encode([texts[15]], normalize=False), rtol=1e-6)
    np.testing.assert_array_equal(got[2], embedder.encode([texts[16]], dimensions=32))
    np.testing.assert_array_equal(got[3], embedder.encode([texts[17]]))
    np.testing.assert_allclose(got[4], embedder.encode(texts[18:20], normalize=False), rtol=1e-6)


def test_a_lone_request_is_not_held_for_a_batch(embedder):
    backend = Batcher(probe_every=1_000)
    app = create_app(embedder, backend=backend)
    for _ in range(3):
        (response,) = asyncio.run(_post_all(app, [{"texts": ["one text"]}]))
        assert response.status_code == 200
    assert backend.largest_batch == 0  # pooled at once, never through a batch


def test_batching_stops_at_a_batch_of_one(embedder):
    backend = Batcher(probe_every=2)
    app = create_app(embedder, backend=backend)
    asyncio.run(_post_all(app, [{"texts": [f"text {i}"]} for i in range(8)]))
    assert backend.largest_batch > 1
    assert backend.batching
    (response,) = asyncio.run(_post_all(app, [{"texts": ["alone"]}]))
    assert response.status_code == 200
    assert not backend.batching  # the lone request went through a batch of one, which ends batching


def test_a_failing_batch_answers_each_request_with_a_json_500(embedder, monkeypatch):
    backend = Batcher(probe_every=1)
    app = create_app(embedder, backend=backend)

    def broken(*args, **kwargs):
        raise RuntimeError("kernel failure")

    app = create_app(Catalog.of(embedder), backend=backend)  # its own model, so that only this test sees the break
    monkeypatch.setattr(embedder, "pool_texts", broken)
    responses = asyncio.run(_post_all(app, [{"texts": [f"text {i}"]} for i in range(5)]))
    assert [r.status_code for r in responses] == [500] * 5
    assert all(r.json()["error"]["code"] == "internal_error" for r in responses)
    monkeypatch.undo()
    (response,) = asyncio.run(_post_all(app, [{"texts": ["after"]}]))
    assert response.status_code == 200


def test_a_mixed_model_burst_is_batched_per_model_and_each_answer_has_its_models_rows(embedders, sentences):
    calls: list[tuple[str, int, int]] = []
    backend = Batcher(probe_every=1, observe=lambda model, texts, requests, ms: calls.append((model, texts, requests)))
    catalog = Catalog.of(*embedders.values())
    app = create_app(catalog, backend=backend)
    names = [m.name for m in catalog] + [m.model_id for m in catalog] + [None]
    bodies = []
    for i, text in enumerate(sentences[:30]):
        name = names[i % len(names)]
        bodies.append({"texts": [text]} if name is None else {"texts": [text], "model": name})
    responses = asyncio.run(_post_all(app, bodies))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    for body, response in zip(bodies, responses):
        served = catalog.get(body.get("model"))
        assert response.json()["model"] == served.model_id
        assert np.array_equal(np.asarray(response.json()["embeddings"], np.float32),
                              served.embedder.encode(body["texts"])), body
    batched = [call for call in calls if call[2] > 1]
    assert {model for model, _, _ in batched} == {m.name for m in catalog}  # each model's requests shared calls
    assert sum(requests for _, _, requests in calls) == len(bodies)  # every request in exactly one call, by model
