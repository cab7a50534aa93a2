"""The ordinary alternative: what a user writes instead of SwiftEmbed (FastAPI + pydantic + model2vec, one file).

    uvicorn benchmarks.fastapi_app:app --port 8001

Deliberately plain: a sync route (FastAPI runs it in its thread pool) returning `encode(...).tolist()`.
It reads the same vendored model directory, so its vectors equal ours (tests/test_benchmarks.py checks).
"""

from fastapi import FastAPI
from model2vec import StaticModel
from pydantic import BaseModel

from swiftembed.core.model import DEFAULT_MODEL_DIR

model = StaticModel.from_pretrained(str(DEFAULT_MODEL_DIR))
app = FastAPI()


class EmbedRequest(BaseModel):
    texts: list[str]


@app.post("/embed")
def embed(request: EmbedRequest) -> dict:
    return {"embeddings": model.encode(request.texts).tolist()}


@app.get("/health")
def health() -> dict:
    return {"status": "ok"}
