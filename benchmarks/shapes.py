"""Request shapes shared by the benchmarks, and the no-op answers that mirror them.

A fair no-op reads the same request body and returns a response of the same size and type as the real route,
without embedding anything; the difference between the two is our work, not the transport.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from swiftembed import Embedder
from swiftembed.http.wire import json_bytes, jsonl_lines

SENTENCE = "A man with a hard hat is dancing number {}."


@dataclass(frozen=True)
class Shape:
    name: str
    path: str
    texts: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _texts(n: int) -> list[str]:
    return [SENTENCE.format(i) for i in range(n)]


SHAPES: dict[str, Shape] = {
    "single": Shape("single", "/embed", 1, json.dumps({"texts": _texts(1)}).encode(),
                    {"Content-Type": "application/json"}),
    "batch-100": Shape("batch-100", "/embed", 100, json.dumps({"texts": _texts(100)}).encode(),
                       {"Content-Type": "application/json"}),
    "jsonl-1000": Shape("jsonl-1000", "/embed/jsonl", 1000,
                        "".join(json.dumps({"text": t}) + "\n" for t in _texts(1000)).encode(),
                        {"Content-Type": "application/jsonl"}),
    "binary-100": Shape("binary-100", "/embed", 100, json.dumps({"texts": _texts(100)}).encode(),
                        {"Content-Type": "application/json", "Accept": "application/octet-stream"}),
}


def noop_answers(embedder: Embedder) -> dict[str, tuple[bytes, str]]:
    """Prepared (body, media type) per shape, the same size as the real answers."""
    answers = {}
    for name, shape in SHAPES.items():
        vectors = embedder.encode(_texts(shape.texts))
        if name == "jsonl-1000":
            answers[name] = (jsonl_lines(range(len(vectors)), vectors), "application/jsonl")
        elif name == "binary-100":
            answers[name] = (vectors.tobytes(), "application/octet-stream")
        else:
            answers[name] = (json_bytes({"embeddings": vectors, "model": embedder.model_id, "dimensions": embedder.dim,
                                         "tokens": 11 * shape.texts}), "application/json")
    return answers
