"""TEI's gRPC API (swiftembed/grpc/) on real servers on 127.0.0.1: `swiftembed serve --standalone --grpc-port`, and
Ray Serve replicas sharing a gRPC port. The client is generated from the same proto TEI's clients come from; each
answer is checked against the library and against what HTTP answers for the same input."""

from __future__ import annotations

import asyncio
import filecmp
import os
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from swiftembed.grpc import tei_pb2 as pb
from swiftembed.grpc import tei_pb2_grpc as rpc
from tests.servers import free_port, standalone_server, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
PROTO = "swiftembed/grpc/tei.proto"
GENERATED = ("tei_pb2.py", "tei_pb2.pyi", "tei_pb2_grpc.py")
KEY = "s3cret"
TEXTS = ["", "Hello world!", "A man with a hard hat is dancing.", "Café naïve résumé Ångström", "東京は日本の首都です",
         "qzxvbnm xqjzk", "the the the dog dog", "word " * 700]


class Servers:
    """One server's HTTP base URL and gRPC channel."""

    def __init__(self, url: str, grpc_port: int) -> None:
        self.url = url
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.info, self.embed, self.tokenize = (rpc.InfoStub(self.channel), rpc.EmbedStub(self.channel),
                                                rpc.TokenizeStub(self.channel))


@pytest.fixture(scope="module")
def server():
    port = free_port()
    with standalone_server("--grpc-port", str(port)) as url:
        servers = Servers(url, port)
        yield servers
        servers.channel.close()


@pytest.fixture(scope="module")
def strict():
    """API key, 4 texts a request, 20 characters a text (longer ones refused), 8 token vectors a request."""
    port = free_port()
    env = {"SWIFTEMBED_API_KEY": KEY, "SWIFTEMBED_MAX_TEXTS": "4", "SWIFTEMBED_MAX_TOKEN_VECTORS": "8"}
    with standalone_server("--grpc-port", str(port), "--max-chars", "20", "--long-text", "reject", env=env) as url:
        servers = Servers(url, port)
        yield servers
        servers.channel.close()


AUTH = (("authorization", f"Bearer {KEY}"),)


