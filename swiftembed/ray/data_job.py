"""Bulk embedding on Ray Data: `swiftembed batch INPUT OUTPUT_DIR` on a local Ray or a cluster.

The driver only plans: it cuts the input into shards (line-aligned byte ranges of a text/JSONL file, with the
number of each range's first line from one newline-counting pass; groups of row groups of a Parquet file).
Ray Data hands the shards to a pool of actors, each holding one `Embedder` around the token table shared
through the node's object store. An actor reads its shard itself and streams it through the same code as
`swiftembed encode` (`encode_stream` into a `ParquetWriter`), so a big file reads in parallel, memory per
actor stays one chunk, and a bad record is reported by its own line or row number. Each shard becomes
`part-<first id>.parquet` (`id` = 1-based line or row number, `embedding`): the file names sort in input
order. Neither texts nor vectors pass through the object store, and no writer processes start: on a small
machine, starting Ray Data's write tasks cost more than embedding (see docs/benchmarks.md).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swiftembed.files.bulk import (
    DEFAULT_CHUNK,
    InputError,
    InputFormat,
    OnError,
    ParquetWriter,
    Record,
    detect_format,
    embedding_schema,
    encode_stream,
    output_shape,
    parquet_file,
    read_parquet_records,
    read_records,
)

if TYPE_CHECKING:
    import pyarrow as pa

MIN_SHARD_BYTES = 1 << 20
MAX_SHARD_BYTES = 64 << 20
MAX_REPORTED = 1000  # skipped-record messages each shard sends back to the driver; all are counted


@dataclass(frozen=True)
class BatchResult:
    rows: int
    skipped: int
    shards: int
    workers: int
    messages: list[str]


def plan_shards(
    path: Path, fmt: InputFormat, *, column: str = "text", workers: int = 2, shard_bytes: int | None = None
) -> list[dict[str, Any]]:
    """Shards of about size / (4 x workers) bytes (or `shard_bytes`), so no worker idles while one finishes."""
    size = path.stat().st_size
    target = shard_bytes or min(MAX_SHARD_BYTES, max(MIN_SHARD_BYTES, size // (4 * max(workers, 1))))
    if fmt == "parquet":
        with parquet_file(path, column) as parquet:
            meta = parquet.metadata
        shards, start, first, rows, taken = [], 0, 1, 0, 0
        for index in range(meta.num_row_groups):
            rows += meta.row_group(index).num_rows
            taken += meta.row_group(index).total_byte_size
            if taken >= target or index == meta.num_row_groups - 1:
                shards.append({"start": start, "stop": index + 1, "first": first})
                start, first, rows, taken = index + 1, first + rows, 0, 0
        return shards
    cuts = [0]
    with path.open("rb") as handle:
        for offset in range(target, size, target):
            if offset <= cuts[-1]:
                continue
            handle.seek(offset)
            handle.readline()  # to the start of the next line
            if handle.tell() >= size:
                break
            cuts.append(handle.tell())
        cuts.append(size)
        shards, first = [], 1
        for start, stop in zip(cuts, cuts[1:]):
            shards.append({"start": start, "stop": stop, "first": first})
            first += _newlines(handle, start, stop)
    return [shard for shard in shards if shard["stop"] > shard["start"]]


def _newlines(handle: Any, start: int, stop: int) -> int:
    handle.seek(start)
    count, left = 0, stop - start
    while left > 0:
        block = handle.read(min(left, 1 << 20))
        if not block:
            break
        count += block.count(b"\n")
        left -= len(block)
    return count


def shard_records(
    path: str, fmt: InputFormat, shard: dict[str, Any], *, field: str, column: str, on_error: OnError,
    warn: Any, batch_rows: int,
) -> Iterator[Record]:
    """The records of one shard, numbered as in the whole file."""
    if fmt == "parquet":
        yield from read_parquet_records(
            path, column, on_error=on_error, warn=warn, batch_rows=batch_rows,
            row_groups=list(range(shard["start"], shard["stop"])), first_row=shard["first"],
        )
        return
    with open(path, "rb") as handle:
        handle.seek(shard["start"])
        yield from read_records(
            _lines_until(handle, shard["stop"]), fmt, field=field, source=path, on_error=on_error, warn=warn,
            first_line=shard["first"],
        )


def _lines_until(handle: Any, stop: int) -> Iterator[bytes]:
    position = handle.tell()
    while position < stop:
        line = handle.readline()
        if not line:
            return
        position += len(line)
        yield line


def part_path(output_dir: Path, first: int) -> Path:
    """A shard's output file, named by its first id so that names sort in input order."""
    return output_dir / f"part-{first:012d}.parquet"


