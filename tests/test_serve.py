"""The Ray Serve deployment on a real local Ray: HTTP through Serve's proxy, handles, batching, shared table."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import yaml

from swiftembed.grpc import tei_pb2, tei_pb2_grpc
from swiftembed.service.inputs import ApiError
from tests import api_checks
from tests.servers import free_port

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def app(ray_serve):
    from ray import serve

    from swiftembed.ray.deployment import APP_NAME, build_app

    serve.run(build_app({}), name=APP_NAME, route_prefix="/")
    yield serve.get_app_handle(APP_NAME)
    serve.delete(APP_NAME)


def test_http_through_serve_with_openai_client(ray_serve, app, embedder, embedders):
    api_checks.check_openai_client(ray_serve.url, embedder)
    api_checks.check_models(ray_serve.url, embedders)
    api_checks.check_embed_routes(ray_serve.url, embedder)
    api_checks.check_similarity_and_tokenize(ray_serve.url, embedder)
    api_checks.check_service_routes(ray_serve.url, embedder)
    api_checks.check_cohere_client(ray_serve.url, embedders)
    api_checks.check_compact_embed(ray_serve.url, embedder)


def test_chunks_through_serve_and_the_handle(ray_serve, app, embedders, sentences):
    document = " ".join(sentences[:300])
    api_checks.check_chunks(ray_serve.url, embedders, document)
    for name, embedder in embedders.items():
        chunks = app.chunk.remote(document, 64, 16, model=name).result()
        expected = embedder.chunk(document, 64, 16)
        assert [(c.start, c.end) for c in chunks] == [(c.start, c.end) for c in expected]
        np.testing.assert_allclose([c.embedding for c in chunks], [c.embedding for c in expected], atol=1e-6)


def test_sparse_through_serve_and_the_handle(ray_serve, app, embedders, sentences):
    texts = [*sentences[:10], "", "the the the dog dog"]
    api_checks.check_sparse(ray_serve.url, embedders, texts)
    for name, embedder in embedders.items():
        got, want = app.sparse.remote(texts, model=name).result(), embedder.sparse(texts)
        assert [v.indices.tolist() for v in got] == [v.indices.tolist() for v in want]
        np.testing.assert_allclose(np.concatenate([v.values for v in got]), np.concatenate([v.values for v in want]))
        one = app.sparse.remote(texts[0], model=name).result()
        assert one.indices.tolist() == want[0].indices.tolist()


def test_token_vectors_through_serve_and_the_handle(ray_serve, app, embedders, sentences):
    texts = [*sentences[:10], "", "the the the dog dog"]
    api_checks.check_token_vectors(ray_serve.url, embedders, texts)
    for name, embedder in embedders.items():
        got, want = app.embed_all.remote(texts, model=name).result(), embedder.token_vectors(texts)
        assert [len(rows) for rows in got] == [len(rows) for rows in want]
        np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want))
        np.testing.assert_array_equal(app.embed_all.remote(texts[0], model=name).result(), want[0])
        scores = app.similarity.remote(texts[0], texts[1:5], model=name, mode="maxsim").result()
        np.testing.assert_allclose(scores, embedder.similarity(texts[0], texts[1:5], mode="maxsim"), atol=1e-6)
    with pytest.raises(ApiError) as raised:
        app.similarity.remote("a", "b", mode="colbert").result()
    assert raised.value.status == 422 and raised.value.param == "mode"


def test_jsonl_through_serve(ray_serve, app, embedder):
    api_checks.check_jsonl(ray_serve.url, embedder, lines=1500)


def test_bad_requests_through_serve(ray_serve, app):
    api_checks.check_bad_requests(ray_serve.url)


def test_handle_api(app, embedder):
    texts = ["a dog runs", "a puppy is running", "stock market report"]
    np.testing.assert_allclose(app.embed.remote(texts).result(), embedder.encode(texts), atol=1e-6)
    np.testing.assert_allclose(app.embed.remote("a dog runs").result(), embedder.encode("a dog runs"), atol=1e-6)
    small = app.embed.remote(texts, dimensions=16, precision="ubinary").result()
    np.testing.assert_array_equal(small, embedder.encode(texts, dimensions=16, precision="ubinary"))
    sims = app.similarity.remote("a dog runs", texts).result()
    np.testing.assert_allclose(sims, embedder.similarity("a dog runs", texts), atol=1e-6)
    info = app.info.remote().result()
    assert info["table_source"] == "object_store" and info["checksum"] == embedder.checksum
    with pytest.raises(ApiError, match="'dimensions' must be an integer from 1 to 256") as error:
        app.embed.remote(texts, dimensions=999).result()
    assert error.value.status == 422 and error.value.code == "invalid_value"


def test_handle_and_http_refuse_the_same_inputs(ray_serve, app):
    """One set of input rules for both ways in: a handle call raises the ApiError HTTP answers with."""
    cases = [
        ({"texts": []}, {}),
        ({"texts": ["fine", 7]}, {}),
        ({"texts": ["a dog"], "dimensions": 0}, {"dimensions": 0}),
        ({"texts": ["a dog"], "normalize": "yes"}, {"normalize": "yes"}),
        ({"texts": ["a dog"], "model": "text-embedding-3-small"}, {"model": "text-embedding-3-small"}),
    ]
    for body, options in cases:
        answer = httpx.post(ray_serve.url + "/embed", json=body, timeout=30)
        with pytest.raises(ApiError) as error:
            app.embed.remote(body["texts"], **options).result()
        want = answer.json()["error"]
        assert (error.value.status, error.value.code, error.value.message) == (
            answer.status_code, want["code"], want["message"]), body


def test_handle_api_selects_the_model(app, embedders):
    texts = ["not a good movie", "a dog runs"]
    for name, embedder in embedders.items():
        for asked in (name, embedder.model_id):
            np.testing.assert_allclose(app.embed.remote(texts, model=asked).result(), embedder.encode(texts),
                                       atol=1e-6)
        info = app.info.remote(model=name).result()
        assert info["checksum"] == embedder.checksum and info["table_source"] == "object_store"
    assert [m["name"] for m in app.info.remote().result()["models"]] == list(embedders)
    with pytest.raises(ApiError, match="not served here") as error:
        app.embed.remote(texts, model="text-embedding-3-small").result()
    assert error.value.status == 404 and error.value.code == "model_not_found"
    # Concurrent calls for both models: every answer has its own model's rows.
    calls = [(name, f"text {i}") for i in range(40) for name in embedders]
    responses = [app.embed.remote([text], model=name) for name, text in calls]
    for (name, text), response in zip(calls, responses):
        np.testing.assert_allclose(response.result(), embedders[name].encode([text]), atol=1e-6)


def test_concurrent_requests_share_batches_and_get_their_own_rows(ray_serve, app, embedder):
    texts = [f"request number {i} about topic {i % 7}" for i in range(96)]
    responses = [app.embed.remote([text, text.upper()]) for text in texts]
    for text, response in zip(texts, responses):
        np.testing.assert_allclose(response.result(), embedder.encode([text, text.upper()]), atol=1e-6)

    async def over_http() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=ray_serve.url, timeout=60) as client:
            return await asyncio.gather(*[client.post("/embed", json={"texts": [t]}) for t in texts])

    # Batching starts when a probe (every 64th request) finds company in the replica's loop: a burst may pass
    # without one, so bursts repeat (each checked) until a batch has formed.
    for _ in range(10):
        for text, response in zip(texts, asyncio.run(over_http())):
            assert response.status_code == 200
            np.testing.assert_allclose(response.json()["embeddings"][0], embedder.encode(text), atol=1e-6)
        if app.info.remote().result()["largest_batch_requests"] > 1:
            break
    assert app.info.remote().result()["largest_batch_requests"] > 1


def test_config_deploy_and_live_user_config(ray_serve, embedder):
    """deploy/serve-local.yaml through Serve's config path (as `serve deploy` and RayService use it): the builder
    runs in a short-lived task, replicas still share the table, and a user_config change reconfigures in place."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    spec = yaml.safe_load((ROOT / "deploy" / "serve-local.yaml").read_text())
    application = {**spec["applications"][0], "name": "live", "route_prefix": "/live"}
    port, grpc_port = free_port(), free_port()
    assert application["args"]["http_port"] == 8000  # the replica ingress: moved to a free port here
    assert application["args"]["grpc_port"] == 50051  # and TEI's gRPC API beside it
    application["args"].update(http_port=port, grpc_port=grpc_port)
    client = _get_global_client()

    def deploy(user_config: dict) -> dict:
        application["deployments"][0]["user_config"] = user_config
        client.deploy_apps(ServeDeploySchema.model_validate({"applications": [application]}), _blocking=True)
        from ray import serve

        handle = serve.get_app_handle("live")
        deadline = time.monotonic() + 60
        while (info := handle.info.remote().result())["batch"] != user_config and time.monotonic() < deadline:
            time.sleep(0.2)
        return info

    try:
        before = deploy({"max_batch_size": 64, "batch_wait_timeout_s": 0.0})
        assert before["table_source"] == "object_store"
        after = deploy({"max_batch_size": 8, "batch_wait_timeout_s": 0.002})
        assert after["batch"] == {"max_batch_size": 8, "batch_wait_timeout_s": 0.002}
        assert after["pid"] == before["pid"]  # reconfigured in place, not restarted
        for url in (f"http://127.0.0.1:{port}", f"{ray_serve.url}/live"):  # the replica's own server, and HAProxy
            r = httpx.post(f"{url}/embed", json={"texts": ["live"]}, timeout=30)
            assert r.status_code == 200
            np.testing.assert_allclose(r.json()["embeddings"][0], embedder.encode("live"), atol=1e-6)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            answer = tei_pb2_grpc.EmbedStub(channel).Embed(tei_pb2.EmbedRequest(inputs="live", normalize=True))
            np.testing.assert_allclose(answer.embeddings, embedder.encode("live"), atol=1e-6)
    finally:
        client.delete_apps(["live"], blocking=True)


