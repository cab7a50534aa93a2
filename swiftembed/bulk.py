"""Streaming file encoding: read records in chunks, encode each chunk, write rows in input order.

Memory stays bounded by the chunk size whatever the input size: readers yield chunks of texts, writers append
rows (`.npy` output is a memory-mapped file sized up front from a first counting pass).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, Protocol

import numpy as np

from swiftembed.embedder import Embedder

InputFormat = Literal["text", "jsonl"]
OnError = Literal["fail", "skip"]
DEFAULT_CHUNK = 4096


class InputError(ValueError):
    """A malformed input record, with the line it came from."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(f"{source}:{line}: {reason}")
        self.source, self.line, self.reason = source, line, reason


@dataclass(frozen=True)
class Record:
    line: int  # 1-based line number in the input
    text: str


def detect_format(path: Path) -> InputFormat:
    return "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else "text"


def read_records(
    stream: IO[str],
    fmt: InputFormat,
    *,
    field: str = "text",
    source: str = "<stdin>",
    on_error: OnError = "fail",
    warn: Callable[[str], None] | None = None,
) -> Iterator[Record]:
    """Records of a text file (one text per line) or JSONL file (`field` of each object), in order.

    A malformed JSONL line raises `InputError` naming its line, or is reported through `warn` and skipped.
    Blank lines of a JSONL file are skipped; in a text file a blank line is an (empty) text.
    """
    for number, raw in enumerate(stream, start=1):
        line = raw.rstrip("\n").rstrip("\r")
        if fmt == "text":
            yield Record(number, line)
            continue
        if not line.strip():
            continue
        try:
            yield Record(number, _jsonl_text(line, field))
        except ValueError as exc:
            error = InputError(source, number, str(exc))
            if on_error == "fail":
                raise error from None
            (warn or _stderr)(f"skipped {error}")


def _jsonl_text(line: str, field: str) -> str:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"expected an object with a {field!r} field, got {type(value).__name__}")
    text = value.get(field)
    if not isinstance(text, str):
        raise ValueError(f"field {field!r} is missing or not a string")
    return text


def chunked(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class RowWriter(Protocol):
    def write(self, records: list[Record], vectors: np.ndarray) -> None: ...

    def close(self) -> int: ...


class NpyWriter:
    """Rows into a memory-mapped `.npy` of known size; trimmed on close if records were skipped."""

    def __init__(self, path: Path, rows: int, dim: int, dtype: np.dtype) -> None:
        self.path, self.dim, self.dtype = path, dim, dtype
        self._array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(rows, dim))
        self._written = 0

    def write(self, records: list[Record], vectors: np.ndarray) -> None:
        self._array[self._written : self._written + len(vectors)] = vectors
        self._written += len(vectors)

    def close(self) -> int:
        rows = self._array.shape[0]
        self._array.flush()
        del self._array
        if self._written != rows:  # skipped records: rewrite with the true row count
            kept = np.load(self.path, mmap_mode="r")[: self._written]
            trimmed = self.path.with_suffix(".tmp.npy")
            out = np.lib.format.open_memmap(trimmed, mode="w+", dtype=self.dtype, shape=(self._written, self.dim))
            for start in range(0, self._written, 1 << 16):
                out[start : start + (1 << 16)] = kept[start : start + (1 << 16)]
            out.flush()
            del out, kept
            trimmed.replace(self.path)
        return self._written


class JsonlWriter:
    """One `{"line": n, "embedding": [...]}` object per input record."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._written = 0

    def write(self, records: list[Record], vectors: np.ndarray) -> None:
        import orjson

        lines = [
            orjson.dumps({"line": record.line, "embedding": row}, option=orjson.OPT_SERIALIZE_NUMPY)
            for record, row in zip(records, vectors)
        ]
        self._stream.write(b"\n".join(lines).decode() + "\n")
        self._written += len(records)

    def close(self) -> int:
        self._stream.flush()
        return self._written


def encode_stream(
    embedder: Embedder,
    records: Iterable[Record],
    writer: RowWriter,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[int], None] | None = None,
    **options: object,
) -> int:
    """Encode `records` chunk by chunk into `writer`; returns the number of rows written."""
    for chunk in chunked(records, chunk_size):
        vectors = embedder.encode([record.text for record in chunk], **options)  # type: ignore[arg-type]
        writer.write(chunk, vectors)
        if progress is not None:
            progress(len(chunk))
    return writer.close()


def count_lines(path: Path) -> int:
    """Newline count (plus a final unterminated line), read in blocks: the size for a memory-mapped output."""
    count, last = 0, b"\n"
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)
