"""Service settings: request limits, batching, auth, CORS. One dataclass, filled from flags or SWIFTEMBED_*
variables: every default lives here, and the CLI's help, the Serve configs and the RayService are read from or
checked against it."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Literal

LongTextPolicy = Literal["truncate", "reject"]


@dataclass(frozen=True)
class Settings:
    """Limits are on by default so no request can make a replica hold unbounded memory.

    max_texts: texts per request (OpenAI's own limit is 2048).
    max_chars: characters per text; longer texts are cut (`truncate`) or refused with 422 (`reject`).
        Tokenization cuts at `max_tokens x median token length` characters anyway, so cutting here never
        changes a vector unless `max_chars` is set below that (about 3,000 for potion-base-8M).
    max_body_bytes: request body of the JSON routes; 413 beyond it.
    max_jsonl_bytes / max_jsonl_lines: the streamed /embed/jsonl route.
    max_document_chars: characters per document on /embed/chunks (413 beyond); chunking reads a whole document,
        so `max_chars` does not apply there (the body limit still does).
    api_key: when set, every route but /health and /metrics needs `Authorization: Bearer <key>`. From the
        environment (SWIFTEMBED_API_KEY) or a file (SWIFTEMBED_API_KEY_FILE, `--api-key-file`; e.g. a mounted
        Kubernetes Secret), never from the command line, where every user of the machine can read it.
    cors_origins: CORS is off unless origins are listed.
    max_concurrency: requests handled at once by one server (or replica); beyond it 503 + Retry-After.
    body_chunk_timeout_s / body_timeout_s: the longest wait for the next piece of a request body, and for a whole
        JSON body; beyond either the request gets 408 and frees its slot (a client that sends part of a body and
        goes quiet cannot hold a slot). The streamed /embed/jsonl route has only the per-chunk limit.
    max_token_vectors: token vectors per /embed_all request (and handle or gRPC call), TEI's `max_batch_tokens`
        default; 413 beyond. A token vector is a whole row (1 KB as float32, ~3 KB as JSON), so the answer, not the
        work, is what this bounds.
    max_batch_size / batch_wait_timeout_s: the most requests merged into one kernel call, and how long a batch
        may wait for more (0: only for requests already in the event loop's turn). Under Ray Serve a deployment's
        `user_config` changes them live.
    grpc_port: where TEI's gRPC API (swiftembed/grpc/) answers beside HTTP, on the same host; None: not served.
        Under Ray Serve every replica listens there, the replicas of a node sharing the port as they share HTTP's.
    """

    max_texts: int = 2048
    max_chars: int = 100_000
    long_text: LongTextPolicy = "truncate"
    max_body_bytes: int = 16 * 1024 * 1024
    max_jsonl_bytes: int = 256 * 1024 * 1024
    max_jsonl_lines: int = 1_000_000
    max_document_chars: int = 4_000_000
    max_token_vectors: int = 16_384
    api_key: str | None = field(default=None, repr=False)
    cors_origins: tuple[str, ...] = ()
    max_concurrency: int = 256
    body_chunk_timeout_s: float = 5.0
    body_timeout_s: float = 10.0
    max_batch_size: int = 64
    batch_wait_timeout_s: float = 0.0
    grpc_port: int | None = None

    def __post_init__(self) -> None:
        limits = ("max_texts", "max_chars", "max_body_bytes", "max_jsonl_bytes", "max_jsonl_lines", "max_concurrency",
                  "max_document_chars", "max_token_vectors", "max_batch_size")
        for name in limits:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if not 0 < self.body_chunk_timeout_s <= self.body_timeout_s:
            raise ValueError("body timeouts must be positive, the per-chunk one at most the total")
        if self.batch_wait_timeout_s < 0:
            raise ValueError("batch_wait_timeout_s must not be negative")
        if self.long_text not in ("truncate", "reject"):
            raise ValueError("long_text must be 'truncate' or 'reject'")
        if self.grpc_port is not None and not 0 < self.grpc_port < 65536:
            raise ValueError("grpc_port must be a TCP port (1-65535)")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Settings:
        """SWIFTEMBED_MAX_TEXTS, SWIFTEMBED_API_KEY, SWIFTEMBED_CORS_ORIGINS (comma-separated), ...; then overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for item in dataclasses.fields(cls):
            raw = env.get(f"SWIFTEMBED_{item.name.upper()}")
            if raw is None or raw == "":
                continue
            if item.name == "cors_origins":
                values[item.name] = tuple(o.strip() for o in raw.split(",") if o.strip())
            elif item.name in ("api_key", "long_text"):
                values[item.name] = raw
            elif item.name.endswith("_s"):
                values[item.name] = float(raw)
            else:
                values[item.name] = int(raw)
        key_file = env.get("SWIFTEMBED_API_KEY_FILE")
        if key_file and "api_key" not in values:
            values["api_key"] = read_key_file(key_file)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def batch(self) -> dict[str, object]:
        """The batch settings as a deployment's `user_config` holds them."""
        return {"max_batch_size": self.max_batch_size, "batch_wait_timeout_s": self.batch_wait_timeout_s}

    def public(self) -> dict[str, object]:
        """What /info shows: the limits, never the key."""
        return {
            "max_texts": self.max_texts,
            "max_chars": self.max_chars,
            "long_text": self.long_text,
            "max_body_bytes": self.max_body_bytes,
            "max_jsonl_bytes": self.max_jsonl_bytes,
            "max_jsonl_lines": self.max_jsonl_lines,
            "max_document_chars": self.max_document_chars,
            "max_token_vectors": self.max_token_vectors,
            "body_chunk_timeout_s": self.body_chunk_timeout_s,
            "body_timeout_s": self.body_timeout_s,
            "max_batch_size": self.max_batch_size,
            "batch_wait_timeout_s": self.batch_wait_timeout_s,
            "grpc_port": self.grpc_port,
            "auth": self.api_key is not None,
        }


def read_key_file(path: str) -> str:
    """The API key in a file: its content without the trailing newline; an unreadable or empty file is an error."""
    try:
        key = open(path, encoding="utf-8").read().strip()  # noqa: SIM115
    except OSError as exc:
        raise ValueError(f"cannot read the API key file {path}: {exc.strerror}") from None
    if not key:
        raise ValueError(f"the API key file {path} is empty")
    return key
