"""Checks of the HTTP API that hold on every server (standalone uvicorn, Ray Serve): shared by their tests."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import orjson
import pytest

TEXTS = ["hello world", "A man with a hard hat is dancing.", "", "Café naïve 東京 🙂", "word " * 600]
ATOL = 1e-6


def check_openai_client(url: str, embedder) -> None:
    """The official client, default (base64) and float encodings, dimensions, token ids."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
    expected = embedder.encode(TEXTS)
    for fmt in (None, "float", "base64"):
        kwargs = {} if fmt is None else {"encoding_format": fmt}
        result = client.embeddings.create(model="potion-base-8M", input=TEXTS, **kwargs)
        # The client decodes base64 itself when it chose it (the default); asked for explicitly, it hands it over.
        rows = [decode_base64(i.embedding) if fmt == "base64" else i.embedding for i in result.data]
        got = np.array(rows, dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=ATOL)
        assert [item.index for item in result.data] == list(range(len(TEXTS)))
        assert result.usage.prompt_tokens == sum(map(len, embedder.tokenize(TEXTS)))
        assert result.model == embedder.model_id
    small = client.embeddings.create(model="potion-base-8M", input="hello world", dimensions=32,
                                     encoding_format="float")
    np.testing.assert_allclose(small.data[0].embedding, embedder.encode(["hello world"], dimensions=32)[0], atol=ATOL)
    ids = embedder.tokenize(["hello world", "dancing man"])
    by_ids = client.embeddings.create(model="minishlab/potion-base-8M", input=ids, encoding_format="float")
    np.testing.assert_allclose(
        [d.embedding for d in by_ids.data], embedder.encode(["hello world", "dancing man"]), atol=ATOL
    )


def check_embed_routes(url: str, embedder) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        r = http.post("/embed", json={"texts": TEXTS})
        assert r.status_code == 200, r.text
        body = r.json()
        np.testing.assert_allclose(body["embeddings"], embedder.encode(TEXTS), atol=ATOL)
        assert body["dimensions"] == 256 and body["tokens"] == int(r.headers["x-token-count"])
        assert float(r.headers["x-processing-time-ms"]) >= 0

        tei = http.post("/embed", json={"inputs": "hello world", "normalize": False})
        assert tei.status_code == 200
        np.testing.assert_allclose(tei.json(), [embedder.encode(["hello world"], normalize=False)[0]], rtol=1e-6)

        octet = {"Accept": "application/octet-stream"}
        raw = http.post("/embed", json={"texts": TEXTS, "dimensions": 64}, headers=octet)
        assert raw.status_code == 200 and raw.headers["content-type"] == "application/octet-stream"
        count, dim = int(raw.headers["x-embedding-count"]), int(raw.headers["x-embedding-dimension"])
        assert (count, dim) == (len(TEXTS), 64)
        vectors = np.frombuffer(raw.content, dtype="<f4").reshape(count, dim)
        np.testing.assert_allclose(vectors, embedder.encode(TEXTS, dimensions=64), atol=ATOL)


