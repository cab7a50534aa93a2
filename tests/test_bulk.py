"""Bulk embedding: `swiftembed encode` over text/JSONL/Parquet files and the Ray Data job (`swiftembed batch`).

Both paths must give `Embedder.encode`'s vectors row for row with ids = 1-based line (row) numbers, stream in
bounded memory, and report a malformed record by its number whether it is skipped or fails the run.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from swiftembed.cli import main
from swiftembed.files.bulk import InputError, NpyWriter, ParquetWriter, encode_stream, open_input, read_records
from swiftembed.ray.data_job import plan_shards, shard_records
from tests.conftest import VARIED_TEXTS

FIELD = "body"
SUFFIX = {"text": ".txt", "jsonl": ".jsonl", "parquet": ".parquet"}


@pytest.fixture(scope="module")
def texts(sentences) -> list[str]:
    """A few thousand texts, line-safe (no \\n), with the awkward ones spread through them."""
    extra = [t.replace("\n", " ") for t in VARIED_TEXTS] + ["carriage\rreturn inside", "\x85next line\u2028sep"]
    out = list(sentences[:3000])
    for i, text in enumerate(extra):
        out.insert(i * 97 % len(out), text)
    return out


def write_input(path: Path, fmt: str, texts: list[str], *, row_group: int = 500) -> Path:
    if fmt == "text":
        path.write_bytes(("\n".join(texts) + "\n").encode())
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({FIELD: t, "n": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    else:
        pq.write_table(pa.table({"n": list(range(len(texts))), FIELD: texts}), path, row_group_size=row_group)
    return path


def read_parquet_output(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of a Parquet file or directory (its files in name order), in stored order."""
    table = pq.read_table(path)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 256)
    ids = table["id"].to_numpy()
    vectors = table["embedding"].combine_chunks().flatten().to_numpy().reshape(len(ids), 256)
    return ids, vectors


# The streaming path (`swiftembed encode`) -------------------------------------------------------------------
@pytest.mark.parametrize("out", ["npy", "parquet", "jsonl"])
@pytest.mark.parametrize("fmt", ["text", "jsonl", "parquet"])
def test_encode_file_equals_embedder(tmp_path, embedder, texts, fmt, out, capsys):
    source = write_input(tmp_path / f"in{SUFFIX[fmt]}", fmt, texts)
    target = tmp_path / f"out.{out}"
    argv = ["encode", "-i", str(source), "-o", str(target), "--chunk-size", "256", "--no-progress"]
    assert main([*argv, "--field", FIELD, "--column", FIELD]) == 0, capsys.readouterr().err
    expected = embedder.encode(texts)
    if out == "npy":
        vectors = np.load(target)
        ids = np.arange(1, len(texts) + 1)
    elif out == "parquet":
        ids, vectors = read_parquet_output(target)
    else:
        rows = [json.loads(line) for line in target.read_text().splitlines()]
        ids = np.array([row["line"] for row in rows])
        vectors = np.array([row["embedding"] for row in rows], dtype=np.float32)
    np.testing.assert_array_equal(ids, np.arange(1, len(texts) + 1))
    np.testing.assert_array_equal(vectors, expected)


def test_parquet_output_keeps_quantized_dtype(tmp_path, embedder):
    target = tmp_path / "out.parquet"
    assert main(["encode", "a", "b c", "-o", str(target), "--precision", "int8", "--dimensions", "64"]) == 0
    table = pq.read_table(target)
    assert table.schema.field("embedding").type == pa.list_(pa.int8(), 64)
    np.testing.assert_array_equal(
        np.array(table["embedding"].to_pylist(), dtype=np.int8), embedder.encode(["a", "b c"], precision="int8",
                                                                                   dimensions=64)
    )


def test_text_lines_split_on_newline_only(tmp_path, embedder):
    """A lone \\r stays inside its text (it once split the line and overflowed the counted .npy rows)."""
    source = tmp_path / "in.txt"
    source.write_bytes(b"a\rb\r\nc\n\nd")  # CRLF ending, a blank line, an unterminated last line
    target = tmp_path / "out.npy"
    assert main(["encode", "-i", str(source), "-o", str(target), "--no-progress"]) == 0
    np.testing.assert_array_equal(np.load(target), embedder.encode(["a\rb", "c", "", "d"]))


