"""The ordinary alternative: what a user writes instead of SwiftEmbed (FastAPI + pydantic + model2vec, one file).

    uvicorn benchmarks.fastapi_app:app --port 8001

Deliberately plain: sync routes (FastAPI runs them in its thread pool) returning `encode(...).tolist()` (annotated
`-> dict`: without a return type FastAPI serializes through `jsonable_encoder`, 6x slower for 100 vectors), or the
encoding asked for written the obvious way (base64 per row as the OpenAI API sends it, int8 by scaling, packed sign
bits, raw float32 bytes), so benchmarks compare us with it answering the same encoding. It reads the same vendored
model directory, so its float vectors equal ours (tests/test_benchmarks.py checks).
"""

import base64
from typing import Literal

import numpy as np
from fastapi import FastAPI, Request, Response
from model2vec import StaticModel
from pydantic import BaseModel

from swiftembed.core.model import DEFAULT_MODEL_DIR

model = StaticModel.from_pretrained(str(DEFAULT_MODEL_DIR))
app = FastAPI()


class EmbedRequest(BaseModel):
    texts: list[str]
    precision: Literal["float32", "int8", "ubinary"] = "float32"


class OpenAIRequest(BaseModel):
    input: list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"


@app.post("/embed")
def embed(body: EmbedRequest, request: Request) -> dict:  # a returned Response skips the dict's serialization
    vectors = model.encode(body.texts)
    if request.headers.get("accept") == "application/octet-stream":
        return Response(vectors.astype("<f4").tobytes(), media_type="application/octet-stream")
    if body.precision == "int8":
        return {"embeddings": np.clip(np.round(vectors * 127), -127, 127).astype(np.int8).tolist()}
    if body.precision == "ubinary":
        return {"embeddings": np.packbits(vectors > 0, axis=-1).tolist()}
    return {"embeddings": vectors.tolist()}


@app.post("/v1/embeddings")
def embeddings(body: OpenAIRequest) -> dict:
    vectors = model.encode(body.input)
    if body.encoding_format == "base64":
        data = [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in vectors]
    else:
        data = vectors.tolist()
    return {"object": "list", "model": body.model, "usage": {"prompt_tokens": 0, "total_tokens": 0},
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)]}


@app.get("/health")
def health() -> dict:
    return {"status": "ok"}
