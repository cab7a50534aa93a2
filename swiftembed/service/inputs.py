"""What a request may hold, checked once for every way in: HTTP bodies (swiftembed/http/wire.py) and Ray handle
calls (swiftembed/ray/deployment.py) refuse the same inputs with the same `ApiError`.

An `ApiError` carries the HTTP status the error answers with (and the OpenAI envelope's type, param and code):
the HTTP layer writes it as a body, a handle caller catches it (`error.status`, `error.code`).
"""

from __future__ import annotations

from typing import NamedTuple

from swiftembed.core.pooling import PRECISIONS, SIMILARITY_MODES, Precision, SimilarityMode
from swiftembed.service.settings import Settings


class ApiError(Exception):
    """A client-facing error: HTTP status, message, and the OpenAI envelope's type/param/code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def __reduce__(self) -> tuple[object, ...]:  # crosses Ray's process boundary to a handle caller intact
        return _rebuild, (self.status, self.message, self.type, self.param, self.code, self.headers)


def _rebuild(status: int, message: str, type: str, param: str | None, code: str | None,
             headers: dict[str, str]) -> ApiError:
    return ApiError(status, message, type=type, param=param, code=code, headers=headers)


def invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(422, message, param=param, code="invalid_value")


# Refusals before a request is read, the same whichever way it comes in (HTTP's front door, the gRPC server).
UNAUTHORIZED = ApiError(401, "missing or wrong API key (Authorization: Bearer <key>)", type="authentication_error",
                        code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
OVERLOADED = ApiError(503, "server is at capacity; retry shortly", type="server_overloaded", code="overloaded",
                      headers={"Retry-After": "1"})
INTERNAL_ERROR = ApiError(500, "internal error", type="server_error", code="internal_error")  # what a bug answers


def bearer(settings: Settings) -> bytes | None:
    """The `Authorization` value every request must carry (compare with `hmac.compare_digest`), or None: no key."""
    return f"Bearer {settings.api_key}".encode() if settings.api_key else None


def tei_extras(cut_at_start: bool, prompt_name: object) -> None:
    """What TEI lets a request ask that a static model cannot do, refused rather than ignored (HTTP and gRPC alike):
    cutting a long text at its start, and a prompt (the served models have none)."""
    if cut_at_start:
        raise invalid("'truncation_direction' must be Right: texts are cut at the model's token limit, at their end",
                      "truncation_direction")
    if prompt_name is not None:
        raise invalid("'prompt_name' is not supported: the served models have no prompts", "prompt_name")


def kind(value: object) -> str:
    """A value's JSON type name, for messages."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


class Options(NamedTuple):  # NamedTuples: a third of a frozen dataclass's cost to build, once per request
    """What a request asks of the vectors, beyond the texts."""

    normalize: bool | None = None
    dimensions: int | None = None
    precision: Precision = "float32"


DEFAULT_OPTIONS = Options()


def texts(value: object, param: str, settings: Settings, *, allow_single: bool = True) -> list[str]:
    """A non-empty list of at most `max_texts` strings (one string too, where `allow_single`), each as `text`."""
    if isinstance(value, str) and allow_single:
        return [text(value, param, settings)]
    if not isinstance(value, list):
        raise invalid(f"'{param}' must be {'a string or ' if allow_single else ''}a list of strings", param)
    if not value:
        raise invalid(f"'{param}' must not be empty", param)
    if len(value) > settings.max_texts:
        raise ApiError(
            413, f"'{param}' has {len(value)} texts; the limit is {settings.max_texts} per request", param=param,
            code="too_many_texts",
        )
    limit = settings.max_chars
    for item in value:
        if type(item) is not str or len(item) > limit:
            return [text(item, f"{param}[{i}]", settings) for i, item in enumerate(value)]
    return value  # the usual case: nothing to name or cut


def text(value: object, param: str, settings: Settings) -> str:
    """A string of at most `max_chars` characters: longer ones cut there, or refused (`long_text: reject`)."""
    if not isinstance(value, str):
        raise invalid(f"'{param}' must be a string, got {kind(value)}", param)
    if len(value) > settings.max_chars:
        if settings.long_text == "reject":
            raise invalid(f"'{param}' has {len(value)} characters; the limit is {settings.max_chars}", param)
        return value[: settings.max_chars]
    return value


def integer(value: object) -> int | None:
    """An int, or a float with an integral value (JSON, and JSON Schema's `integer`, do not tell 2.0 from 2)."""
    if type(value) is int:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def dimensions(value: object, dim: int, param: str = "dimensions") -> int | None:
    if value is None:
        return None
    number = integer(value)
    if number is None or not 1 <= number <= dim:
        raise invalid(f"'{param}' must be an integer from 1 to {dim}", param)
    return number


def flag(value: object, param: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise invalid(f"'{param}' must be a boolean", param)


def precision(value: object) -> Precision:
    if value is None:
        return "float32"
    if value not in PRECISIONS:
        raise invalid(f"'precision' must be one of {', '.join(PRECISIONS)}", "precision")
    return value  # type: ignore[return-value]


def similarity_mode(value: object) -> SimilarityMode:
    if value is None:
        return "mean"
    if value not in SIMILARITY_MODES:
        raise invalid(f"'mode' must be one of {', '.join(SIMILARITY_MODES)}", "mode")
    return value  # type: ignore[return-value]


def documents(value: object, param: str, settings: Settings, *, allow_single: bool = False) -> list[str]:
    """Documents to chunk: a non-empty list of at most `max_texts` strings, each at most `max_document_chars`
    (413 beyond: chunking reads the whole text, so nothing is cut)."""
    if isinstance(value, str) and allow_single:
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise invalid(f"'{param}' must be a non-empty list of strings", param)
    if len(value) > settings.max_texts:
        raise ApiError(413, f"'{param}' has {len(value)} texts; the limit is {settings.max_texts} per request",
                       param=param, code="too_many_texts")
    for i, t in enumerate(value):
        if len(t) > settings.max_document_chars:
            raise ApiError(413, f"'{param}[{i}]' has {len(t)} characters; the limit is {settings.max_document_chars}",
                           param=param, code="document_too_long")
    return value


CHUNK_TOKENS_WITHOUT_LIMIT = 1_000_000  # the largest chunk_tokens for a model without a token limit


def chunk_sizes(chunk_tokens: object, overlap_tokens: object, max_tokens: int | None) -> tuple[int, int]:
    """(chunk_tokens, overlap_tokens): from 1 to the model's token limit, and from 0 to chunk_tokens - 1."""
    size = integer(chunk_tokens)
    limit = max_tokens or CHUNK_TOKENS_WITHOUT_LIMIT
    if size is None or not 1 <= size <= limit:
        raise invalid(f"'chunk_tokens' must be an integer from 1 to {limit}", "chunk_tokens")
    overlap = integer(overlap_tokens)
    if overlap is None or not 0 <= overlap < size:
        raise invalid("'overlap_tokens' must be an integer from 0 to chunk_tokens - 1", "overlap_tokens")
    return size, overlap
