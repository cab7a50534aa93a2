"""The OpenAPI 3.1 description of every route, built from the live model and limits (served at /openapi.json)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from swiftembed import __version__

if TYPE_CHECKING:
    from swiftembed.embedder import Embedder
    from swiftembed.settings import Settings

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema) -> Schema:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Schema]:
    text = {400: "Malformed JSON or body", 401: "Missing or wrong API key", 413: "Body or text count over the limit",
            415: "Wrong Content-Type", 422: "Validation error", 503: "Overloaded or not ready"}
    return {str(s): {"description": text[s], **_json(_ref("Error"))} for s in statuses}


def openapi_spec(embedder: Embedder, settings: Settings) -> Schema:
    dim, vocab = embedder.dim, embedder.vocab_size
    text = {"type": "string", "maxLength": settings.max_chars} if settings.long_text == "reject" else {"type": "string"}
    texts = {"type": "array", "items": text, "minItems": 1, "maxItems": settings.max_texts}
    token_id = {"type": "integer", "minimum": 0, "maximum": vocab - 1}
    token_ids = {"type": "array", "items": token_id, "minItems": 1}
    # Optional fields may be null (the app reads null as absent); JSON Schema's integer admits 2.0, so does the app.
    dimensions = {"type": ["integer", "null"], "minimum": 1, "maximum": dim}
    flag = {"type": ["boolean", "null"]}
    name = {"type": ["string", "null"]}
    vector = {"type": "array", "items": {"type": "number"}}
    post_errors = _errors(400, 401, 413, 415, 422, 503)
    schemas: dict[str, Schema] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["message", "type"],
                            "properties": {
                                "message": {"type": "string"},
                                "type": {"type": "string"},
                                "param": {"type": ["string", "null"]},
                                "code": {"type": ["string", "null"]},
                            },
                        },
                        {"type": "string"},
                    ]
                },
                "error_type": {"type": "string"},
            },
        },
        "EmbeddingsRequest": {
            "type": "object",
            "required": ["input"],
            "properties": {
                "input": {
                    "oneOf": [
                        text,
                        texts,
                        token_ids,
                        {"type": "array", "items": token_ids, "minItems": 1, "maxItems": settings.max_texts},
                    ]
                },
                "model": name,
                "encoding_format": {"type": ["string", "null"], "enum": ["float", "base64", None]},
                "dimensions": dimensions,
                "user": name,
            },
        },
        "EmbeddingsResponse": {
            "type": "object",
            "required": ["object", "data", "model", "usage"],
            "properties": {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["object", "index", "embedding"],
                        "properties": {
                            "object": {"const": "embedding"},
                            "index": {"type": "integer"},
                            "embedding": {"oneOf": [vector, {"type": "string", "contentEncoding": "base64"}]},
                        },
                    },
                },
                "model": {"type": "string"},
                "usage": {
                    "type": "object",
                    "required": ["prompt_tokens", "total_tokens"],
                    "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}},
                },
            },
        },
        "EmbedRequest": {
            "oneOf": [
                {
                    "type": "object",
                    "title": "SwiftEmbed",
                    "required": ["texts"],
                    "not": {"required": ["inputs"]},
                    "properties": {"texts": texts, "normalize": flag, "dimensions": dimensions},
                },
                {
                    "type": "object",
                    "title": "TEI",
                    "required": ["inputs"],
                    "properties": {
                        "inputs": {"oneOf": [text, texts]},
                        "normalize": flag,
                        "truncate": flag,
                        "dimensions": dimensions,
                    },
                },
            ]
        },
        "EmbedResponse": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["embeddings", "model", "dimensions", "tokens"],
                    "properties": {
                        "embeddings": {"type": "array", "items": vector},
                        "model": {"type": "string"},
                        "dimensions": {"type": "integer"},
                        "tokens": {"type": "integer"},
                    },
                },
                {"type": "array", "items": vector, "description": "TEI-shaped requests get a bare list of vectors"},
            ]
        },
        "SimilarityRequest": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["source", "targets"],
                    "not": {"required": ["pairs"]},
                    "properties": {"source": text, "targets": texts},
                },
                {
                    "type": "object",
                    "required": ["pairs"],
                    "properties": {
                        "pairs": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": settings.max_texts // 2,
                            "items": {"type": "array", "items": text, "minItems": 2, "maxItems": 2},
                        }
                    },
                },
            ]
        },
        "SimilarityResponse": {
            "type": "object",
            "required": ["scores"],
            "properties": {"scores": {"type": "array", "items": {"type": "number"}}},
        },
        "TokenizeRequest": {
            "oneOf": [
                {"type": "object", "required": ["texts"], "properties": {"texts": {"oneOf": [text, texts]}}},
                {
                    "type": "object",
                    "required": ["inputs"],
                    "not": {"required": ["texts"]},
                    "properties": {"inputs": {"oneOf": [text, texts]}},
                },
            ]
        },
        "TokenizeResponse": {
            "type": "object",
            "required": ["ids", "tokens"],
            "properties": {
                "ids": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
                "tokens": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
            },
        },
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
        "Info": {
            "type": "object",
            "required": ["model", "checksum", "dimension", "vocab_size", "max_tokens", "limits", "version"],
            "properties": {
                "model": {"type": "string"},
                "checksum": {"type": "string"},
                "dimension": {"type": "integer"},
                "vocab_size": {"type": "integer"},
                "max_tokens": {"type": ["integer", "null"]},
                "normalize": {"type": "boolean"},
                "table_dtype": {"type": "string"},
                "limits": {"type": "object"},
                "version": {"type": "string"},
            },
        },
    }
    headers = {
        "X-Processing-Time-Ms": {"schema": {"type": "string"}, "description": "Server time for the request"},
        "X-Token-Count": {"schema": {"type": "string"}, "description": "Tokens pooled for the request"},
    }

    def post(summary: str, request: str, response: str, description: str = "") -> Schema:
        return {
            "post": {
                "summary": summary,
                "description": description,
                "requestBody": {"required": True, **_json(_ref(request))},
                "responses": {"200": {"description": "OK", "headers": headers, **_json(_ref(response))}, **post_errors},
            }
        }

    embed = post(
        "Embed texts (SwiftEmbed or TEI shape)",
        "EmbedRequest",
        "EmbedResponse",
        "With `Accept: application/octet-stream` the body is raw little-endian float32, row-major "
        "(count x dimension, given in X-Embedding-Count and X-Embedding-Dimension).",
    )
    embed["post"]["responses"]["200"]["content"][
        "application/octet-stream"
    ] = {"schema": {"type": "string", "format": "binary"}}
    paths: dict[str, Schema] = {
        "/v1/embeddings": post("OpenAI-compatible embeddings", "EmbeddingsRequest", "EmbeddingsResponse"),
        "/embed": embed,
        "/embed/jsonl": {
            "post": {
                "summary": "Embed JSON lines, answered as streamed JSON lines in order",
                "description": 'Each line `{"text": ...}`; each answer line `{"index", "embedding"}` or '
                '`{"index", "error"}` for a malformed line.',
                "requestBody": {
                    "required": True,
                    "content": {"application/jsonl": {"schema": {"type": "string"}}},
                },
                "responses": {
                    "200": {
                        "description": "JSON lines",
                        "content": {"application/jsonl": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 413, 415, 503),
                },
            }
        },
        "/similarity": post("Cosine similarity: one text against many, or pairs", "SimilarityRequest",
                            "SimilarityResponse"),
        "/tokenize": post("Token ids and strings that each text is pooled from", "TokenizeRequest", "TokenizeResponse"),
        "/health": {"get": {"summary": "Ready once the model is loaded", "responses": {
            "200": {"description": "Ready", **_json(_ref("Health"))},
            "503": {"description": "Not ready", **_json(_ref("Health"))}}}},
        "/info": {"get": {"summary": "Model and limits", "responses": {
            "200": {"description": "OK", **_json(_ref("Info"))}, **_errors(401)}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (standalone server)", "responses": {
            "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
            "404": {"description": "Exported by Ray instead", **_json(_ref("Error"))}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {
            "200": {"description": "OK", **_json({"type": "object"})}, **_errors(401)}}},
    }
    spec: Schema = {
        "openapi": "3.1.0",
        "info": {"title": "SwiftEmbed", "version": __version__,
                 "description": f"Static-embedding service; model {embedder.model_id} ({dim} dimensions)."},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if settings.api_key is not None:
        spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        spec["security"] = [{"bearer": []}]
    return spec