@pytest.mark.parametrize(("fmt", "out"), [("text", "npy"), ("jsonl", "parquet"), ("parquet", "parquet")])
def test_streaming_memory_is_bounded(tmp_path, embedder, sentences, fmt, out):
    """Peak memory while encoding 80 chunks stays far below the output's size: nothing accumulates."""
    chunk, inputs = 500, 40_000
    texts = [sentences[i % len(sentences)] + f" #{i}" for i in range(inputs)]
    source = write_input(tmp_path / f"in{SUFFIX[fmt]}", fmt, texts, row_group=chunk)
    all_vectors = inputs * embedder.dim * 4

    def run(limit: int | None, progress=None) -> int:
        records, total = open_input(source, fmt, field=FIELD, column=FIELD, chunk_size=chunk)
        records = (r for r in records if limit is None or r.line <= limit)
        target = tmp_path / f"out.{out}"
        writer = (NpyWriter(target, embedder.dim, np.dtype(np.float32)) if out == "npy"
                  else ParquetWriter(target, embedder.dim, np.dtype(np.float32)))
        return encode_stream(embedder, records, writer, chunk_size=chunk, progress=progress)

    embedder.encode(texts)  # warm the tokenizer's word cache (bounded, and not what this test measures)
    run(2 * chunk)  # and one-time costs: lazy imports, first allocations
    arrow_base, arrow_peak = pa.total_allocated_bytes(), 0

    def sample(_: int) -> None:  # pyarrow allocates outside tracemalloc's view: sample its pool per chunk
        nonlocal arrow_peak
        arrow_peak = max(arrow_peak, pa.total_allocated_bytes() - arrow_base)

    tracemalloc.start()
    try:
        written = run(None, sample)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert written == inputs
    assert peak < all_vectors / 8, f"Python heap peak {peak / 1e6:.1f} MB for {all_vectors / 1e6:.1f} MB of vectors"
    assert arrow_peak < all_vectors / 8, f"Arrow peak {arrow_peak / 1e6:.1f} MB for {all_vectors / 1e6:.1f} MB"


def documents(sentences: list[str]) -> list[str]:
    """Records for chunking: long ones (many sentences on one line), short, empty, whitespace-only, non-ASCII."""
    long = [" ".join(sentences[i : i + 40]) for i in range(0, 400, 40)]
    return [long[0], "", "one word", "   ", *long[1:5], "naïve café — déjà vu " * 30, *long[5:]]


