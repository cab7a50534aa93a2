"""The OpenAPI 3.1 description of every route, built from the served models and limits (at /openapi.json)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from swiftembed import __version__
from swiftembed.core.pooling import PRECISIONS, SIMILARITY_MODES
from swiftembed.http.frontdoor import Route
from swiftembed.http.wire import COHERE_INPUT_TYPES, COHERE_TYPES, ENCODING_FORMATS
from swiftembed.service.inputs import CHUNK_TOKENS_WITHOUT_LIMIT

if TYPE_CHECKING:
    from swiftembed.core.catalog import Catalog
    from swiftembed.core.embedder import Embedder
    from swiftembed.service.settings import Settings

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema) -> Schema:
    return {"content": {"application/json": {"schema": schema}}}


def _named(schema: str | None, method: str, path: str) -> str:
    if schema is None:
        raise ValueError(f"the route table has no {method.upper()} {path}, or names no JSON schema for it")
    return schema


def _errors(*statuses: int) -> dict[str, Schema]:
    text = {400: "Malformed JSON or body", 401: "Missing or wrong API key", 413: "Body or text count over the limit",
            404: "Unknown model (code model_not_found)", 408: "The request body stopped arriving",
            415: "Wrong Content-Type", 422: "Validation error",
            503: "Overloaded"}
    return {str(s): {"description": text[s], **_json(_ref("Error"))} for s in statuses}


def openapi_spec(catalog: Catalog, settings: Settings, table: list[Route]) -> Schema:
    """The OpenAPI document of the routes in `table`: their request and answer schemas as the table names them,
    their texts from below (each route must be described, and nothing else is)."""
    names = sorted({n for m in catalog for n in (m.name, m.model_id)})
    model = {"type": ["string", "null"], "enum": [*names, None],
             "description": f"a served model's short name or full id; default {catalog.default.name}"}
    model_param = [{"name": "model", "in": "query", "required": False, "schema": {"type": "string", "enum": names},
                    "description": model["description"]}]

    def by_model(make: Callable[[int, int, int | None, Schema], Schema]) -> Schema:
        """A request schema whose limits (dimension, vocabulary, token limit) depend on the model: one schema when
        every model has the same, else one variant per model (and one for no model: the default's)."""

        def limits(embedder: Embedder) -> tuple[int, int, int | None]:
            return embedder.dim, embedder.vocab_size, embedder.max_tokens

        if len({limits(m.embedder) for m in catalog}) == 1:
            return make(*limits(catalog.default.embedder), model)
        variants = [make(*limits(m.embedder), {"enum": [m.name, m.model_id]}) for m in catalog]
        variants.append(make(*limits(catalog.default.embedder), {"type": "null"}))
        for variant in variants[:-1]:
            for shape in variant.get("oneOf", [variant]):
                shape["required"] = [*shape["required"], "model"]
        return {"oneOf": variants}

    text = {"type": "string", "maxLength": settings.max_chars} if settings.long_text == "reject" else {"type": "string"}
    texts = {"type": "array", "items": text, "minItems": 1, "maxItems": settings.max_texts}
    tei_extras = {  # TEI's fields, with what a static model can do: cut at the end, no prompts (else 422)
        "truncation_direction": {"type": ["string", "null"], "enum": ["Right", "right", None]},
        "prompt_name": {"type": "null", "description": "the served models have no prompts"},
    }
    mode = {"type": ["string", "null"], "enum": [*SIMILARITY_MODES, None],
            "description": "mean: cosine of the mean vectors (default); maxsim: late interaction over token vectors"}
    flag = {"type": ["boolean", "null"]}
    name = {"type": ["string", "null"]}
    vector = {"type": "array", "items": {"type": "number"}}
    post_errors = _errors(400, 401, 404, 408, 413, 415, 422, 503)

    def dimensions(dim: int) -> Schema:
        # Optional fields may be null (the app reads null as absent); JSON Schema's integer admits 2.0, so does the app.
        return {"type": ["integer", "null"], "minimum": 1, "maximum": dim}

    def embeddings_request(dim: int, vocab: int, tokens: int | None, model: Schema) -> Schema:
        token_ids = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": vocab - 1}, "minItems": 1}
        return {
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
                "model": model,
                "encoding_format": {"type": ["string", "null"], "enum": [*ENCODING_FORMATS, None]},
                "dimensions": dimensions(dim),
                "user": name,
            },
        }

    def embed_request(dim: int, vocab: int, tokens: int | None, model: Schema) -> Schema:
        return {
            "oneOf": [
                {
                    "type": "object",
                    "title": "SwiftEmbed",
                    "required": ["texts"],
                    "not": {"required": ["inputs"]},
                    "properties": {"texts": texts, "normalize": flag, "dimensions": dimensions(dim), "model": model,
                                   "precision": {"type": ["string", "null"], "enum": [*PRECISIONS, None],
                                                 "description": "float32 (default); int8, uint8: a byte per "
                                                 "dimension; binary, ubinary: a bit per dimension, packed"}},
                },
                {
                    "type": "object",
                    "title": "TEI",
                    "required": ["inputs"],
                    "properties": {
                        "inputs": {"oneOf": [text, texts]},
                        "normalize": flag,
                        "truncate": flag,
                        **tei_extras,
                        "dimensions": dimensions(dim),
                        "model": model,
                    },
                },
            ]
        }

    def cohere_request(dim: int, vocab: int, tokens: int | None, model: Schema) -> Schema:
        return {
            "type": "object",
            "required": ["texts"],
            "properties": {
                "texts": texts,
                "model": model,
                "input_type": {"type": ["string", "null"], "enum": [*COHERE_INPUT_TYPES, None],
                               "description": "accepted; a static model embeds queries and documents alike"},
                "embedding_types": {"type": ["array", "null"], "items": {"enum": list(COHERE_TYPES)}, "minItems": 1},
                "output_dimension": dimensions(dim),
                "truncate": {"type": ["string", "null"], "enum": ["END", None],
                             "description": "texts are cut at the model's token limit, at their end"},
                "max_tokens": {"type": "null"} if tokens is None else {
                    "type": ["integer", "null"], "minimum": tokens,
                    "description": "the model's own token limit or more: a static model cannot stop earlier"},
                # Cohere's other inputs, refused with a message saying so (this server embeds text only)
                "images": False,
                "inputs": False,
            },
        }

    def chunks_request(dim: int, vocab: int, tokens: int | None, model: Schema) -> Schema:
        longest = tokens or CHUNK_TOKENS_WITHOUT_LIMIT
        document = {"type": "string", "maxLength": settings.max_document_chars}
        return {
            "type": "object",
            "required": ["texts", "chunk_tokens"],
            "properties": {
                "texts": {"type": "array", "items": document, "minItems": 1, "maxItems": settings.max_texts},
                "chunk_tokens": {"type": "integer", "minimum": 1, "maximum": longest,
                                 "description": "at most the model's max_tokens"},
                "overlap_tokens": {"type": "integer", "minimum": 0, "maximum": longest - 1,
                                   "description": "less than chunk_tokens"},
                "normalize": flag,
                "dimensions": dimensions(dim),
                "model": model,
                "encoding_format": {"type": ["string", "null"], "enum": [*ENCODING_FORMATS, None]},
            },
        }

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
        "EmbeddingsRequest": by_model(embeddings_request),
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
        "EmbedRequest": by_model(embed_request),
        "CohereEmbedRequest": by_model(cohere_request),
        "CohereEmbedResponse": {
            "type": "object",
            "required": ["id", "embeddings", "texts", "meta", "response_type"],
            "properties": {
                "id": {"type": "string"},
                "embeddings": {"type": "object", "properties": {
                    kind: {"type": "array", "items": {"type": "string", "contentEncoding": "base64"} if kind == "base64"
                           else {"type": "array", "items": {"type": "number" if kind == "float" else "integer"}}}
                    for kind in COHERE_TYPES}},
                "texts": texts,
                "meta": {"type": "object"},
                "response_type": {"const": "embeddings_by_type"},
            },
        },
        "CohereError": {"type": "object", "required": ["message"],
                        "properties": {"id": {"type": "string"}, "message": {"type": "string"}}},
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
        "ChunksRequest": by_model(chunks_request),
        "ChunksResponse": {
            "type": "object",
            "required": ["chunks", "model", "tokens"],
            "properties": {
                "chunks": {"type": "array", "items": {"type": "array", "items": {
                    "type": "object",
                    "required": ["start", "end", "embedding"],
                    "properties": {
                        "start": {"type": "integer"},
                        "end": {"type": "integer"},
                        "embedding": {"oneOf": [vector, {"type": "string", "contentEncoding": "base64"}]},
                    },
                }}},
                "model": {"type": "string"},
                "tokens": {"type": "integer"},
            },
        },
        "SimilarityRequest": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["source", "targets"],
                    "not": {"required": ["pairs"]},
                    "properties": {"source": text, "targets": texts, "model": model, "mode": mode},
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
                        },
                        "model": model,
                        "mode": mode,
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
                {"type": "object", "required": ["texts"],
                 "properties": {"texts": {"oneOf": [text, texts]}, "model": model}},
                {
                    "type": "object",
                    "required": ["inputs"],
                    "not": {"required": ["texts"]},
                    "properties": {"inputs": {"oneOf": [text, texts]}, "model": model},
                },
            ]
        },
        "InputsRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {"inputs": {"oneOf": [text, texts]}, "truncate": {"type": ["boolean", "null"]},
                           **tei_extras, "model": model},
        },
        "EmbedAllResponse": {"type": "array", "items": {"type": "array", "items": {
            "type": "array", "items": {"type": "number"}}}},
        "SparseResponse": {"type": "array", "items": {"type": "array", "items": {
            "type": "object",
            "required": ["index", "value"],
            "properties": {"index": {"type": "integer", "minimum": 0}, "value": {"type": "number"}},
        }}},
        "TokenizeResponse": {
            "type": "object",
            "required": ["ids", "tokens"],
            "properties": {
                "ids": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
                "tokens": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
            },
        },
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
        "ModelFacts": {
            "type": "object",
            "required": ["model", "name", "default", "checksum", "dimension", "vocab_size", "max_tokens"],
            "properties": {
                "model": {"type": "string", "description": "full id"},
                "name": {"type": "string", "description": "short name"},
                "default": {"type": "boolean"},
                "checksum": {"type": "string"},
                "dimension": {"type": "integer"},
                "vocab_size": {"type": "integer"},
                "max_tokens": {"type": ["integer", "null"]},
                "normalize": {"type": "boolean"},
                "table_dtype": {"type": "string"},
            },
        },
        "Info": {
            "allOf": [
                _ref("ModelFacts"),
                {
                    "type": "object",
                    "required": ["models", "limits", "version"],
                    "properties": {
                        "models": {"type": "array", "items": _ref("ModelFacts")},
                        "limits": {"type": "object"},
                        "version": {"type": "string"},
                    },
                },
            ]
        },
        "Model": {
            "type": "object",
            "required": ["id", "object", "created", "owned_by"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "model"},
                "created": {"type": "integer"},
                "owned_by": {"type": "string"},
                "name": {"type": "string"},
                "default": {"type": "boolean"},
                "dimension": {"type": "integer"},
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}},
        },
    }
    headers = {
        "X-Processing-Time-Ms": {"schema": {"type": "string"}, "description": "Server time for the request"},
        "X-Token-Count": {"schema": {"type": "string"}, "description": "Tokens pooled for the request"},
    }

    routes = {(route.path.replace("{id}", "{model}"), route.method.lower()): route for route in table}

    def answer(path: str, method: str = "get") -> Schema:
        """The JSON answer's schema, as the route table names it."""
        route = routes.get((path, method))
        return _json(_ref(_named(route.answer if route else None, method, path)))

    def post(path: str, summary: str, description: str = "") -> Schema:
        route = routes.get((path, "post"))
        request = _named(route.body if route else None, "post", path)
        return {
            "post": {
                "summary": summary,
                "description": description,
                "requestBody": {"required": True, **_json(_ref(request))},
                "responses": {"200": {"description": "OK", "headers": headers, **answer(path, "post")}, **post_errors},
            }
        }

    embed = post(
        "/embed",
        "Embed texts (SwiftEmbed or TEI shape)",
        "With `Accept: application/octet-stream` the body is the raw rows, row-major (count x dimension, given in "
        "X-Embedding-Count and X-Embedding-Dimension): little-endian float32, or with `precision` a byte per int8 "
        "or uint8 value, or 8 packed bits per byte for binary and ubinary (X-Embedding-Dtype says which).",
    )
    embed["post"]["responses"]["200"]["content"][
        "application/octet-stream"
    ] = {"schema": {"type": "string", "format": "binary"}}
    chunks = post(
        "/embed/chunks",
        "Long documents as overlapping chunks of whole words, every chunk's vector from one pass",
        "Chunk `{start, end}` of `texts[i]` has the vector /embed gives for `texts[i][start:end]`. A word longer "
        "than `chunk_tokens` tokens is a chunk of its own; a text with no known token has no chunk. With "
        '`Accept: application/jsonl` the answer is streamed, one `{"text", "chunk", "start", "end", "embedding"}` '
        "line per chunk in text order.",
    )
    chunks["post"]["responses"]["200"]["content"]["application/jsonl"] = {"schema": {"type": "string"}}
    cohere = post("/v2/embed", "Cohere's embed API (v2): the asked embedding types of the same texts",
                  "Errors are Cohere's `{id, message}`.")
    for status in ("400", "404", "408", "413", "415", "422"):  # the front door's own (401, 503) stay OpenAI's
        cohere["post"]["responses"][status] = {"description": "Error", **_json(_ref("CohereError"))}
    widest = max(m.embedder.dim for m in catalog)
    jsonl_params = [
        {"name": "dimensions", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": widest}, "description": "at most the model's"},
        {"name": "normalize", "in": "query", "required": False,
         "schema": {"type": "string", "enum": ["true", "false"]}},
        {"name": "precision", "in": "query", "required": False,
         "schema": {"type": "string", "enum": list(PRECISIONS)}},
    ]
    paths: dict[str, Schema] = {
        "/v1/embeddings": post("/v1/embeddings", "OpenAI-compatible embeddings"),
        "/embed": embed,
        "/v2/embed": cohere,
        "/embed/jsonl": {
            "post": {
                "summary": "Embed JSON lines, answered as streamed JSON lines in order",
                "description": 'Each line `{"text": ...}`; each answer line `{"index", "embedding"}` or '
                '`{"index", "error"}` for a malformed line. The query sets what /embed takes in its body.',
                "parameters": [*model_param, *jsonl_params],
                "requestBody": {
                    "required": True,
                    "content": {"application/jsonl": {"schema": {"type": "string"}}},
                },
                "responses": {
                    "200": {
                        "description": "JSON lines",
                        "content": {"application/jsonl": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 404, 413, 415, 422, 503),
                },
            }
        },
        "/embed/chunks": chunks,
        "/similarity": post("/similarity", "Cosine similarity: one text against many, or pairs"),
        "/embed_sparse": post(
            "/embed_sparse",
            "Sparse lexical vectors (TEI's shape), from the tokens the dense vector is pooled from",
            "Per text, its distinct token ids with a weight each (the fourth root of the token's row norm, repeats "
            "saturating as in BM25), L2-normalized: a dot product of two is in [0, 1]. For hybrid search beside "
            "/embed; see docs/quality.md.",
        ),
        "/embed_all": post(
            "/embed_all",
            "Each token's vector (TEI's shape), for late-interaction search",
            "Per text, one vector per token, in order: the table rows (times the model's token weights) whose mean "
            "/embed normalizes, not normalized themselves; a text without known tokens has none. At most "
            f"{settings.max_token_vectors} tokens per request (413 beyond). /similarity with `\"mode\": "
            '"maxsim"` scores texts by them.',
        ),
        "/tokenize": post("/tokenize", "Token ids and strings that each text is pooled from"),
        "/health": {"get": {"summary": "Ready (the models load before the server listens)", "responses": {
            "200": {"description": "Ready", **answer("/health")}, **_errors(503)}}},
        "/info": {"get": {"summary": "The default model's (or `model`'s) facts, every served model's, the limits",
                          "parameters": model_param,
                          "responses": {"200": {"description": "OK", **answer("/info")}, **_errors(401, 404)}}},
        "/v1/models": {"get": {"summary": "The served models (OpenAI's list shape)", "responses": {
            "200": {"description": "OK", **answer("/v1/models")}, **_errors(401)}}},
        "/v1/models/{model}": {"get": {"summary": "One served model, by short name or full id",
                                       "parameters": [{"name": "model", "in": "path", "required": True,
                                                       "schema": {"type": "string"}}],
                                       "responses": {"200": {"description": "OK", **answer("/v1/models/{model}")},
                                                     **_errors(401, 404)}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (standalone server)", "responses": {
            "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
            "404": {"description": "Exported by Ray instead", **_json(_ref("Error"))}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {
            "200": {"description": "OK", **_json({"type": "object"})}, **_errors(401)}}},
    }
    spec: Schema = {
        "openapi": "3.1.0",
        "info": {"title": "SwiftEmbed", "version": __version__,
                 "description": "Static-embedding service; models "
                 + ", ".join(f"{m.model_id} ({m.embedder.dim} dimensions)" for m in catalog)
                 + f"; default {catalog.default.model_id}."},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    described = {(path, method) for path, operations in paths.items() for method in operations}
    if set(routes) != described:
        raise ValueError(f"routes without a description: {sorted(set(routes) - described)}; descriptions without a "
                         f"route: {sorted(described - set(routes))}")
    unknown = {name for route in table for name in (route.body, route.answer) if name and name not in schemas}
    if unknown:
        raise ValueError(f"the route table names schemas that are not defined: {sorted(unknown)}")
    if settings.api_key is not None:
        spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        spec["security"] = [{"bearer": []}]
        for route in table:
            if route.open:  # the front door lets these through without a key
                paths[route.path][route.method.lower()]["security"] = []
    return spec