def error_of(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_generated_modules_are_what_the_proto_gives(tmp_path):
    """The committed tei_pb2*.py are protoc's output for tei.proto, as its header says to regenerate them."""
    try:
        from grpc_tools import protoc
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("grpcio-tools is missing (the dev extra installs it)")
        pytest.skip("grpcio-tools is not installed (pip install -e '.[dev]')")
    args = ["protoc", f"-I{ROOT}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}", str(ROOT / PROTO)]
    assert protoc.main(args) == 0
    for name in GENERATED:
        assert filecmp.cmp(tmp_path / "swiftembed" / "grpc" / name, ROOT / "swiftembed" / "grpc" / name,
                           shallow=False), f"{name} is not what {PROTO} gives: regenerate it"


def test_the_proto_is_teis_api():
    """TEI's package, services and methods; what SwiftEmbed serves is a subset of it."""
    services = {s.full_name: [m.name for m in s.methods] for s in pb.DESCRIPTOR.services_by_name.values()}
    assert services == {
        "tei.v1.Info": ["Info"],
        "tei.v1.Embed": ["Embed", "EmbedStream", "EmbedSparse", "EmbedSparseStream", "EmbedAll", "EmbedAllStream"],
        "tei.v1.Predict": ["Predict", "PredictPair", "PredictStream", "PredictPairStream"],
        "tei.v1.Rerank": ["Rerank", "RerankStream"],
        "tei.v1.Tokenize": ["Tokenize", "TokenizeStream", "Decode", "DecodeStream"],
    }
    fields = {f.name: f.number for f in pb.EmbedRequest.DESCRIPTOR.fields}
    assert fields == {"inputs": 1, "truncate": 2, "normalize": 3, "truncation_direction": 4, "prompt_name": 5}


def check_embed(servers: Servers, embedders: dict, metadata: tuple = ()) -> None:
    """Embed and EmbedStream equal `Embedder.encode` for every served model (chosen by `model` metadata; none: the
    default), normalized or not as asked (TEI's proto default: not)."""
    default = next(iter(embedders))
    for name, embedder in [(None, embedders[default]), *embedders.items()]:
        meta = metadata + ((("model", name),) if name else ())
        for normalize in (True, False):
            want = embedder.encode(TEXTS, normalize=normalize)
            for text, row in zip(TEXTS, want):
                got = servers.embed.Embed(pb.EmbedRequest(inputs=text, normalize=normalize), metadata=meta)
                np.testing.assert_allclose(got.embeddings, row, atol=1e-6)
                assert got.metadata.compute_chars == len(text)
                assert got.metadata.compute_tokens == len(embedder.tokenize(text)[0])
            requests = [pb.EmbedRequest(inputs=t, normalize=normalize, truncate=True) for t in TEXTS * 10]
            answers = list(servers.embed.EmbedStream(iter(requests), metadata=meta))
            assert len(answers) == len(requests)  # one per message, in order
            np.testing.assert_allclose([a.embeddings for a in answers], np.tile(want, (10, 1)), atol=1e-6)


def test_embed_unary_and_streamed_equal_the_library(server, embedders):
    check_embed(server, embedders)


def test_sparse_equals_http(server, embedders):
    for name in embedders:
        meta = (("model", name),)
        want = httpx.post(f"{server.url}/embed_sparse", json={"inputs": TEXTS, "model": name}, timeout=30).json()
        unary = [servers_sparse(server.embed.EmbedSparse(pb.EmbedSparseRequest(inputs=t), metadata=meta))
                 for t in TEXTS]
        streamed = [servers_sparse(a) for a in server.embed.EmbedSparseStream(
            iter([pb.EmbedSparseRequest(inputs=t) for t in TEXTS]), metadata=meta)]
        for got in (unary, streamed):
            assert [[e["index"] for e in text] for text in got] == [[e["index"] for e in text] for text in want]
            np.testing.assert_allclose([e["value"] for text in got for e in text],
                                       [e["value"] for text in want for e in text], rtol=1e-6)


def servers_sparse(answer: pb.EmbedSparseResponse) -> list[dict]:
    return [{"index": v.index, "value": v.value} for v in answer.sparse_embeddings]


def test_tokenize_equals_http(server, embedders):
    for name in embedders:
        meta = (("model", name),)
        want = httpx.post(f"{server.url}/tokenize", json={"texts": TEXTS, "model": name}, timeout=30).json()
        unary = [server.tokenize.Tokenize(pb.EncodeRequest(inputs=t), metadata=meta) for t in TEXTS]
        streamed = list(server.tokenize.TokenizeStream(iter([pb.EncodeRequest(inputs=t) for t in TEXTS]),
                                                       metadata=meta))
        for got in (unary, streamed):
            assert [[t.id for t in a.tokens] for a in got] == want["ids"]
            assert [[t.text for t in a.tokens] for a in got] == want["tokens"]
            assert not any(t.special or t.HasField("start") for a in got for t in a.tokens)


def test_embed_all_equals_http(server, embedders):
    for name in embedders:
        meta = (("model", name),)
        want = httpx.post(f"{server.url}/embed_all", json={"inputs": TEXTS[:6], "model": name}, timeout=30).json()
        unary = [server.embed.EmbedAll(pb.EmbedAllRequest(inputs=t), metadata=meta) for t in TEXTS[:6]]
        streamed = list(server.embed.EmbedAllStream(iter([pb.EmbedAllRequest(inputs=t) for t in TEXTS[:6]]),
                                                    metadata=meta))
        for got in (unary, streamed):
            for answer, rows in zip(got, want):
                assert len(answer.token_embeddings) == len(rows)
                if rows:
                    np.testing.assert_allclose([t.embeddings for t in answer.token_embeddings], rows, atol=1e-6)


def test_info_agrees_with_http(server, embedders):
    http = httpx.get(f"{server.url}/info", timeout=30).json()
    info = server.info.Info(pb.InfoRequest())
    assert (info.model_id, info.model_sha, info.model_dtype) == (http["model"], http["checksum"], http["table_dtype"])
    assert info.model_type == pb.MODEL_TYPE_EMBEDDING and info.version == http["version"]
    assert info.max_input_length == http["max_tokens"] and info.max_client_batch_size == http["limits"]["max_texts"]
    assert info.max_batch_tokens == http["limits"]["max_token_vectors"]
    assert http["limits"]["grpc_port"] == int(server.channel._channel.target().decode().rsplit(":", 1)[1])
    other = list(embedders)[1]
    assert server.info.Info(pb.InfoRequest(), metadata=(("model", other),)).model_id == embedders[other].model_id


def http_error(url: str, body: dict, headers: dict | None = None, route: str = "/embed") -> tuple[int, str]:
    """HTTP's status and message for the same input as TEI's body on `route`."""
    r = httpx.post(f"{url}{route}", json=body, headers=headers or {"Authorization": f"Bearer {KEY}"}, timeout=30)
    answer = r.json()
    return r.status_code, answer["error"]["message"] if isinstance(answer["error"], dict) else answer["error"]


def test_errors_have_teis_codes_and_https_messages(strict, server):
    code = grpc.StatusCode
    # A text over max_chars with long_text: reject: HTTP 422, gRPC INVALID_ARGUMENT, the same message.
    status, message = http_error(strict.url, {"inputs": "y" * 21})
    for call in (lambda: strict.embed.Embed(pb.EmbedRequest(inputs="y" * 21), metadata=AUTH),
                 lambda: strict.embed.EmbedSparse(pb.EmbedSparseRequest(inputs="y" * 21), metadata=AUTH),
                 lambda: strict.tokenize.Tokenize(pb.EncodeRequest(inputs="y" * 21), metadata=AUTH)):
        error = error_of(call)
        assert (status, error.code(), error.details()) == (422, code.INVALID_ARGUMENT, message)
    # No key, or a wrong one: HTTP 401, gRPC UNAUTHENTICATED, on every service.
    status, message = http_error(strict.url, {"inputs": "a"}, headers={"Authorization": "Bearer wrong"})
    for meta in ((), (("authorization", "Bearer wrong"),), (("authorization", KEY),)):
        for call in (lambda m=meta: strict.embed.Embed(pb.EmbedRequest(inputs="a"), metadata=m),
                     lambda m=meta: strict.info.Info(pb.InfoRequest(), metadata=m),
                     lambda m=meta: list(strict.embed.EmbedStream(iter([pb.EmbedRequest(inputs="a")]), metadata=m))):
            error = error_of(call)
            assert (status, error.code(), error.details()) == (401, code.UNAUTHENTICATED, message)
    assert strict.info.Info(pb.InfoRequest(), metadata=AUTH).max_client_batch_size == 4
    # An unknown model: HTTP 404, gRPC NOT_FOUND.
    status, message = http_error(strict.url, {"inputs": "a", "model": "text-embedding-3-small"})
    error = error_of(lambda: strict.embed.Embed(pb.EmbedRequest(inputs="a"),
                                                metadata=(*AUTH, ("model", "text-embedding-3-small"))))
    assert (status, error.code(), error.details()) == (404, code.NOT_FOUND, message)
    # More token vectors than max_token_vectors: HTTP 413, gRPC INVALID_ARGUMENT (TEI's code for validation).
    status, message = http_error(strict.url, {"inputs": "a b c d e f g h i j"}, route="/embed_all")
    error = error_of(lambda: strict.embed.EmbedAll(pb.EmbedAllRequest(inputs="a b c d e f g h i j"), metadata=AUTH))
    assert (status, error.code(), error.details()) == (413, code.INVALID_ARGUMENT, message)
    # One text per message: max_texts bounds HTTP's lists, not a stream's length.
    answers = list(strict.embed.EmbedStream(iter([pb.EmbedRequest(inputs="a dog")] * 10), metadata=AUTH))
    assert len(answers) == 10
    # A stream answers the messages before a refused one, then ends with its error.
    stream = strict.embed.EmbedStream(iter([pb.EmbedRequest(inputs="ok"), pb.EmbedRequest(inputs="fine"),
                                            pb.EmbedRequest(inputs="z" * 30), pb.EmbedRequest(inputs="never")]),
                                      metadata=AUTH)
    got = []
    error = error_of(lambda: got.extend(stream))
    assert len(got) == 2 and error.code() == code.INVALID_ARGUMENT and "30 characters" in error.details()
    # What TEI lets a client ask that a static model cannot do is refused, not ignored.
    # HTTP's TEI routes refuse them with the same message.
    for request, body in ((pb.EmbedRequest(inputs="a", prompt_name="query"), {"inputs": "a", "prompt_name": "query"}),
                          (pb.EmbedRequest(inputs="a", truncation_direction=pb.TRUNCATION_DIRECTION_LEFT),
                           {"inputs": "a", "truncation_direction": "Left"})):
        error = error_of(lambda r=request: server.embed.Embed(r))
        for route in ("/embed", "/embed_sparse", "/embed_all"):
            assert http_error(server.url, body, route=route) == (422, error.details())
        assert error.code() == code.INVALID_ARGUMENT
    # An empty text is what HTTP makes of {"inputs": ""}: the zero vector.
    empty = httpx.post(f"{server.url}/embed", json={"inputs": ""}, timeout=30).json()
    assert server.embed.Embed(pb.EmbedRequest(inputs="", normalize=True)).embeddings == pytest.approx(empty[0])
    # TEI's services for other model types are not registered.
    predict = rpc.PredictStub(server.channel)
    assert error_of(lambda: predict.Predict(pb.PredictRequest(inputs="a"))).code() == code.UNIMPLEMENTED
    decode = error_of(lambda: server.tokenize.Decode(pb.DecodeRequest(ids=[1, 2])))
    assert decode.code() == code.UNIMPLEMENTED


def test_calls_count_in_the_http_metrics(strict):
    """Every call (every streamed message) is a request in /metrics, under grpc:<Service>/<Method> with the status
    HTTP gives the same outcome."""
    def count(route: str, status: int) -> float:
        text = httpx.get(f"{strict.url}/metrics", timeout=30).text
        prefix = f'swiftembed_requests_total{{model="potion-base-8M",route="{route}",status="{status}"}}'
        unresolved = f'swiftembed_requests_total{{model="none",route="{route}",status="{status}"}}'
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith((prefix, unresolved)))

    before = {key: count(*key) for key in [("grpc:Embed/Embed", 200), ("grpc:Embed/Embed", 422),
                                           ("grpc:Embed/Embed", 401), ("grpc:Embed/EmbedStream", 200)]}
    for _ in range(3):
        strict.embed.Embed(pb.EmbedRequest(inputs="counted"), metadata=AUTH)
    error_of(lambda: strict.embed.Embed(pb.EmbedRequest(inputs="y" * 21), metadata=AUTH))
    error_of(lambda: strict.embed.Embed(pb.EmbedRequest(inputs="a")))
    list(strict.embed.EmbedStream(iter([pb.EmbedRequest(inputs="a")] * 5), metadata=AUTH))
    after = {key: count(*key) for key in before}
    assert {key: after[key] - before[key] for key in before} == {
        ("grpc:Embed/Embed", 200): 3, ("grpc:Embed/Embed", 422): 1, ("grpc:Embed/Embed", 401): 1,
        ("grpc:Embed/EmbedStream", 200): 5}
    tokens = httpx.get(f"{strict.url}/metrics", timeout=30).text
    assert 'swiftembed_tokens_total{model="potion-base-8M",route="grpc:Embed/Embed"}' in tokens


