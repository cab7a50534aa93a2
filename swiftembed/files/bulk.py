"""Streaming file encoding: read records a step at a time, encode each step, write rows in input order.

Memory stays bounded by the step size (`--chunk-size` records) whatever the input size: readers yield records
one by one (Parquet in record batches of one step), writers append rows (`.npy` block by block with its row count
written last, Parquet one row group per step). Every record keeps its 1-based line (text, JSONL) or row (Parquet)
number: it is the `id`/`line` of the output rows and the number a malformed record is reported by. With
`chunk_tokens`, long records are cut into overlapping chunks of whole words and each chunk is a row, keyed by the
record's number and its character span.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal, NamedTuple, Protocol

import numpy as np

from swiftembed.core.embedder import Embedder

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


def embedding_table(ids: Iterable[int], vectors: np.ndarray, spans: Spans | None = None) -> pa.Table:
    """`id` (int64), with spans `chunk`/`start`/`end` (int64), and `embedding` (fixed-size list of the vectors'
    dtype): the Parquet layout of both paths."""
    import pyarrow as pa

    columns = [pa.array(np.fromiter(ids, dtype=np.int64, count=len(vectors)), pa.int64())]
    if spans is not None:
        columns += [pa.array(np.asarray(column, dtype=np.int64), pa.int64()) for column in spans]
    flat = pa.array(np.ascontiguousarray(vectors).reshape(-1))
    columns.append(pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]))
    names = ["id", *(SPAN_COLUMNS if spans is not None else ()), "embedding"]
    return pa.Table.from_arrays(columns, names=names)


def embedding_schema(dim: int, dtype: np.dtype, *, spans: bool = False) -> pa.Schema:
    import pyarrow as pa

    keys = [("id", pa.int64()), *((name, pa.int64()) for name in (SPAN_COLUMNS if spans else ()))]
    return pa.schema([*keys, ("embedding", pa.list_(pa.from_numpy_dtype(dtype), dim))])


class Spans(NamedTuple):
    """Which part of its record each output row is, when records are cut into chunks (`--chunk-tokens`)."""

    chunk: np.ndarray  # int64: the chunk's number within its record, from 0
    start: np.ndarray  # int64: character offsets into the record's text, the chunk is text[start:end]
    end: np.ndarray


SPAN_COLUMNS = ("chunk", "start", "end")


class RowWriter(Protocol):
    def write(self, ids: Sequence[int], vectors: np.ndarray, spans: Spans | None = None) -> None: ...

    def close(self) -> int: ...


class NpyAppender:
    """A `.npy` file written row block by row block, its row count filled in on close: no size needed up front.

    The header is written at a fixed 128 bytes (room for any row count) and rewritten with the true shape last.
    """

    HEADER = 128

    def __init__(self, path: Path, width: int, dtype: np.dtype) -> None:
        self.path, self.width, self.dtype = path, width, np.dtype(dtype)
        self.rows = 0
        self._file = path.open("wb")
        self._file.write(self._header(2**62))

    def append(self, block: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(block, dtype=self.dtype).reshape(-1, self.width).data)
        self.rows += len(block)

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.seek(0)
        self._file.write(self._header(self.rows))
        self._file.close()

    def _header(self, rows: int) -> bytes:
        fields = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (rows, self.width)}
        text = repr(fields).encode("latin1")
        pad = self.HEADER - 10 - len(text) - 1
        return b"\x93NUMPY\x01\x00" + (self.HEADER - 10).to_bytes(2, "little") + text + b" " * pad + b"\n"


def offsets_path(path: Path) -> Path:
    """Where `.npy` output keeps its rows' record ids and spans: `out.npy` -> `out.offsets.npy`."""
    return path.with_name(path.stem + ".offsets.npy")


class NpyWriter:
    """Vectors into a `.npy` (row i = output row i); with spans, `<name>.offsets.npy` beside it holds int64 rows
    (id, chunk, start, end), the record and the part of its text each vector is."""

    def __init__(self, path: Path, dim: int, dtype: np.dtype, *, spans: bool = False) -> None:
        self._vectors = NpyAppender(path, dim, dtype)
        self._offsets = NpyAppender(offsets_path(path), 4, np.dtype(np.int64)) if spans else None

    def write(self, ids: Sequence[int], vectors: np.ndarray, spans: Spans | None = None) -> None:
        self._vectors.append(vectors)
        if self._offsets is not None:
            if spans is None:
                raise ValueError("this writer was opened for chunk rows: spans are required")
            self._offsets.append(np.column_stack([np.asarray(ids, dtype=np.int64), *spans]))

    def close(self) -> int:
        self._vectors.close()
        if self._offsets is not None:
            self._offsets.close()
        return self._vectors.rows