def test_metrics_exported_with_sub_millisecond_buckets(ray_serve, app):
    for _ in range(20):
        httpx.post(f"{ray_serve.url}/embed", json={"texts": ["metrics please"]})
    wanted = [
        'ray_swiftembed_request_latency_ms_bucket{',
        'ray_swiftembed_requests_total{',
        'ray_swiftembed_texts_total{',
        'ray_swiftembed_tokens_total{',
        'ray_swiftembed_batch_size_bucket{',
        'ray_swiftembed_kernel_time_ms_bucket{',
        'ray_serve_http_request_latency_ms_bucket{',
    ]
    deadline = time.monotonic() + 60
    while True:
        text = httpx.get(ray_serve.metrics_url, timeout=10).text
        missing = [name for name in wanted if name not in text]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing, missing
    ours = [line for line in text.splitlines() if line.startswith("ray_swiftembed_request_latency_ms_bucket{")]
    assert any('le="0.5"' in line and 'route="/embed"' in line for line in ours)
    serve_latency = [line for line in text.splitlines() if line.startswith("ray_serve_http_request_latency_ms_bucket{")]
    assert any('le="0.5"' in line for line in serve_latency)


def test_semantic_search_example(ray_serve, app):
    from ray import serve

    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        import semantic_search
    finally:
        sys.path.remove(str(ROOT / "deploy"))
    serve.run(semantic_search.build_app({"embedder_cpus": 0.25}), name="search", route_prefix="/search")
    try:
        r = httpx.get(f"{ray_serve.url}/search", params={"q": "I forgot my password", "k": 2}, timeout=30)
        assert r.status_code == 200
        results = r.json()["results"]
        assert len(results) == 2 and "password" in results[0]["text"]
        assert httpx.get(f"{ray_serve.url}/search", timeout=30).status_code == 422
    finally:
        serve.delete("search")