def test_at_capacity_calls_are_refused_as_http_refuses_them(embedder):
    """Requests in flight at max_concurrency (HTTP's or gRPC's: one load): RESOURCE_EXHAUSTED, TEI's code for
    overloaded, with HTTP's 503 message; in-process, on a real grpc.aio server and service."""
    from swiftembed.core.catalog import Catalog
    from swiftembed.grpc.server import GrpcServer
    from swiftembed.http.routes import build_api
    from swiftembed.service.inputs import OVERLOADED
    from swiftembed.service.metrics import NoMetrics
    from swiftembed.service.settings import Settings

    async def run() -> None:
        api = build_api(Catalog.of(embedder), settings=Settings(max_concurrency=2), metrics=NoMetrics())
        port = free_port()
        server = await GrpcServer(api.service, api.metrics, "127.0.0.1", port).start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = rpc.EmbedStub(channel)
                assert len((await stub.Embed(pb.EmbedRequest(inputs="room"))).embeddings) == embedder.dim
                for _ in range(2):  # two requests in progress, as HTTP's front door counts them
                    api.service.load.enter()
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Embed(pb.EmbedRequest(inputs="no room"))
                assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert caught.value.details() == OVERLOADED.message
                api.service.load.exit()
                assert len((await stub.Embed(pb.EmbedRequest(inputs="room again"))).embeddings) == embedder.dim
        finally:
            await server.stop(0)

    asyncio.run(run())