@pytest.mark.parametrize("out", ["npy", "parquet", "jsonl"])
def test_encode_chunks_equals_embedder_chunk(tmp_path, embedder, sentences, out, capsys):
    """`--chunk-tokens`: one row per chunk, keyed by record id, chunk number and span; vectors and spans are
    `Embedder.chunk`'s; records without tokens give no row; steps split records, never a record's chunks."""
    docs = documents(sentences)
    source = write_input(tmp_path / "in.txt", "text", docs)
    target = tmp_path / f"out.{out}"
    argv = ["encode", "-i", str(source), "-o", str(target), "--chunk-tokens", "24", "--overlap-tokens", "6",
            "--chunk-size", "3", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    expected = [(line, k, c.start, c.end, c.embedding) for line, doc in enumerate(docs, start=1)
                for k, c in enumerate(embedder.chunk(doc, 24, 6))]
    if out == "npy":
        vectors = np.load(target)
        offsets = np.load(tmp_path / "out.offsets.npy")
        assert offsets.dtype == np.int64 and offsets.shape == (len(expected), 4)
        keys = [tuple(row) for row in offsets.tolist()]
    elif out == "parquet":
        table = pq.read_table(target)
        assert table.column_names == ["id", "chunk", "start", "end", "embedding"]
        keys = list(zip(*(table[name].to_pylist() for name in ("id", "chunk", "start", "end"))))
        vectors = table["embedding"].combine_chunks().flatten().to_numpy().reshape(len(keys), 256)
    else:
        rows = [json.loads(line) for line in target.read_text().splitlines()]
        keys = [(row["line"], row["chunk"], row["start"], row["end"]) for row in rows]
        vectors = np.array([row["embedding"] for row in rows], dtype=np.float32)
    assert keys == [row[:4] for row in expected]
    assert {line for line, *_ in keys} == {1, 3, *range(5, len(docs) + 1)}  # "" and "   " have no tokens
    np.testing.assert_allclose(vectors, np.stack([row[4] for row in expected]), atol=1e-6)
    for line, _, start, end in keys[:50]:  # the defining property, through the file
        text = docs[line - 1][start:end]
        assert text == text.strip() and text


def test_encode_chunk_options_checked(capsys):
    assert main(["encode", "x", "--chunk-tokens", "8", "--overlap-tokens", "8"]) == 2
    assert "--overlap-tokens from 0 to --chunk-tokens - 1" in capsys.readouterr().err
    assert main(["encode", "x", "--chunk-tokens", "0"]) == 2
    assert main(["encode", "x", "--overlap-tokens", "2"]) == 2
    assert "--overlap-tokens needs --chunk-tokens" in capsys.readouterr().err


def test_npy_output_from_stdin_streams(tmp_path, embedder, monkeypatch):
    """The .npy row count is written last, so stdin (size unknown) streams into it instead of being held."""
    import io
    import sys

    target = tmp_path / "out.npy"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"first\nsecond\n\nfourth\n")))
    assert main(["encode", "-o", str(target), "--chunk-size", "2"]) == 0
    np.testing.assert_array_equal(np.load(target), embedder.encode(["first", "second", "", "fourth"]))
    header = target.read_bytes()[:128]
    assert header.startswith(b"\x93NUMPY") and header.endswith(b"\n")
    assert np.load(target, mmap_mode="r").shape == (4, 256)


BAD_JSONL = '{"body": "one"}\n{"body": "two"}\nnot json\n{"other": 1}\n\n{"body": "three"}\n'


def test_malformed_records_reported_by_number(tmp_path, embedder, capsys):
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text(BAD_JSONL)
    text = tmp_path / "in.txt"
    text.write_bytes(b"fine\nbad \xff byte\nlast\n")
    table = tmp_path / "in.parquet"
    pq.write_table(pa.table({FIELD: ["one", None, "three", None]}), table, row_group_size=2)
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({FIELD: [7, 8]}), ints)
    cases = [
        (jsonl, ["in.jsonl:3: invalid JSON", "in.jsonl:4: field 'body' is missing"], ["one", "two", "three"],
         [1, 2, 6]),
        (text, ["in.txt:2: not valid UTF-8"], ["fine", "last"], [1, 3]),
        (table, ["in.parquet: row 2: null in column 'body'", "in.parquet: row 4: null"], ["one", "three"], [1, 3]),
        (ints, ["ints.parquet: row 1: not a string (int)", "ints.parquet: row 2: not a string"], [], []),
    ]
    for source, reports, kept, ids in cases:
        out = tmp_path / "out.parquet"
        argv = ["encode", "-i", str(source), "--field", FIELD, "--column", FIELD, "-o", str(out), "--no-progress"]
        assert main(argv) == 2
        assert reports[0] in capsys.readouterr().err  # fail mode: the first bad record, by number
        assert main([*argv, "--on-error", "skip"]) == 0
        err = capsys.readouterr().err
        assert all(f"skipped {source.parent}/{report}" in err for report in reports), err
        got_ids, vectors = read_parquet_output(out)
        assert got_ids.tolist() == ids
        if kept:
            np.testing.assert_array_equal(vectors, embedder.encode(kept))


def test_parquet_missing_column(tmp_path, capsys):
    source = write_input(tmp_path / "in.parquet", "parquet", ["a"])
    assert main(["encode", "-i", str(source), "--column", "nope"]) == 2
    assert "no column 'nope' (columns: n, body)" in capsys.readouterr().err