def check_jsonl(url: str, embedder, lines: int = 2500) -> None:
    texts = [f"line number {i} says something" for i in range(lines)]
    body = b"".join(b'{"text": "%s"}\n' % t.encode() for t in texts[:1000])
    body += b"this is not json\n\n" + b"".join(b'{"text": "%s"}\n' % t.encode() for t in texts[1000:])
    with httpx.Client(base_url=url, timeout=60) as http:
        with http.stream("POST", "/embed/jsonl", content=body, headers={"Content-Type": "application/jsonl"}) as r:
            assert r.status_code == 200
            import json

            answers = [json.loads(line) for line in r.iter_lines() if line]
    assert len(answers) == lines + 1
    assert [a["index"] for a in answers] == list(range(lines + 1))
    assert "error" in answers[1000] and "embedding" not in answers[1000]
    good = [a["embedding"] for a in answers if "embedding" in a]
    np.testing.assert_allclose(good, embedder.encode(texts), atol=ATOL)
    # What /embed takes in its body, the streamed route takes in its query.
    few = b"".join(b'{"text": "%s"}\n' % t.encode() for t in texts[:50])
    for query, options in (("?dimensions=64&precision=int8", {"dimensions": 64, "precision": "int8"}),
                           ("?precision=ubinary&model=potion-base-8M", {"precision": "ubinary"}),
                           ("?normalize=false&dimensions=32", {"normalize": False, "dimensions": 32})):
        r = httpx.post(f"{url}/embed/jsonl{query}", content=few, headers={"Content-Type": "application/jsonl"},
                       timeout=30)
        rows = [orjson.loads(line)["embedding"] for line in r.text.splitlines() if line]
        np.testing.assert_allclose(rows, embedder.encode(texts[:50], **options), atol=ATOL)
    bad = httpx.post(f"{url}/embed/jsonl?dimensions=0", content=few, headers={"Content-Type": "application/jsonl"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "dimensions"


def check_similarity_and_tokenize(url: str, embedder) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        targets = ["a dog runs", "a puppy runs", "tax law"]
        r = http.post("/similarity", json={"source": "a dog runs", "targets": targets})
        assert r.status_code == 200
        scores = r.json()["scores"]
        np.testing.assert_allclose(scores, embedder.similarity("a dog runs", targets)[0], atol=ATOL)
        assert scores[1] > scores[2]
        pairs = http.post("/similarity", json={"pairs": [["a", "a"], ["dog", "cat"]]}).json()["scores"]
        assert abs(pairs[0] - 1) < 1e-5 and len(pairs) == 2
        tok = http.post("/tokenize", json={"texts": ["Hello world!"]}).json()
        assert tok["ids"] == embedder.tokenize(["Hello world!"])
        assert tok["tokens"] == [["hello", "world", "!"]]


def check_service_routes(url: str, embedder) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/health").json() == {"status": "ok"}
        info = http.get("/info").json()
        assert info["model"] == embedder.model_id and info["checksum"] == embedder.checksum
        assert info["dimension"] == 256 and info["max_tokens"] == 512 and info["limits"]["max_texts"] >= 1
        spec = http.get("/openapi.json").json()
        assert set(spec["paths"]) == {"/v1/embeddings", "/embed", "/v2/embed", "/embed/jsonl", "/embed/chunks",
                                      "/embed_sparse", "/embed_all", "/similarity", "/tokenize",
                                      "/health", "/info", "/metrics", "/openapi.json", "/v1/models",
                                      "/v1/models/{model}"}


BAD_REQUESTS: list[tuple[str, str, bytes, dict[str, str], int]] = [
    # (name, path, body, headers, status)
    ("malformed json", "/embed", b'{"texts": ["a"', {}, 400),
    ("not an object", "/embed", b'["a"]', {}, 422),
    ("null texts", "/embed", b'{"texts": null}', {}, 422),
    ("empty list", "/embed", b'{"texts": []}', {}, 422),
    ("nested lists", "/embed", b'{"texts": [["a"]]}', {}, 422),
    ("number text", "/embed", b'{"texts": [1]}', {}, 422),
    ("missing field", "/embed", b'{"text": "a"}', {}, 422),
    ("dimensions zero", "/embed", b'{"texts": ["a"], "dimensions": 0}', {}, 422),
    ("dimensions too big", "/embed", b'{"texts": ["a"], "dimensions": 257}', {}, 422),
    ("dimensions not int", "/embed", b'{"texts": ["a"], "dimensions": "8"}', {}, 422),
    ("bad normalize", "/embed", b'{"inputs": "a", "normalize": "yes"}', {}, 422),
    ("lone surrogate", "/embed", b'{"texts": ["\\ud800"]}', {}, 400),
    ("invalid utf-8", "/embed", b'{"texts": ["\xff\xfe"]}', {}, 400),
    ("wrong content type", "/embed", b'{"texts": ["a"]}', {"Content-Type": "text/plain"}, 415),
    ("openai missing input", "/v1/embeddings", b'{"model": "potion-base-8M"}', {}, 422),
    ("openai bad format", "/v1/embeddings", b'{"input": "a", "encoding_format": "int8"}', {}, 422),
    ("openai token id out of vocab", "/v1/embeddings", b'{"input": [1, 99999999]}', {}, 422),
    ("openai negative token id", "/v1/embeddings", b'{"input": [[-1]]}', {}, 422),
    ("openai mixed list", "/v1/embeddings", b'{"input": ["a", 1]}', {}, 422),
    ("similarity bad pairs", "/similarity", b'{"pairs": [["a"]]}', {}, 422),
    ("jsonl wrong type", "/embed/jsonl", b'{"text": "a"}\n', {"Content-Type": "application/json"}, 415),
    ("unknown route", "/nope", b"{}", {}, 404),
    # Reliability (issue 6): every kind of bad input the service must refuse with its documented 4xx.
    ("truncated json", "/embed", b'{"texts": ["a", "b"], "dimen', {}, 400),
    ("empty body", "/embed", b"", {}, 400),
    ("null body", "/embed", b"null", {}, 422),
    ("deeply nested json", "/embed", b'{"texts": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}, 400),
    ("texts a string", "/embed", b'{"texts": "a"}', {}, 422),
    ("null in texts", "/embed", b'{"texts": ["a", null]}', {}, 422),
    ("object in texts", "/embed", b'{"texts": [{"text": "a"}]}', {}, 422),
    ("raw NUL byte", "/embed", b'{"texts": ["a\x00b"]}', {}, 400),
    ("lone low surrogate", "/embed", b'{"texts": ["a\\udc00b"]}', {}, 400),
    ("overlong utf-8", "/embed", b'{"texts": ["\xc0\xaf"]}', {}, 400),
    ("dimensions negative", "/embed", b'{"texts": ["a"], "dimensions": -5}', {}, 422),
    ("dimensions fractional", "/embed", b'{"texts": ["a"], "dimensions": 8.5}', {}, 422),
    ("dimensions huge", "/embed", b'{"texts": ["a"], "dimensions": 1e300}', {}, 422),
    ("too many texts", "/embed", b'{"texts": [' + b",".join([b'"a"'] * 2049) + b"]}", {}, 413),
    ("tei empty list", "/embed", b'{"inputs": []}', {}, 422),
    ("openai null input", "/v1/embeddings", b'{"input": null}', {}, 422),
    ("openai empty list", "/v1/embeddings", b'{"input": []}', {}, 422),
    ("openai empty token list", "/v1/embeddings", b'{"input": [[]]}', {}, 422),
    ("openai nested token lists", "/v1/embeddings", b'{"input": [[[1]]]}', {}, 422),
    ("openai token id over 64 bits", "/v1/embeddings", b'{"input": [18446744073709551616]}', {}, 422),
    ("openai fractional token id", "/v1/embeddings", b'{"input": [1, 2.5]}', {}, 422),
    ("openai dimensions negative", "/v1/embeddings", b'{"input": "a", "dimensions": -1}', {}, 422),
    ("openai dimensions too big", "/v1/embeddings", b'{"input": "a", "dimensions": 100000}', {}, 422),
    ("openai empty encoding format", "/v1/embeddings", b'{"input": "a", "encoding_format": ""}', {}, 422),
    ("openai model not a string", "/v1/embeddings", b'{"input": "a", "model": ["/etc/passwd"]}', {}, 422),
    ("openai too many texts", "/v1/embeddings", b'{"input": [' + b",".join([b'"a"'] * 2049) + b"]}", {}, 413),
    ("form content type", "/v1/embeddings", b"input=a", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ("similarity missing targets", "/similarity", b'{"source": "a"}', {}, 422),
    ("similarity empty targets", "/similarity", b'{"source": "a", "targets": []}', {}, 422),
    ("tokenize wrong type", "/tokenize", b'{"texts": 5}', {}, 422),
    # Several models (issue 18): an unknown model is 404 on every route that takes one.
    ("openai unknown model", "/v1/embeddings", b'{"input": "a", "model": "text-embedding-3-small"}', {}, 404),
    ("embed unknown model", "/embed", b'{"texts": ["a"], "model": "nope"}', {}, 404),
    ("tei unknown model", "/embed", b'{"inputs": "a", "model": "nope"}', {}, 404),
    ("similarity unknown model", "/similarity", b'{"source": "a", "targets": ["b"], "model": "nope"}', {}, 404),
    ("tokenize unknown model", "/tokenize", b'{"texts": ["a"], "model": "nope"}', {}, 404),
    ("embed model not a string", "/embed", b'{"texts": ["a"], "model": 5}', {}, 422),
    # Chunks (issue 19): sizes that cannot work are 422.
    ("chunks overlap not below size", "/embed/chunks", b'{"texts": ["a b"], "chunk_tokens": 4, "overlap_tokens": 4}',
     {}, 422),
    ("chunks size zero", "/embed/chunks", b'{"texts": ["a b"], "chunk_tokens": 0}', {}, 422),
    ("chunks size over max_tokens", "/embed/chunks", b'{"texts": ["a b"], "chunk_tokens": 513}', {}, 422),
    ("chunks negative overlap", "/embed/chunks", b'{"texts": ["a"], "chunk_tokens": 4, "overlap_tokens": -1}', {}, 422),
    ("chunks missing size", "/embed/chunks", b'{"texts": ["a"]}', {}, 422),
    ("chunks texts a string", "/embed/chunks", b'{"texts": "a", "chunk_tokens": 4}', {}, 422),
    ("chunks unknown model", "/embed/chunks", b'{"texts": ["a"], "chunk_tokens": 4, "model": "nope"}', {}, 404),
]


def check_bad_requests(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        for name, path, body, headers, status in BAD_REQUESTS:
            r = http.post(path, content=body, headers={"Content-Type": "application/json", **headers})
            assert r.status_code == status, (name, r.status_code, r.text)
            error = r.json()["error"]
            assert (error if isinstance(error, str) else error["message"]), name  # TEI-shaped requests: a string
            assert "x-processing-time-ms" in r.headers, name
        assert http.get("/embed").status_code == 405
        # Still healthy and correct afterwards.
        assert http.get("/health").status_code == 200
        assert http.post("/embed", json={"texts": ["still fine"]}).status_code == 200


def check_models(url: str, embedders: dict, default: str = "potion-base-8M") -> None:
    """Every served model by short name and full id gives its own library vectors on every route; an unknown model
    is 404 `model_not_found` naming the served ones; /v1/models lists them; shapes without a model use the default."""
    import json

    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
    texts = ["not a good movie", "A man with a hard hat is dancing.", ""]
    listed = client.models.list().data
    assert [m.id for m in listed] == [e.model_id for e in embedders.values()]
    assert [m.model_extra["name"] for m in listed] == list(embedders)
    assert [m.model_extra["default"] for m in listed] == [name == default for name in embedders]
    with httpx.Client(base_url=url, timeout=30) as http:
        for name, embedder in embedders.items():
            expected = embedder.encode(texts)
            assert client.models.retrieve(embedder.model_id).id == embedder.model_id
            assert client.models.retrieve(name).id == embedder.model_id
            for asked in dict.fromkeys((name, embedder.model_id)):
                result = client.embeddings.create(model=asked, input=texts)
                np.testing.assert_allclose(np.array([d.embedding for d in result.data]), expected, atol=ATOL)
                assert result.model == embedder.model_id
                body = http.post("/embed", json={"texts": texts, "model": asked}).json()
                np.testing.assert_allclose(body["embeddings"], expected, atol=ATOL)
                assert body["model"] == embedder.model_id
            jsonl = b"".join(b'{"text": "%s"}\n' % t.encode() for t in texts)
            r = http.post("/embed/jsonl", params={"model": name}, content=jsonl,
                          headers={"Content-Type": "application/jsonl"})
            rows = [json.loads(line)["embedding"] for line in r.text.splitlines() if line]
            np.testing.assert_allclose(rows, expected, atol=ATOL)
            scores = http.post("/similarity", json={"source": texts[0], "targets": texts[1:2], "model": name}).json()
            np.testing.assert_allclose(scores["scores"], embedder.similarity(texts[0], texts[1:2])[0], atol=ATOL)
            tokens = http.post("/tokenize", json={"texts": texts[:1], "model": name}).json()
            assert tokens["ids"] == embedder.tokenize(texts[:1])
            info = http.get("/info", params={"model": embedder.model_id}).json()
            assert (info["name"], info["checksum"], info["default"]) == (name, embedder.checksum, name == default)
        tei = http.post("/embed", json={"inputs": texts}).json()  # TEI's shape has no model: the default
        np.testing.assert_allclose(tei, embedders[default].encode(texts), atol=ATOL)
        assert http.get("/info").json()["name"] == default
        assert [m["name"] for m in http.get("/info").json()["models"]] == list(embedders)
        missing = http.post("/v1/embeddings", json={"input": "a", "model": "text-embedding-3-small"})
        assert missing.status_code == 404
        error = missing.json()["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert all(name in error["message"] for name in embedders)
        assert http.get("/v1/models/text-embedding-3-small").status_code == 404
        assert http.get("/info", params={"model": "nope"}).status_code == 404
        r = http.post("/embed/jsonl", params={"model": "nope"}, content=b'{"text": "a"}\n',
                      headers={"Content-Type": "application/jsonl"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    try:
        client.embeddings.create(model="text-embedding-3-small", input="a")
        raise AssertionError("an unknown model must be refused")
    except NotFoundError as exc:
        assert exc.status_code == 404 and exc.code == "model_not_found"


def check_chunks(url: str, embedders: dict, document: str) -> None:
    """/embed/chunks on a long document, for every served model: each chunk's vector is what the library's encode
    gives for `document[start:end]` (and what Embedder.chunk gives); base64 answers decode to the same."""
    with httpx.Client(base_url=url, timeout=60) as http:
        for name, embedder in embedders.items():
            body = {"texts": [document, "", "one"], "chunk_tokens": 48, "overlap_tokens": 12, "model": name}
            r = http.post("/embed/chunks", json=body)
            assert r.status_code == 200, r.text[:300]
            answer = r.json()
            assert answer["model"] == embedder.model_id and int(r.headers["x-token-count"]) == answer["tokens"]
            long, empty, one = answer["chunks"]
            assert len(long) > 5 and empty == [] and [(c["start"], c["end"]) for c in one] == [(0, 3)]
            texts = [document[c["start"] : c["end"]] for c in long]
            np.testing.assert_allclose([c["embedding"] for c in long], embedder.encode(texts), atol=ATOL)
            library = embedder.chunk(document, 48, 12)
            assert [(c.start, c.end) for c in library] == [(c["start"], c["end"]) for c in long]
            starts = [c["start"] for c in long]
            assert starts == sorted(starts) and long[-1]["end"] == len(document.rstrip())
            b64 = http.post("/embed/chunks", json={**body, "encoding_format": "base64", "dimensions": 32}).json()
            got = [decode_base64(c["embedding"]) for c in b64["chunks"][0]]
            np.testing.assert_allclose(got, embedder.encode(texts, dimensions=32), atol=ATOL)
            # Accept: application/jsonl streams one line per chunk, the same chunks in text order
            with http.stream("POST", "/embed/chunks", json=body, headers={"accept": "application/jsonl"}) as r:
                assert r.status_code == 200 and r.headers["content-type"] == "application/jsonl"
                lines = [orjson.loads(line) for line in r.iter_lines() if line]
            want = [(t, k, c["start"], c["end"]) for t, text in enumerate(answer["chunks"]) for k, c in enumerate(text)]
            assert [(x["text"], x["chunk"], x["start"], x["end"]) for x in lines] == want
            np.testing.assert_allclose([x["embedding"] for x in lines],
                                       [c["embedding"] for text in answer["chunks"] for c in text], atol=ATOL)
            r = http.post("/embed/chunks", json={**body, "encoding_format": "base64"},
                          headers={"accept": "application/x-ndjson"})
            streamed = [decode_base64(orjson.loads(line)["embedding"]) for line in r.text.splitlines()]
            np.testing.assert_allclose(streamed[: len(texts)], embedder.encode(texts), atol=ATOL)


def check_sparse(url: str, embedders: dict, texts: list[str]) -> None:
    """/embed_sparse in TEI's shape, for every served model: per text `{"index", "value"}` entries equal to the
    library's `Embedder.sparse`; a single string is a list of one; TEI's error shape for a bad request."""
    with httpx.Client(base_url=url, timeout=60) as http:
        for name, embedder in embedders.items():
            r = http.post("/embed_sparse", json={"inputs": texts, "model": name, "truncate": True})
            assert r.status_code == 200, r.text[:300]
            got = r.json()
            assert len(got) == len(texts) and int(r.headers["x-token-count"]) == sum(map(len, embedder.tokenize(texts)))
            for entries, want in zip(got, embedder.sparse(texts)):
                assert [e["index"] for e in entries] == want.indices.tolist()
                np.testing.assert_allclose([e["value"] for e in entries], want.values, rtol=1e-6)
            one = http.post("/embed_sparse", json={"inputs": texts[0], "model": name}).json()
            assert one == got[:1]
        bad = [({}, 422), ({"inputs": []}, 422), ({"inputs": [1]}, 422), ({"inputs": "x", "truncate": 1}, 422),
               ({"inputs": "x", "model": "nope"}, 404)]
        for body, status in bad:
            r = http.post("/embed_sparse", json=body)
            assert r.status_code == status and "error" in r.json() and "error_type" in r.json(), (body, r.text)


def check_token_vectors(url: str, embedders: dict, texts: list[str]) -> None:
    """/embed_all in TEI's shape for every served model: per text its token vectors, equal to the library's
    `Embedder.token_vectors` (so to model2vec's `encode_as_sequence`); /similarity's maxsim mode equal to
    `Embedder.similarity(mode="maxsim")`; TEI's errors for bad input."""
    with httpx.Client(base_url=url, timeout=60) as http:
        for name, embedder in embedders.items():
            r = http.post("/embed_all", json={"inputs": texts, "model": name, "truncate": True})
            assert r.status_code == 200, r.text[:300]
            got, want = r.json(), embedder.token_vectors(texts)
            assert [len(rows) for rows in got] == [len(rows) for rows in want]
            assert int(r.headers["x-token-count"]) == sum(map(len, want))
            for rows, expected in zip(got, want):
                if len(expected):  # orjson writes float32's shortest form: read back as float32, the same bits
                    np.testing.assert_array_equal(np.asarray(rows, dtype=np.float32), expected)
            assert http.post("/embed_all", json={"inputs": texts[0], "model": name}).json() == got[:1]
            targets = [t for t in texts if t][:5]
            r = http.post("/similarity", json={"source": texts[0], "targets": targets, "mode": "maxsim", "model": name})
            assert r.status_code == 200, r.text[:300]
            np.testing.assert_allclose(r.json()["scores"], embedder.similarity(texts[0], targets, mode="maxsim")[0],
                                       atol=1e-6)
            pairs = [[targets[0], targets[0]], [targets[1], ""]]
            r = http.post("/similarity", json={"pairs": pairs, "mode": "maxsim", "model": name})
            assert r.status_code == 200 and abs(r.json()["scores"][0] - 1) < 1e-5 and r.json()["scores"][1] == 0
        for body, status in [({}, 422), ({"inputs": []}, 422), ({"inputs": [1]}, 422),
                             ({"inputs": "x", "model": "nope"}, 404)]:
            r = http.post("/embed_all", json=body)
            assert r.status_code == status and "error" in r.json() and "error_type" in r.json(), (body, r.text)
        r = http.post("/similarity", json={"source": "a", "targets": ["b"], "mode": "colbert"})
        assert r.status_code == 422 and r.json()["error"]["param"] == "mode", r.text


def check_cohere_client(url: str, embedders) -> None:
    """Cohere's official SDK (ClientV2) pointed at us, unchanged: every embedding type equal to the library's
    `precision` output, output_dimension, both models, and Cohere's errors raised as the SDK's own."""
    import cohere

    client = cohere.ClientV2(api_key="unused", base_url=url, timeout=30)
    kinds = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
    for name, embedder in embedders.items():
        for dimensions in (None, 64):
            extra = {} if dimensions is None else {"output_dimension": dimensions}
            answer = client.embed(texts=TEXTS, model=name, input_type="search_document", embedding_types=kinds,
                                  **extra)
            got = answer.embeddings
            expected = embedder.encode(TEXTS, dimensions=dimensions)
            np.testing.assert_allclose(np.array(got.float_, dtype=np.float32), expected, atol=ATOL)
            np.testing.assert_allclose(np.stack([decode_base64(v) for v in got.base64]), expected, atol=ATOL)
            for kind in ("int8", "uint8", "binary", "ubinary"):
                np.testing.assert_array_equal(np.array(getattr(got, kind)),
                                              embedder.encode(TEXTS, dimensions=dimensions, precision=kind))
            assert answer.texts == TEXTS and answer.meta.billed_units.input_tokens == sum(
                map(len, embedder.tokenize(TEXTS)))
    query = client.embed(texts=["a dog runs"], model="potion-base-8M", input_type="search_query",
                         embedding_types=["float"])
    np.testing.assert_allclose(query.embeddings.float_[0], embedders["potion-base-8M"].encode("a dog runs"),
                               atol=ATOL)
    with pytest.raises(cohere.errors.NotFoundError, match="not served here"):
        client.embed(texts=["x"], model="embed-v4.0", input_type="search_query", embedding_types=["float"])
    whole = client.embed(texts=["a dog runs"], model="potion-base-8M", input_type="search_query",
                         embedding_types=["float"], max_tokens=512, truncate="END")  # the model's own limit
    np.testing.assert_allclose(whole.embeddings.float_, query.embeddings.float_, atol=ATOL)
    with pytest.raises(cohere.errors.UnprocessableEntityError, match="max_tokens"):
        client.embed(texts=["x"], model="potion-base-8M", input_type="search_query", embedding_types=["float"],
                     max_tokens=8)
    with pytest.raises(cohere.errors.UnprocessableEntityError, match="truncate"):
        client.embed(texts=["x"], model="potion-base-8M", input_type="search_query", embedding_types=["float"],
                     truncate="START")


def check_compact_embed(url: str, embedder) -> None:
    """`precision` on /embed, as JSON and as raw bytes (dtype and shape in headers), equal to the library's."""
    texts = TEXTS[:4]
    with httpx.Client(base_url=url, timeout=30) as http:
        for precision, dtype, width in (("int8", np.int8, 256), ("uint8", np.uint8, 256), ("binary", np.int8, 32),
                                        ("ubinary", np.uint8, 32), ("float32", "<f4", 256)):
            expected = embedder.encode(texts, precision=precision)
            body = {"texts": texts, "precision": precision}
            as_json = http.post("/embed", json=body)
            assert as_json.status_code == 200, as_json.text
            np.testing.assert_allclose(np.array(as_json.json()["embeddings"]), expected, atol=ATOL)
            raw = http.post("/embed", json=body, headers={"Accept": "application/octet-stream"})
            assert raw.headers["x-embedding-dtype"] == ("float32-le" if precision == "float32" else precision)
            assert int(raw.headers["x-embedding-dimension"]) == width and len(raw.content) == len(texts) * width * (
                4 if precision == "float32" else 1)
            np.testing.assert_allclose(np.frombuffer(raw.content, dtype=dtype).reshape(len(texts), width), expected,
                                       atol=ATOL)
        small = http.post("/embed", json={"texts": texts, "precision": "ubinary", "dimensions": 64}).json()
        np.testing.assert_array_equal(small["embeddings"], embedder.encode(texts, dimensions=64, precision="ubinary"))
        bad = http.post("/embed", json={"texts": texts, "precision": "float16"})
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "precision"


def decode_base64(value: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(value), dtype="<f4")