def test_every_call_leaves_the_load_as_it_found_it(embedder):
    """Answered, refused, failed mid-stream and cancelled calls all leave the service's load (which bounds HTTP and
    gRPC together) where it was: in-process, on a real grpc.aio server and service."""
    from swiftembed.core.catalog import Catalog
    from swiftembed.grpc.server import GrpcServer
    from swiftembed.http.routes import build_api
    from swiftembed.service.metrics import NoMetrics
    from swiftembed.service.settings import Settings

    async def run() -> None:
        api = build_api(Catalog.of(embedder), settings=Settings(max_chars=20, long_text="reject"),
                        metrics=NoMetrics())
        port = free_port()
        server = await GrpcServer(api.service, api.metrics, "127.0.0.1", port).start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = rpc.EmbedStub(channel)
                await stub.Embed(pb.EmbedRequest(inputs="fine"))
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.Embed(pb.EmbedRequest(inputs="x" * 21))
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.Embed(pb.EmbedRequest(inputs="a"), metadata=(("model", "nope"),))
                messages = [pb.EmbedRequest(inputs="ok")] * 3 + [pb.EmbedRequest(inputs="y" * 30)]
                failing = stub.EmbedStream(iter(messages))
                with pytest.raises(grpc.aio.AioRpcError):
                    async for _ in failing:
                        pass

                async def endless():
                    while True:
                        yield pb.EmbedRequest(inputs="again and again")
                        await asyncio.sleep(0)

                cancelled = stub.EmbedStream(endless())
                for _ in range(5):  # then the client walks away mid-stream
                    await cancelled.read()
                cancelled.cancel()
                deadline = time.monotonic() + 5
                while api.service.load.in_flight and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert api.service.load.in_flight == 0
        finally:
            await server.stop(0)

    asyncio.run(run())


