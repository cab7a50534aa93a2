"""Streaming file encoding: read records in chunks, encode each chunk, write rows in input order.

Memory stays bounded by the chunk size whatever the input size: readers yield records one by one (Parquet in
record batches of one chunk), writers append rows (`.npy` output is a memory-mapped file sized up front from a
counting pass, Parquet output one row group per chunk). Every record keeps its 1-based line (text, JSONL) or row
(Parquet) number: it is the `id`/`line` of the output rows and the number a malformed record is reported by.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal, Protocol

import numpy as np

from swiftembed.embedder import Embedder

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

InputFormat = Literal["text", "jsonl", "parquet"]
INPUT_FORMATS: tuple[str, ...] = ("text", "jsonl", "parquet")
OnError = Literal["fail", "skip"]
DEFAULT_CHUNK = 4096
# Embeddings never repeat and barely compress: dictionary encoding made files 1.5x larger and writing 6x slower.
PARQUET_OPTIONS: dict[str, object] = {"use_dictionary": False, "compression": {"id": "snappy", "embedding": "none"}}


class InputError(ValueError):
    """A malformed input record, with the line (or Parquet row) it came from."""

    def __init__(self, source: str, line: int, reason: str, unit: str = "line") -> None:
        where = f"{source}:{line}" if unit == "line" else f"{source}: {unit} {line}"
        super().__init__(f"{where}: {reason}")
        self.source, self.line, self.reason, self.unit = source, line, reason, unit

    def __reduce__(self) -> tuple[type, tuple[str, int, str, str]]:
        # Ray ships a worker's exception to the driver by pickling; the default would call __init__(message).
        return InputError, (self.source, self.line, self.reason, self.unit)


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 4x as much to build, per input line
class Record:
    line: int  # 1-based line number in the input (row number for Parquet)
    text: str


def detect_format(path: Path) -> InputFormat:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    return "parquet" if suffix in (".parquet", ".pq") else "text"


def read_records(
    stream: IO[str] | IO[bytes],
    fmt: InputFormat,
    *,
    field: str = "text",
    source: str = "<stdin>",
    on_error: OnError = "fail",
    warn: Callable[[str], None] | None = None,
    first_line: int = 1,
) -> Iterator[Record]:
    """Records of a text file (one text per line) or JSONL file (`field` of each object), in order.

    A binary stream is split on b"\\n" only and decoded line by line, so line numbers agree with `count_lines`
    and a bad byte is reported at its own line. A malformed line raises `InputError` naming its line, or is
    reported through `warn` and skipped. Blank lines of a JSONL file are skipped; in a text file a blank line
    is an (empty) text. `first_line` numbers a stream that starts mid-file.
    """
    for number, raw in enumerate(stream, start=first_line):
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as exc:
            _reject(InputError(source, number, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"), on_error, warn)
            continue
        line = line.rstrip("\n").rstrip("\r")
        if fmt == "text":
            yield Record(number, line)
            continue
        if not line.strip():
            continue
        try:
            yield Record(number, _jsonl_text(line, field))
        except ValueError as exc:
            _reject(InputError(source, number, str(exc)), on_error, warn)


def read_parquet_records(
    path: Path | str,
    column: str = "text",
    *,
    source: str | None = None,
    on_error: OnError = "fail",
    warn: Callable[[str], None] | None = None,
    batch_rows: int = DEFAULT_CHUNK,
    row_groups: list[int] | None = None,
    first_row: int = 1,
) -> Iterator[Record]:
    """Records of one Parquet column, read `batch_rows` at a time (memory: about one row group's column).

    A null or non-string value is malformed, reported by its 1-based row number. `row_groups` (with the row
    number of the first of them as `first_row`) reads part of the file, as a Ray worker does.
    """
    source = source or str(path)
    number = first_row
    with parquet_file(path, column) as parquet:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=[column], row_groups=row_groups):
            for value in batch.column(0).to_pylist():
                if isinstance(value, str):
                    yield Record(number, value)
                else:
                    reason = "null" if value is None else f"not a string ({type(value).__name__})"
                    _reject(InputError(source, number, f"{reason} in column {column!r}", unit="row"), on_error, warn)
                number += 1


def parquet_file(path: Path | str, column: str) -> pq.ParquetFile:
    """The file, checked to have `column` (the error names the columns it does have)."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering would hold every row group's column at once
    names = parquet.schema_arrow.names
    if column not in names:
        raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(names)})")
    return parquet