class ParquetWriter:
    """`id` (+ `chunk`, `start`, `end` with spans) and `embedding` rows, one row group per write, so a reader can
    stream the output back too."""

    def __init__(self, path: Path, dim: int, dtype: np.dtype, *, spans: bool = False) -> None:
        import pyarrow.parquet as pq

        self._writer = pq.ParquetWriter(path, embedding_schema(dim, dtype, spans=spans), **PARQUET_OPTIONS)  # type: ignore[arg-type]
        self._written = 0

    def write(self, ids: Sequence[int], vectors: np.ndarray, spans: Spans | None = None) -> None:
        self._writer.write_table(embedding_table(ids, vectors, spans))
        self._written += len(vectors)

    def close(self) -> int:
        self._writer.close()
        return self._written


class JsonlWriter:
    """One `{"line": n, "embedding": [...]}` object per row (plus `chunk`, `start`, `end` with spans)."""

    def __init__(self, stream: IO[str], *, owns: bool = False) -> None:
        self._stream, self._owns = stream, owns
        self._written = 0

    def write(self, ids: Sequence[int], vectors: np.ndarray, spans: Spans | None = None) -> None:
        import orjson

        if spans is None:
            objects: Iterable[dict[str, object]] = (
                {"line": line, "embedding": row} for line, row in zip(ids, vectors)
            )
        else:
            objects = (
                {"line": line, "chunk": chunk, "start": start, "end": end, "embedding": row}
                for line, chunk, start, end, row in zip(
                    ids, spans.chunk.tolist(), spans.start.tolist(), spans.end.tolist(), vectors
                )
            )
        lines = [orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY) for obj in objects]
        if lines:
            self._stream.write(b"\n".join(lines).decode() + "\n")
        self._written += len(lines)

    def close(self) -> int:
        if self._owns:
            self._stream.close()
        else:
            self._stream.flush()
        return self._written


def open_writer(path: Path, dim: int, dtype: np.dtype, *, spans: bool = False) -> RowWriter:
    """By suffix: `.npy` (spans in `<name>.offsets.npy`), `.parquet`/`.pq`, anything else JSONL."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return NpyWriter(path, dim, dtype, spans=spans)
    if suffix in (".parquet", ".pq"):
        return ParquetWriter(path, dim, dtype, spans=spans)
    return JsonlWriter(path.open("w", encoding="utf-8"), owns=True)


def encode_stream(
    embedder: Embedder,
    records: Iterable[Record],
    writer: RowWriter,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[int], None] | None = None,
    chunk_tokens: int | None = None,
    overlap_tokens: int = 0,
    **options: object,
) -> int:
    """Encode `records` `chunk_size` at a time into `writer`; returns the number of rows written.

    With `chunk_tokens`, each record is cut into chunks of whole words (`Embedder.chunk`) and every chunk is a
    row, keyed by its record's id and its span of the text; a record with no tokens gives no row.
    """
    try:
        for step in chunked(records, chunk_size):
            texts = [record.text for record in step]
            if chunk_tokens is None:
                writer.write([record.line for record in step], embedder.encode(texts, **options))  # type: ignore[arg-type]
            else:
                writer.write(*_chunk_rows(embedder, step, texts, chunk_tokens, overlap_tokens, options))
            if progress is not None:
                progress(len(step))
    finally:
        written = writer.close()
    return written


def _chunk_rows(
    embedder: Embedder, step: list[Record], texts: list[str], chunk_tokens: int, overlap_tokens: int,
    options: dict[str, object],
) -> tuple[list[int], np.ndarray, Spans]:
    """One step's chunk rows: ids, vectors (finished as one batch) and spans."""
    from swiftembed.core.chunking import chunk_sums, finish_chunks

    chunked = chunk_sums(embedder, texts, chunk_tokens, overlap_tokens)
    ids = [record.line for record, one in zip(step, chunked) for _ in range(len(one))]
    vectors = finish_chunks(embedder, chunked, **options)  # type: ignore[arg-type]
    spans = np.array([span for one in chunked for span in one.spans], dtype=np.int64).reshape(-1, 2)
    index = np.concatenate([np.arange(len(one), dtype=np.int64) for one in chunked])
    return ids, vectors, Spans(index, spans[:, 0], spans[:, 1])


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