def test_a_taken_port_is_an_error_for_the_standalone_server(embedder):
    """Unlike replicas, a standalone server does not share its gRPC port: a second one on it fails."""
    from swiftembed.core.catalog import Catalog
    from swiftembed.grpc.server import GrpcServer
    from swiftembed.http.routes import build_api
    from swiftembed.service.metrics import NoMetrics

    async def run() -> None:
        api = build_api(Catalog.of(embedder), metrics=NoMetrics())
        port = free_port()
        first = await GrpcServer(api.service, api.metrics, "127.0.0.1", port).start()
        try:
            with pytest.raises(RuntimeError, match="cannot listen for gRPC"):
                GrpcServer(api.service, api.metrics, "127.0.0.1", port)
        finally:
            await first.stop(0)

    asyncio.run(run())


@pytest.mark.ray
def test_replicas_serve_grpc_on_a_shared_port_and_stop_with_it(ray_serve, embedders):
    """Two Serve replicas, each with its own HTTP and gRPC servers on ports they share (the replica ingress): gRPC
    answers as the library does, both replicas listen, and the port closes when the application is deleted."""
    from ray import serve

    from swiftembed.ray.deployment import SwiftEmbedDeployment
    from swiftembed.ray.ingress import listeners

    http_port, grpc_port = free_port(), free_port()
    app = SwiftEmbedDeployment.options(num_replicas=2, ray_actor_options={"num_cpus": 0.1}).bind(
        http_port=http_port, http_host="127.0.0.1", settings={"grpc_port": grpc_port})
    serve.run(app, name="grpc", route_prefix="/grpc")
    try:
        wait_healthy(f"http://127.0.0.1:{http_port}")
        deadline = time.monotonic() + 30
        while listeners(grpc_port) != 2:
            assert time.monotonic() < deadline, f"{listeners(grpc_port)} replicas listen on the gRPC port"
            time.sleep(0.2)
        servers = Servers(f"http://127.0.0.1:{http_port}", grpc_port)
        check_embed(servers, embedders)
        assert servers.info.Info(pb.InfoRequest()).max_client_batch_size == 2048
        servers.channel.close()
    finally:
        serve.delete("grpc")
    assert listeners(grpc_port) == 0
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    with pytest.raises(grpc.RpcError) as caught:
        rpc.InfoStub(channel).Info(pb.InfoRequest(), timeout=2)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()