# Sharding for the Ray job, checked without Ray -------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["text", "jsonl", "parquet"])
@pytest.mark.parametrize("shard_bytes", [1, 7, 4096, 1 << 30])
def test_shards_cover_the_input_in_order(tmp_path, texts, fmt, shard_bytes):
    source = write_input(tmp_path / f"in{SUFFIX[fmt]}", fmt, texts[:700] + ["tail without newline"], row_group=64)
    if fmt == "text":  # CRLF and an unterminated last line must not shift later shards' numbers
        source.write_bytes(source.read_bytes().replace(b"\n", b"\r\n", 5).rstrip(b"\n"))
    whole, _ = open_input(source, fmt, field=FIELD, column=FIELD)
    expected = [(r.line, r.text) for r in whole]
    shards = plan_shards(source, fmt, column=FIELD, shard_bytes=shard_bytes)
    got = [
        (r.line, r.text)
        for shard in shards
        for r in shard_records(str(source), fmt, shard, field=FIELD, column=FIELD, on_error="fail", warn=None,
                               batch_rows=100)
    ]
    assert got == expected
    assert len(expected) == 701
    assert len(shards) == 1 if shard_bytes == 1 << 30 else len(shards) > 5


def test_shard_numbering_reports_true_line(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a"}\n' * 50 + "broken\n" + '{"text": "b"}\n' * 10)
    shards = plan_shards(source, "jsonl", shard_bytes=100)
    with pytest.raises(InputError, match=r"in.jsonl:51: invalid JSON"):
        for shard in shards:
            list(shard_records(str(source), "jsonl", shard, field="text", column="text", on_error="fail", warn=None,
                               batch_rows=10))


def test_read_records_text_stream_still_works():
    import io

    records = list(read_records(io.StringIO('{"text": "x"}\n\n{"text": "y"}\n'), "jsonl"))
    assert [(r.line, r.text) for r in records] == [(1, "x"), (3, "y")]


# The Ray Data job ---------------------------------------------------------------------------------------------
@pytest.mark.ray
def test_ray_batch_equals_embedder(ray_serve, tmp_path, embedder, texts):
    from swiftembed.ray.data_job import run_batch

    expected = embedder.encode(texts)
    for fmt, workers in (("text", 2), ("jsonl", 1), ("parquet", 1)):
        source = write_input(tmp_path / f"in{SUFFIX[fmt]}", fmt, texts)
        out = tmp_path / f"out-{fmt}"
        # Small shards, several per worker: ids must come from the shard plan, not from arrival order.
        result = run_batch(source, out, field=FIELD, column=FIELD, workers=workers, cpus_per_worker=0.5,
                           shard_bytes=32 << 10, batch_size=300)
        assert result.rows == len(texts) and result.skipped == 0 and result.shards > 2, result
        ids, vectors = read_parquet_output(out)
        np.testing.assert_array_equal(ids, np.arange(1, len(texts) + 1))
        np.testing.assert_array_equal(vectors, expected)


@pytest.mark.ray
def test_ray_batch_malformed_lines(ray_serve, tmp_path, embedder):
    from swiftembed.ray.data_job import run_batch

    source = tmp_path / "in.jsonl"
    source.write_text(BAD_JSONL)
    with pytest.raises(InputError, match=r"in.jsonl:3: invalid JSON"):
        run_batch(source, tmp_path / "fail", field=FIELD, workers=1, cpus_per_worker=0.5)
    assert not list((tmp_path / "fail").iterdir())  # the failed shard's partial file is gone
    result = run_batch(source, tmp_path / "skip", field=FIELD, on_error="skip", workers=1, cpus_per_worker=0.5)
    assert result.rows == 3 and result.skipped == 2
    assert any("in.jsonl:3: invalid JSON" in m for m in result.messages)
    assert any("in.jsonl:4: field 'body'" in m for m in result.messages)
    ids, vectors = read_parquet_output(tmp_path / "skip")
    assert ids.tolist() == [1, 2, 6]
    np.testing.assert_array_equal(vectors, embedder.encode(["one", "two", "three"]))
