"""A route reads exactly the JSON fields its OpenAPI request schema declares.

Each request is written twice: its parser (http/wire.py and the routes) and its schema (http/openapi.py).
Schemathesis (tests/test_fuzz.py) checks the values they accept against each other, but it cannot see a field the
parser reads and the spec never mentions (it never sends one), nor a declared field the parser ignores. Here every
body a route parses is a dict that records which keys were read; sent with every declared field, the keys read
must be the keys declared.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from swiftembed.core.catalog import Catalog
from swiftembed.http.frontdoor import FrontDoor
from swiftembed.http.server import standalone_app

MODEL = "potion-base-8M"
TEI_EXTRAS = {"truncate": True, "truncation_direction": "Right", "prompt_name": None}
# Per route, bodies that together carry every field its schema declares (one body a shape where there are several).
BODIES: dict[str, list[dict[str, Any]]] = {
    "/v1/embeddings": [
        {"input": ["a dog"], "model": MODEL, "encoding_format": "base64", "dimensions": 8, "user": "u"},
        {"input": [[101, 102]], "model": MODEL},
    ],
    "/embed": [
        {"texts": ["a dog"], "model": MODEL, "normalize": True, "dimensions": 8, "precision": "int8"},
        {"inputs": "a dog", "model": MODEL, "normalize": True, "dimensions": 8, **TEI_EXTRAS},
    ],
    "/v2/embed": [
        {"texts": ["a dog"], "model": MODEL, "input_type": "search_query", "embedding_types": ["float", "int8"],
         "output_dimension": 8, "truncate": "END", "max_tokens": 512},
    ],
    "/embed/chunks": [
        {"texts": ["a dog runs in the park"], "model": MODEL, "chunk_tokens": 4, "overlap_tokens": 1,
         "encoding_format": "float", "normalize": True, "dimensions": 8},
    ],
    "/embed_sparse": [{"inputs": ["a dog"], "model": MODEL, **TEI_EXTRAS}],
    "/embed_all": [{"inputs": ["a dog"], "model": MODEL, **TEI_EXTRAS}],
    "/similarity": [
        {"source": "a dog", "targets": ["a cat"], "model": MODEL, "mode": "maxsim"},
        {"pairs": [["a dog", "a cat"]], "model": MODEL, "mode": "mean"},
    ],
    "/tokenize": [{"texts": ["a dog"], "model": MODEL}, {"inputs": "a dog", "model": MODEL}],
}


class Recording(dict):
    """A parsed body that remembers which of its keys were asked for (present or not)."""

    def __init__(self, value: dict[str, Any]) -> None:
        super().__init__(value)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def keys(self) -> Any:  # whoever lists the keys reads them all
        self.read.update(super().keys())
        return super().keys()

    def __iter__(self) -> Any:
        self.read.update(super().keys())
        return super().__iter__()


def declared(spec: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    """Property names of a request schema, through $ref, oneOf, anyOf and allOf."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return declared(spec, spec["components"]["schemas"][name])
    names = set(schema.get("properties", {}))
    for key in ("oneOf", "anyOf", "allOf"):
        for part in schema.get(key, []):
            names |= declared(spec, part)
    return names


@pytest.fixture(scope="module")
def read_and_declared() -> dict[str, tuple[set[str], set[str]]]:
    bodies: list[Recording] = []
    read_json = FrontDoor.read_json

    async def recording_read(self: FrontDoor, scope: Any, receive: Any) -> dict[str, Any]:
        bodies.append(Recording(await read_json(self, scope, receive)))
        return bodies[-1]

    async def run() -> dict[str, tuple[set[str], set[str]]]:
        app = standalone_app(Catalog.load())
        found: dict[str, tuple[set[str], set[str]]] = {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            spec = (await client.get("/openapi.json")).json()
            for path, samples in BODIES.items():
                read: set[str] = set()
                for body in samples:
                    bodies.clear()
                    response = await client.post(path, json=body)
                    assert response.status_code == 200, (path, body, response.text)
                    assert len(bodies) == 1, path
                    read |= bodies[0].read
                schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
                found[path] = (read, declared(spec, schema))
        return found

    FrontDoor.read_json = recording_read  # type: ignore[method-assign]
    try:
        return asyncio.run(run())
    finally:
        FrontDoor.read_json = read_json  # type: ignore[method-assign]


@pytest.mark.parametrize("path", sorted(BODIES))
def test_route_reads_what_its_schema_declares(read_and_declared, path):
    read, declared_names = read_and_declared[path]
    assert read - declared_names == set(), f"{path} reads fields its OpenAPI schema does not declare"
    assert declared_names - read == set(), f"{path} declares fields it never reads (or BODIES lacks them)"


def test_every_json_post_route_is_covered():
    async def paths() -> set[str]:
        app = standalone_app(Catalog.load())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            spec = (await client.get("/openapi.json")).json()
        return {p for p, ops in spec["paths"].items()
                if "application/json" in ops.get("post", {}).get("requestBody", {}).get("content", {})}

    assert asyncio.run(paths()) == set(BODIES)