class ShardEmbedder:
    """Ray Data callable class: one `Embedder` per actor, built once around the node's shared token table."""

    def __init__(
        self, *, path: str, fmt: InputFormat, output_dir: str, field: str, column: str, on_error: OnError,
        model: str | None, max_tokens: int | None, batch_size: int,
    ) -> None:
        from swiftembed.core.catalog import Catalog
        from swiftembed.ray.tables import SharedTables

        tables = SharedTables()
        self.embedder = Catalog.load([model], max_tokens=max_tokens, table=tables).default.embedder
        self.table_source = tables.sources[self.embedder.checksum]
        self.path, self.fmt, self.output_dir = path, fmt, Path(output_dir)
        self.field, self.column, self.on_error, self.batch_size = field, column, on_error, batch_size

    def __call__(self, shards: pa.Table) -> pa.Table:
        """Each shard into its own Parquet file; returns per shard the rows written and what was skipped."""
        import pyarrow as pa

        summary: dict[str, list[Any]] = {"first": [], "rows": [], "skipped": [], "messages": []}
        for shard in shards.to_pylist():
            skipped: list[str] = []
            records = shard_records(
                self.path, self.fmt, shard, field=self.field, column=self.column, on_error=self.on_error,
                warn=skipped.append, batch_rows=self.batch_size,
            )
            target = part_path(self.output_dir, shard["first"])
            partial = target.with_name(f".{target.name}.partial")  # a failed or retried shard leaves no half file
            try:
                writer = ParquetWriter(partial, *output_shape(self.embedder.dim, None, "float32"))
                rows = encode_stream(self.embedder, records, writer, chunk_size=self.batch_size)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            partial.replace(target)
            for key, value in zip(summary, (shard["first"], rows, len(skipped), skipped[:MAX_REPORTED])):
                summary[key].append(value)
        return pa.table(summary)


def run_batch(
    source: Path | str,
    output_dir: Path | str,
    *,
    fmt: InputFormat | None = None,
    field: str = "text",
    column: str = "text",
    on_error: OnError = "fail",
    model: str | None = None,
    max_tokens: int | None = -1,
    batch_size: int = DEFAULT_CHUNK,
    address: str | None = None,
    num_cpus: int | None = None,
    workers: int | None = None,
    cpus_per_worker: float = 1.0,
    shard_bytes: int | None = None,
) -> BatchResult:
    """Embed every record of `source` into Parquet files under `output_dir` with Ray Data.

    Uses the Ray this process is connected to, else connects to `address`, else starts a local Ray with
    `num_cpus` (default: every core) and stops it afterwards. `workers` (default: the CPUs free at the start)
    is the number of embedding actors. On a cluster, `source` and `output_dir` must be paths every node sees.
    """
    import ray

    from swiftembed.core.model import load_model

    source, output_dir = Path(source).resolve(), Path(output_dir).resolve()
    if not source.is_file():
        raise ValueError(f"input file {source} does not exist")
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ValueError(f"output directory {output_dir} is not empty")
    if batch_size < 1:
        raise ValueError("--batch-size must be positive")
    fmt = fmt or detect_format(source)
    loaded = load_model(model)  # fail here, not in every worker, on a bad model

    started = not ray.is_initialized()
    if started:
        if address is None:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False)
        else:
            ray.init(address=address)
    try:
        free = int(ray.available_resources().get("CPU", 0) // cpus_per_worker)
        workers = workers or max(1, free)
        shards = plan_shards(source, fmt, column=column, workers=workers, shard_bytes=shard_bytes)
        output_dir.mkdir(parents=True, exist_ok=True)
        if not shards:  # an empty input still gets a readable (empty) output
            import pyarrow.parquet as pq

            schema = embedding_schema(*output_shape(loaded.dim, None, "float32"))
            pq.write_table(schema.empty_table(), part_path(output_dir, 1))
            return BatchResult(0, 0, 0, 0, [])
        return _run(ray, source, output_dir, fmt, shards, workers, cpus_per_worker,
                    dict(field=field, column=column, on_error=on_error, model=model, max_tokens=max_tokens,
                         batch_size=batch_size))
    finally:
        if started:
            ray.shutdown()


def _run(
    ray: Any, source: Path, output_dir: Path, fmt: InputFormat, shards: list[dict[str, Any]], workers: int,
    cpus_per_worker: float, options: dict[str, Any],
) -> BatchResult:
    import ray.data

    workers = min(workers, len(shards))
    context = ray.data.DataContext.get_current()
    raise_original = context.raise_original_map_exception
    context.raise_original_map_exception = True  # else Ray Data hides the InputError (and its line) from us
    dataset = ray.data.from_items(shards, override_num_blocks=len(shards)).map_batches(
        ShardEmbedder,
        batch_size=1,
        batch_format="pyarrow",
        fn_constructor_kwargs=dict(path=str(source), fmt=fmt, output_dir=str(output_dir), **options),
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus_per_worker,
    )
    try:
        summary = sorted(dataset.take_all(), key=lambda row: row["first"])
    except Exception as exc:
        error = _input_error(exc)
        if error is None:
            raise
        raise error from None
    finally:
        context.raise_original_map_exception = raise_original
    messages = [message for row in summary for message in row["messages"]]
    for message in messages:
        print(message, file=sys.stderr)
    rows, skipped = sum(row["rows"] for row in summary), sum(row["skipped"] for row in summary)
    return BatchResult(rows, skipped, len(shards), workers, messages)


def _input_error(exc: BaseException | None) -> InputError | None:
    """The `InputError` a worker raised, out of the exceptions Ray wraps it in."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, InputError):  # maybe Ray's RayTaskError(InputError): rebuild the plain one
            return InputError(exc.source, exc.line, exc.reason, exc.unit)
        seen.add(id(exc))
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None
