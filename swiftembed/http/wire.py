"""Wire formats: parse and validate request bodies, encode vectors as JSON, base64, raw float32 or JSON lines.

Parsing turns any malformed or out-of-bounds input into an `ApiError` with its HTTP status, so handlers never
see bad data and never answer 500 for it. Vectors are written straight from numpy: orjson serializes arrays
without a Python list in between, base64 and raw bodies are the array's own bytes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import orjson
import pybase64

from swiftembed.core.pooling import Precision, SimilarityMode
from swiftembed.service import inputs
from swiftembed.service.inputs import DEFAULT_OPTIONS, ApiError, Options, invalid, text
from swiftembed.service.settings import Settings

ErrorStyle = Literal["openai", "tei", "cohere"]


def error_body(error: ApiError, style: ErrorStyle = "openai") -> bytes:
    """An error as OpenAI's envelope, TEI's `{"error", "error_type"}` on TEI's routes, or Cohere's
    `{"id", "message"}` on /v2/embed."""
    if style == "cohere":
        return orjson.dumps({"id": str(uuid.uuid4()), "message": error.message})
    if style == "tei":
        return orjson.dumps({"error": error.message, "error_type": _TEI_TYPES.get(error.status, "Validation")})
    return orjson.dumps({"error": {"message": error.message, "type": error.type, "param": error.param,
                                   "code": error.code}})


_TEI_TYPES = {400: "Validation", 401: "Unauthorized", 404: "NotFound", 413: "Validation", 422: "Validation",
              429: "Overloaded", 503: "Unhealthy"}


# Requests ------------------------------------------------------------------------------------------------------
class EmbedRequest(NamedTuple):
    """Texts (or, for OpenAI, token id lists) to embed, with how to answer."""

    texts: list[str] | None
    token_ids: list[list[int]] | None
    options: Options
    encoding_format: str = "float"


def parse_openai(obj: dict[str, Any], settings: Settings, dim: int, vocab_size: int) -> EmbedRequest:
    """OpenAI /v1/embeddings: `input` is a string, strings, a token id list, or token id lists (`model` is the
    caller's to resolve)."""
    if "input" not in obj:
        raise invalid("'input' is required", "input")
    value = obj["input"]
    encoding_format = _encoding_format(obj.get("encoding_format"))
    user = obj.get("user")
    if user is not None and not isinstance(user, str):
        raise invalid("'user' must be a string", "user")
    dimensions = obj.get("dimensions")
    options = DEFAULT_OPTIONS if dimensions is None else Options(dimensions=inputs.dimensions(dimensions, dim))
    if isinstance(value, list) and value and type(value[0]) is not str:  # token ids (texts start with a string)
        if all(inputs.integer(v) is not None for v in value):
            return EmbedRequest(None, [_token_ids(value, "input", vocab_size)], options, encoding_format)
        if all(isinstance(v, list) for v in value):
            if len(value) > settings.max_texts:
                raise ApiError(413, f"'input' has {len(value)} token lists; the limit is {settings.max_texts}",
                               param="input", code="too_many_texts")
            ids = [_token_ids(v, f"input[{i}]", vocab_size) for i, v in enumerate(value)]
            return EmbedRequest(None, ids, options, encoding_format)
    return EmbedRequest(inputs.texts(value, "input", settings), None, options, encoding_format)


ENCODING_FORMATS = ("float", "base64")  # OpenAI's: JSON numbers, or each vector's little-endian float32 in base64


def _encoding_format(value: object) -> str:
    if value is None:
        return "float"
    if value not in ENCODING_FORMATS:
        raise invalid("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    return value  # type: ignore[return-value]


def _token_ids(value: list[Any], param: str, vocab_size: int) -> list[int]:
    if not value:
        raise invalid(f"'{param}' must not be empty", param)
    if not all(type(v) is int for v in value):
        value = [inputs.integer(v) for v in value]
    for v in value:
        if v is None:
            raise invalid(f"'{param}' must hold integers", param)
        if not 0 <= v < vocab_size:
            raise invalid(f"'{param}' holds token id {v}, outside the vocabulary [0, {vocab_size})", param)
    return value


def parse_embed(obj: dict[str, Any], settings: Settings, dim: int) -> tuple[EmbedRequest, ErrorStyle]:
    """POST /embed: SwiftEmbed's `{"texts": [...]}` or TEI's `{"inputs": str | [str], ...}`."""
    if "inputs" in obj:  # TEI: normalize defaults to true; `truncate` is accepted (we always truncate)
        texts = inputs.texts(obj["inputs"], "inputs", settings)
        inputs.flag(obj.get("truncate"), "truncate")
        _tei_extras(obj)
        normalize = inputs.flag(obj.get("normalize"), "normalize")
        normalize = True if normalize is None else normalize
        options = Options(normalize=normalize, dimensions=inputs.dimensions(obj.get("dimensions"), dim))
        return EmbedRequest(texts, None, options), "tei"
    if "texts" not in obj:
        raise invalid("'texts' (or TEI's 'inputs') is required", "texts")
    texts = inputs.texts(obj["texts"], "texts", settings, allow_single=False)
    if len(obj) == 1:  # the usual request: texts and nothing else
        return EmbedRequest(texts, None, DEFAULT_OPTIONS), "openai"
    options = Options(normalize=inputs.flag(obj.get("normalize"), "normalize"),
                      dimensions=inputs.dimensions(obj.get("dimensions"), dim),
                      precision=inputs.precision(obj.get("precision")))
    return EmbedRequest(texts, None, options), "openai"


def query_options(query: dict[str, str], dim: int) -> Options:
    """`?dimensions=N&normalize=true|false&precision=P` of a streamed route, whose body holds only texts."""
    if not query.keys() & {"dimensions", "normalize", "precision"}:
        return DEFAULT_OPTIONS
    normalize = query.get("normalize")
    if normalize not in (None, "true", "false"):
        raise invalid("'normalize' must be true or false", "normalize")
    raw = query.get("dimensions")
    number = int(raw) if raw is not None and raw.isdigit() else raw
    return Options(normalize=None if normalize is None else normalize == "true",
                   dimensions=inputs.dimensions(number, dim), precision=inputs.precision(query.get("precision")))


# Cohere's embed API (v2): https://docs.cohere.com/reference/embed
COHERE_TYPES: dict[str, Precision] = {"float": "float32", "base64": "float32", "int8": "int8", "uint8": "uint8",
                                      "binary": "binary", "ubinary": "ubinary"}
COHERE_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")


class CohereRequest(NamedTuple):
    texts: list[str]
    types: list[str]  # Cohere's embedding_types, in the order asked
    dimensions: int | None


def parse_cohere(obj: dict[str, Any], settings: Settings, dim: int, max_tokens: int | None) -> CohereRequest:
    """POST /v2/embed, Cohere's request: `texts`, `model`, `input_type`, `embedding_types`, `output_dimension`,
    `truncate`, `max_tokens`. A static model embeds queries and documents alike, so every `input_type` gives the
    same vectors; texts are cut at the model's token limit at their end, which is `truncate: END` (START and NONE
    are refused), and a `max_tokens` below that limit is refused too."""
    if "images" in obj or "inputs" in obj:
        raise invalid("only 'texts' can be embedded here: images and mixed inputs are not supported", "texts")
    if "texts" not in obj:
        raise invalid("'texts' is required", "texts")
    texts = inputs.texts(obj["texts"], "texts", settings, allow_single=False)
    input_type = obj.get("input_type")
    if input_type is not None and input_type not in COHERE_INPUT_TYPES:
        raise invalid(f"'input_type' must be one of {', '.join(COHERE_INPUT_TYPES)}", "input_type")
    types = obj.get("embedding_types")
    types = ["float"] if types is None else types
    if not isinstance(types, list) or not types or not all(isinstance(t, str) and t in COHERE_TYPES for t in types):
        raise invalid(f"'embedding_types' must be a non-empty list of {', '.join(COHERE_TYPES)}", "embedding_types")
    truncate = obj.get("truncate")
    if truncate not in (None, "END"):
        raise invalid("'truncate' must be END: texts are cut at the model's token limit, at their end", "truncate")
    dimensions = inputs.dimensions(obj.get("output_dimension"), dim, "output_dimension")
    limit = obj.get("max_tokens")
    if limit is not None and (max_tokens is None or (inputs.integer(limit) or 0) < max_tokens):
        raise invalid(f"'max_tokens' below the model's own limit ({max_tokens}) is not supported", "max_tokens")
    return CohereRequest(texts, list(dict.fromkeys(types)), dimensions)


def cohere_body(request_id: str, texts: list[str], by_type: dict[str, np.ndarray], tokens: int) -> bytes:
    """Cohere's `embeddings_by_type` answer; `base64` is each float32 vector's little-endian bytes."""
    embeddings: dict[str, Any] = {
        kind: base64_rows(vectors) if kind == "base64" else vectors
        for kind, vectors in by_type.items()
    }
    return json_bytes({"id": request_id, "embeddings": embeddings, "texts": texts,
                       "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
                       "response_type": "embeddings_by_type"})


class ChunkRequest(NamedTuple):
    """Documents to cut into chunks of `chunk_tokens` tokens overlapping by `overlap_tokens`, with how to answer."""

    texts: list[str]
    chunk_tokens: int
    overlap_tokens: int
    options: Options
    encoding_format: str


def parse_chunks(obj: dict[str, Any], settings: Settings, dim: int, max_tokens: int | None) -> ChunkRequest:
    """POST /embed/chunks: `{"texts": [...], "chunk_tokens": N, "overlap_tokens": M, ...}`. Documents are limited
    by `max_document_chars` (413 beyond), not by `max_chars`: chunking reads the whole text."""
    texts = inputs.documents(obj.get("texts"), "texts", settings)
    size, overlap = inputs.chunk_sizes(obj.get("chunk_tokens"), obj.get("overlap_tokens", 0), max_tokens)
    encoding_format = _encoding_format(obj.get("encoding_format"))
    options = Options(normalize=inputs.flag(obj.get("normalize"), "normalize"),
                      dimensions=inputs.dimensions(obj.get("dimensions"), dim))
    return ChunkRequest(texts, size, overlap, options, encoding_format)


def chunks_body(spans: Sequence[Sequence[tuple[int, int]]], vectors: np.ndarray, model: str, tokens: int,
                encoding_format: str) -> bytes:
    """`{"chunks": [[{"start", "end", "embedding"}, ...] per text], "model", "tokens"}`; rows in text order."""
    rows = iter(base64_rows(vectors) if encoding_format == "base64" else vectors)
    chunks = [[{"start": start, "end": end, "embedding": next(rows)} for start, end in text] for text in spans]
    return json_bytes({"chunks": chunks, "model": model, "tokens": tokens})


def chunk_lines(spans: Sequence[Sequence[tuple[int, int]]], vectors: np.ndarray, encoding_format: str,
                block: int = 512) -> Iterator[bytes]:
    """`/embed/chunks` as JSONL, one `{"text", "chunk", "start", "end", "embedding"}` line per chunk in text order,
    written `block` lines at a time: the answer's text never exists whole, however long the documents."""
    keys = [(t, k, start, end) for t, text in enumerate(spans) for k, (start, end) in enumerate(text)]
    for at in range(0, len(keys), block):
        part = vectors[at : at + block]
        if encoding_format == "base64":
            rows = [b'"%s"' % pybase64.b64encode(row) for row in _f32_row_bytes(part)]
        else:
            rows = [b"[%s]" % row for row in _json_rows(part)]
        yield b"".join(
            b'{"text":%d,"chunk":%d,"start":%d,"end":%d,"embedding":%s}\n' % (*key, row)
            for key, row in zip(keys[at : at + block], rows)
        )


class SimilarityRequest(NamedTuple):
    """Pairwise scores left[i]·right[i], else the source (left[0]) against each target."""

    left: list[str]
    right: list[str]
    pairwise: bool
    mode: SimilarityMode


def parse_similarity(obj: dict[str, Any], settings: Settings) -> SimilarityRequest:
    """`{"source": str, "targets": [str]}` (one against many) or `{"pairs": [[a, b], ...]}`, and `mode`."""
    mode = inputs.similarity_mode(obj.get("mode"))
    if "pairs" in obj:
        pairs = obj["pairs"]
        if not isinstance(pairs, list) or not pairs:
            raise invalid("'pairs' must be a non-empty list of [text, text] pairs", "pairs")
        if len(pairs) * 2 > settings.max_texts:
            raise ApiError(413, f"'pairs' has {len(pairs)} pairs; the limit is {settings.max_texts // 2}",
                           param="pairs", code="too_many_texts")
        left, right = [], []
        for i, pair in enumerate(pairs):
            if not isinstance(pair, list) or len(pair) != 2:
                raise invalid(f"'pairs[{i}]' must be a list of two strings", "pairs")
            left.append(text(pair[0], f"pairs[{i}][0]", settings))
            right.append(text(pair[1], f"pairs[{i}][1]", settings))
        return SimilarityRequest(left, right, True, mode)
    if "source" not in obj or "targets" not in obj:
        raise invalid("give 'source' and 'targets', or 'pairs'", "source")
    source = text(obj["source"], "source", settings)
    targets = inputs.texts(obj["targets"], "targets", settings, allow_single=False)
    return SimilarityRequest([source], targets, False, mode)


def parse_tokenize(obj: dict[str, Any], settings: Settings) -> list[str]:
    key = "texts" if "texts" in obj else "inputs"
    if key not in obj:
        raise invalid("'texts' is required", "texts")
    return inputs.texts(obj[key], key, settings)


def parse_inputs(obj: dict[str, Any], settings: Settings) -> list[str]:
    """POST /embed_sparse and /embed_all, TEI's shape: `{"inputs": str | [str]}` (`truncate` accepted: texts are
    always cut at the model's token limit, as for /embed)."""
    if "inputs" not in obj:
        raise invalid("'inputs' is required", "inputs")
    inputs.flag(obj.get("truncate"), "truncate")
    _tei_extras(obj)
    return inputs.texts(obj["inputs"], "inputs", settings)


def _tei_extras(obj: dict[str, Any]) -> None:
    """TEI's `truncation_direction` ("Right" or "Left") and `prompt_name`, checked as gRPC checks them."""
    direction = obj.get("truncation_direction")
    if direction not in (None, "Right", "right", "Left", "left"):
        raise invalid("'truncation_direction' must be Right or Left", "truncation_direction")
    inputs.tei_extras(direction in ("Left", "left"), obj.get("prompt_name"))


# Responses -----------------------------------------------------------------------------------------------------
def json_bytes(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def openai_body(vectors: np.ndarray, model: str, tokens: int, encoding_format: str) -> bytes:
    if encoding_format == "base64":
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(base64_rows(vectors))]
    else:
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(vectors)]
    return json_bytes(
        {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    )


def base64_rows(vectors: np.ndarray) -> list[str]:
    """Each row's little-endian float32 bytes in base64, as the OpenAI API sends `encoding_format=base64`.

    pybase64 (SIMD) on slices of one byte view of the whole array: 100 rows of 256 floats in ~25 us, against 44
    converting row by row and the stdlib's 124 (the whole request ~500)."""
    return [pybase64.b64encode_as_string(row) for row in _f32_row_bytes(vectors)]


def _f32_row_bytes(vectors: np.ndarray) -> list[memoryview]:
    if not vectors.size:
        return [memoryview(b"")] * len(vectors)
    data = _le_f32(vectors)
    size = vectors.shape[-1] * 4
    return [data[at : at + size] for at in range(0, len(data), size)]


def _le_f32(array: np.ndarray) -> memoryview:
    """Little-endian float32 bytes of `array` (no copy on little-endian machines)."""
    array = np.ascontiguousarray(array, dtype="<f4")
    return memoryview(array).cast("B")


def raw_body(vectors: np.ndarray) -> bytes:
    """Raw rows, row-major: little-endian float32 (row i is bytes [i*dim*4, (i+1)*dim*4)), or one byte per
    int8/uint8 value, or 8 packed bits per byte (binary, ubinary: dim/8 bytes a row).

    Bytes, not a view: Ray Serve pickles response messages between replica and proxy, and a copy of 100 rows
    costs ~10 us."""
    return _le_f32(vectors).tobytes() if vectors.dtype == np.float32 else vectors.tobytes()


RAW_DTYPES: dict[str, bytes] = {"float32": b"float32-le", "int8": b"int8", "uint8": b"uint8", "binary": b"binary",
                                "ubinary": b"ubinary"}  # X-Embedding-Dtype of a raw answer, by precision


def jsonl_lines(indices: Sequence[int], vectors: np.ndarray) -> bytes:
    """`{"index": i, "embedding": [...]}` lines for many rows from one orjson call on the whole array."""
    if not len(vectors):
        return b""
    return b"".join(b'{"index":%d,"embedding":[%s]}\n' % (i, row) for i, row in zip(indices, _json_rows(vectors)))


def _json_rows(vectors: np.ndarray) -> list[bytes]:
    """Each row's JSON numbers (without brackets) from one orjson call on the whole (non-empty) array."""
    return orjson.dumps(vectors, option=orjson.OPT_SERIALIZE_NUMPY)[2:-2].split(b"],[")


def token_vectors_body(vectors: Sequence[np.ndarray]) -> bytes:
    """TEI's /embed_all answer: per text a list of its token vectors."""
    return b"[%s]" % b",".join(orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY) if len(v) else b"[]"
                               for v in vectors)


def sparse_body(vectors: Sequence[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """TEI's /embed_sparse answer: per text a list of `{"index": token id, "value": weight}`."""
    return orjson.dumps([
        [{"index": i, "value": v} for i, v in zip(indices.tolist(), values.tolist())] for indices, values in vectors
    ])


def jsonl_error_line(index: int, error: ApiError) -> bytes:
    return orjson.dumps({"index": index, "error": {"message": error.message, "type": error.type}}) + b"\n"


def token_strings(ids: Sequence[Sequence[int]], id_to_token: Any) -> list[list[str]]:
    return [[id_to_token(i) or "" for i in row] for row in ids]