def _reject(error: InputError, on_error: OnError, warn: Callable[[str], None] | None) -> None:
    if on_error == "fail":
        raise error
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


def open_input(
    path: Path,
    fmt: InputFormat,
    *,
    field: str = "text",
    column: str = "text",
    on_error: OnError = "fail",
    warn: Callable[[str], None] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[Iterator[Record], int]:
    """Records of a file and an upper bound on their count (lines, or Parquet rows), for sizing outputs."""
    if not path.is_file():
        raise ValueError(f"input file {path} does not exist")
    if fmt == "parquet":
        with parquet_file(path, column) as parquet:
            rows = parquet.metadata.num_rows
        return read_parquet_records(path, column, on_error=on_error, warn=warn, batch_rows=chunk_size), rows
    return _read_file(path, fmt, field=field, on_error=on_error, warn=warn), count_lines(path)


def _read_file(path: Path, fmt: InputFormat, **options: object) -> Iterator[Record]:
    with path.open("rb") as handle:  # closed when the reader is exhausted or dropped
        yield from read_records(handle, fmt, source=str(path), **options)  # type: ignore[arg-type]


def chunked(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# Outputs ----------------------------------------------------------------------------------------------------
def output_shape(dim: int, dimensions: int | None, precision: str) -> tuple[int, np.dtype]:
    """Row width and dtype of `Embedder.encode(..., dimensions, precision)`: an output's size before any row."""
    width = dimensions or dim
    if precision in ("binary", "ubinary"):
        width = (width + 7) // 8
    dtype = {"float32": np.float32, "int8": np.int8, "binary": np.int8}.get(precision, np.uint8)
    return width, np.dtype(dtype)


def embedding_table(ids: Iterable[int], vectors: np.ndarray) -> pa.Table:
    """`id` (int64) and `embedding` (fixed-size list of the vectors' dtype): the Parquet layout of both paths."""
    import pyarrow as pa

    ids = pa.array(np.fromiter(ids, dtype=np.int64, count=len(vectors)), pa.int64())
    flat = pa.array(np.ascontiguousarray(vectors).reshape(-1))
    embedding = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    return pa.Table.from_arrays([ids, embedding], names=["id", "embedding"])


def embedding_schema(dim: int, dtype: np.dtype) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("id", pa.int64()), ("embedding", pa.list_(pa.from_numpy_dtype(dtype), dim))])


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
        if self._written + len(vectors) > self._array.shape[0]:
            raise RuntimeError(f"more records than the {self._array.shape[0]} rows counted in the input")
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


class ParquetWriter:
    """`id` + `embedding` rows, one row group per chunk, so a reader can stream the output back too."""

    def __init__(self, path: Path, dim: int, dtype: np.dtype) -> None:
        import pyarrow.parquet as pq

        self._writer = pq.ParquetWriter(path, embedding_schema(dim, dtype), **PARQUET_OPTIONS)  # type: ignore[arg-type]
        self._written = 0

    def write(self, records: list[Record], vectors: np.ndarray) -> None:
        self._writer.write_table(embedding_table((record.line for record in records), vectors))
        self._written += len(records)

    def close(self) -> int:
        self._writer.close()
        return self._written


class JsonlWriter:
    """One `{"line": n, "embedding": [...]}` object per input record."""

    def __init__(self, stream: IO[str], *, owns: bool = False) -> None:
        self._stream, self._owns = stream, owns
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
        if self._owns:
            self._stream.close()
        else:
            self._stream.flush()
        return self._written


def open_writer(path: Path, rows: int, dim: int, dtype: np.dtype) -> RowWriter:
    """By suffix: `.npy` (needs `rows` up front), `.parquet`/`.pq`, anything else JSONL."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return NpyWriter(path, rows, dim, dtype)
    if suffix in (".parquet", ".pq"):
        return ParquetWriter(path, dim, dtype)
    return JsonlWriter(path.open("w", encoding="utf-8"), owns=True)


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
    try:
        for chunk in chunked(records, chunk_size):
            vectors = embedder.encode([record.text for record in chunk], **options)  # type: ignore[arg-type]
            writer.write(chunk, vectors)
            if progress is not None:
                progress(len(chunk))
    finally:
        written = writer.close()
    return written


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