def uss_kib(pid: int) -> int:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty"))


def test_four_replicas_share_one_table_per_model_and_survive_owner_death(ray_serve, embedder, embedders):
    """Every replica serves both bundled models: each model's table is one copy per node, not one per replica."""
    import ray
    from ray import serve

    from swiftembed.ray.deployment import SwiftEmbedDeployment
    from swiftembed.ray.tables import NAMESPACE, owner_name

    def replicas(share: bool, name: str, models: list[str] | None = None) -> list[dict]:
        deployment = SwiftEmbedDeployment.options(num_replicas=4, ray_actor_options={"num_cpus": 0.05})
        serve.run(deployment.bind(models=models, share_table=share), name=name, route_prefix=f"/{name}")
        handle = serve.get_app_handle(name)
        seen: dict[int, dict] = {}
        for _ in range(200):
            info = handle.info.remote().result()
            seen[info["pid"]] = info
            if len(seen) == 4:
                break
        assert len(seen) == 4
        handle.embed.remote(["warm every page of the table"] * 8).result()
        return list(seen.values())

    try:
        shared = replicas(True, "shared")
        private = replicas(False, "private")
        one_model = replicas(True, "one", ["potion-base-8M"])
        assert {m["table_source"] for r in shared for m in r["models"]} == {"object_store"}
        # Touch every model's whole table in every replica so private copies are fully resident.
        for name in ("shared", "private", "one"):
            handle = serve.get_app_handle(name)
            for model in handle.info.remote().result()["models"]:
                tokenizer = embedders[model["name"]].tokenizer
                every_third_token = " ".join(tokenizer.id_to_token(i) or "" for i in range(5, tokenizer.vocab_size, 3))
                for _ in range(8):
                    handle.embed.remote([every_third_token], model=model["name"]).result()
        shared_uss, private_uss, one_uss = (np.median([uss_kib(r["pid"]) for r in group])
                                            for group in (shared, private, one_model))
        tables_kib = sum(e.table.nbytes for e in embedders.values()) / 1024
        print(f"\nFIGURES uss_kib: one model shared {one_uss:.0f}, two models shared {shared_uss:.0f}, "
              f"two models private {private_uss:.0f}, tables {tables_kib:.0f}")
        # Replicas on the shared tables hold far less private memory than ones with their own copies of both: each
        # model's table is one copy per node. (What a second model costs a replica, its tokenizer and small arrays,
        # is the FIGURES line's `two models shared - one model shared`; docs/operations.md quotes it.)
        assert private_uss - shared_uss > 0.6 * tables_kib, (shared_uss, private_uss)

        owner = ray.get_actor(owner_name(embedder.checksum), namespace=NAMESPACE)
        ray.kill(owner)
        handle = serve.get_app_handle("shared")
        for _ in range(20):
            got = handle.embed.remote(["still serving"]).result()
            np.testing.assert_allclose(got, embedder.encode(["still serving"]), atol=1e-6)
        # A replica started after the owner died makes a new owner and still shares the table.
        serve.run(SwiftEmbedDeployment.options(num_replicas=1, ray_actor_options={"num_cpus": 0.1}).bind(), name="late",
                  route_prefix="/late")
        assert serve.get_app_handle("late").info.remote().result()["table_source"] == "object_store"
        ray.get_actor(owner_name(embedder.checksum), namespace=NAMESPACE)
    finally:
        for name in ("shared", "private", "one", "late"):
            serve.delete(name)


@pytest.mark.parametrize("config", ["serve-local.yaml", "serve-cluster.yaml", "serve-search.yaml"])
def test_serve_configs_validate_and_build(config):
    from ray.serve.schema import ServeDeploySchema

    from swiftembed.ray.deployment import build_app

    spec = yaml.safe_load((ROOT / "deploy" / config).read_text())
    schema = ServeDeploySchema.model_validate(spec)
    assert schema.applications
    for application in spec["applications"]:
        if application["import_path"] == "swiftembed.ray.deployment:build_app":
            built = build_app(application.get("args"))
            assert built is not None
            deployment = application["deployments"][0]
            assert deployment["name"] == "SwiftEmbed"
            assert "max_ongoing_requests" in deployment and "max_queued_requests" in deployment
