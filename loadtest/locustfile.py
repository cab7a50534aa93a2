"""Locust user classes for SwiftEmbed, one per request shape; each checks the answer, not only the status.

    locust -f loadtest/locustfile.py --headless -u 16 -r 16 -t 30s --host http://127.0.0.1:8000 SingleText

Targets 127.0.0.1 only (the run stops at start otherwise). `loadtest/run_load.py` steps through user counts
and writes a report; this file is also usable from locust's web UI.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import random
from urllib.parse import urlparse

from locust import FastHttpUser, between, events, task

DIM = int(os.environ.get("SWIFTEMBED_DIM", "256"))
WORDS = ("the quick brown fox jumps over a lazy dog while a man with a hard hat is dancing on the beach near "
         "old town where people sell fresh bread and coffee every morning").split()


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(5, 20))) + "."


@events.test_start.add_listener
def _loopback_only(environment, **_: object) -> None:
    host = urlparse(environment.host or "").hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"load tests target 127.0.0.1 only, not {environment.host!r}")


class SwiftEmbedUser(FastHttpUser):
    abstract = True
    wait_time = between(0, 0)

    def on_start(self) -> None:
        self.rng = random.Random()


class SingleText(SwiftEmbedUser):
    @task
    def embed_one(self) -> None:
        with self.client.post("/embed", json={"texts": [sentence(self.rng)]}, catch_response=True,
                              name="/embed single") as r:
            if r.status_code != 200:
                return r.failure(f"status {r.status_code}")
            vectors = r.json()["embeddings"]
            if len(vectors) != 1 or len(vectors[0]) != DIM:
                r.failure(f"got {len(vectors)} vectors of {len(vectors[0]) if vectors else 0} dims")


class Batch100(SwiftEmbedUser):
    @task
    def embed_batch(self) -> None:
        texts = [sentence(self.rng) for _ in range(100)]
        with self.client.post("/embed", json={"texts": texts}, catch_response=True, name="/embed batch-100") as r:
            if r.status_code != 200:
                return r.failure(f"status {r.status_code}")
            vectors = r.json()["embeddings"]
            if len(vectors) != 100 or any(len(v) != DIM for v in vectors):
                r.failure("wrong count or dimension")


class OpenAIBase64(SwiftEmbedUser):
    @task
    def embeddings(self) -> None:
        texts = [sentence(self.rng) for _ in range(8)]
        body = {"model": "potion-base-8M", "input": texts, "encoding_format": "base64"}
        with self.client.post("/v1/embeddings", json=body, catch_response=True, name="/v1/embeddings base64") as r:
            if r.status_code != 200:
                return r.failure(f"status {r.status_code}")
            data = r.json()["data"]
            sizes = [len(base64.b64decode(item["embedding"])) for item in data]
            if len(data) != 8 or any(size != 4 * DIM for size in sizes) or r.json()["usage"]["total_tokens"] <= 0:
                r.failure("wrong count, dimension or usage")


class Jsonl1000(SwiftEmbedUser):
    @task
    def embed_jsonl(self) -> None:
        body = "".join(json.dumps({"text": sentence(self.rng)}) + "\n" for _ in range(1000))
        with self.client.post("/embed/jsonl", data=body, headers={"Content-Type": "application/jsonl"},
                              catch_response=True, name="/embed/jsonl 1000") as r:
            if r.status_code != 200:
                return r.failure(f"status {r.status_code}")
            lines = [json.loads(line) for line in r.text.splitlines() if line]
            if [line.get("index") for line in lines] != list(range(1000)) or any(
                len(line.get("embedding", ())) != DIM for line in lines
            ):
                r.failure("lines missing, out of order, or wrong dimension")


class Binary(SwiftEmbedUser):
    @task
    def embed_binary(self) -> None:
        texts = [sentence(self.rng) for _ in range(100)]
        with self.client.post("/embed", json={"texts": texts}, headers={"Accept": "application/octet-stream"},
                              catch_response=True, name="/embed binary-100") as r:
            if r.status_code != 200:
                return r.failure(f"status {r.status_code}")
            count, dim = int(r.headers["X-Embedding-Count"]), int(r.headers["X-Embedding-Dimension"])
            if (count, dim) != (100, DIM) or len(r.content) != 4 * count * dim:
                r.failure(f"got {count}x{dim}, {len(r.content)} bytes")
