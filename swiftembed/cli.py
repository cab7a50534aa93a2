"""The `swiftembed` command line: encode texts and files, inspect a model, run the service."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from swiftembed import __version__
from swiftembed.bulk import (
    DEFAULT_CHUNK,
    InputError,
    JsonlWriter,
    NpyWriter,
    Record,
    RowWriter,
    count_lines,
    detect_format,
    encode_stream,
    read_records,
)
from swiftembed.embedder import Embedder
from swiftembed.evaluate import add_eval_command
from swiftembed.model import ModelError
from swiftembed.pooling import PRECISIONS
from swiftembed.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ModelError, InputError, ValueError) as exc:
        print(f"swiftembed: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swiftembed", description=__doc__)
    parser.add_argument("--version", action="version", version=f"swiftembed {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_encode(commands)
    _add_info(commands)
    _add_serve(commands)
    add_eval_command(commands)
    return parser


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model directory or Hub id (default: vendored potion-base-8M)")
    parser.add_argument("--max-tokens", type=int, default=-1, help="tokens per text (default: the model's, 512)")


def load_embedder(args: argparse.Namespace) -> Embedder:
    return Embedder.load(args.model, max_tokens=args.max_tokens)


def _add_encode(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser(
        "encode",
        help="embed texts given as arguments, on stdin, or in a text/JSONL file",
        description="Texts come from the arguments, else --input FILE (one text per line, or JSONL with "
        "--field), else stdin (one text per line). Output goes to --output (.npy or .jsonl) or stdout (JSONL).",
    )
    p.add_argument("texts", nargs="*", help="texts to embed")
    p.add_argument("-i", "--input", type=Path, help="input file: .jsonl/.ndjson is JSONL, anything else text lines")
    p.add_argument("--input-format", choices=("text", "jsonl"), help="override the format guessed from the suffix")
    p.add_argument("--field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("-o", "--output", type=Path, help="output file: .npy (row i = record i) or .jsonl")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail", help="malformed JSONL lines")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK, help="texts encoded per step (bounds memory)")
    p.add_argument("--dimensions", type=int, help="keep the first k dimensions (re-normalized)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32")
    p.add_argument("--no-normalize", action="store_true", help="return raw mean vectors")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on files")
    add_model_options(p)
    p.set_defaults(run=_run_encode)


def _run_encode(args: argparse.Namespace) -> int:
    if args.chunk_size < 1:
        raise ValueError("--chunk-size must be positive")
    embedder = load_embedder(args)
    options = {
        "dimensions": args.dimensions,
        "precision": args.precision,
        "normalize": False if args.no_normalize else None,
    }
    embedder.check_options(args.dimensions, args.precision)
    total: int | None = None
    if args.texts:
        records = iter([Record(i, text) for i, text in enumerate(args.texts, start=1)])
        total = len(args.texts)
    elif args.input is not None:
        if not args.input.is_file():
            raise ValueError(f"input file {args.input} does not exist")
        fmt = args.input_format or detect_format(args.input)
        total = count_lines(args.input)
        handle = args.input.open(encoding="utf-8", errors="strict", newline="")
        records = read_records(handle, fmt, field=args.field, source=str(args.input), on_error=args.on_error)
    else:
        records = read_records(sys.stdin, args.input_format or "text", field=args.field, on_error=args.on_error)

    writer: RowWriter
    if args.output is not None and args.output.suffix.lower() == ".npy":
        if total is None:  # stdin: size unknown until read; texts on stdin are held in memory
            buffered = list(records)
            records, total = iter(buffered), len(buffered)
        dim = args.dimensions or embedder.dim
        if args.precision in ("binary", "ubinary"):
            dim = (dim + 7) // 8
        dtype = {"float32": np.float32, "int8": np.int8, "binary": np.int8}.get(args.precision, np.uint8)
        writer = NpyWriter(args.output, total, dim, np.dtype(dtype))
    elif args.output is not None:
        writer = JsonlWriter(args.output.open("w", encoding="utf-8"))
    else:
        writer = JsonlWriter(sys.stdout)

    bar = None
    if args.input is not None and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="text", file=sys.stderr, disable=None)
    try:
        written = encode_stream(
            embedder, records, writer, chunk_size=args.chunk_size, progress=bar.update if bar else None, **options
        )
    except UnicodeDecodeError as exc:
        raise ValueError(f"{args.input}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    finally:
        if bar is not None:
            bar.close()
    if args.output is not None:
        print(f"wrote {written} embeddings to {args.output}", file=sys.stderr)
    return 0


def _add_info(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("info", help="print a model's facts as JSON")
    add_model_options(p)
    p.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    embedder = load_embedder(args)
    facts = {
        "model": embedder.model_id,
        "checksum": embedder.checksum,
        "dimension": embedder.dim,
        "vocab_size": embedder.vocab_size,
        "max_tokens": embedder.max_tokens,
        "normalize": embedder.normalize,
        "table_dtype": str(embedder.model.embeddings.dtype),
        "vocabulary_quantized": embedder.model.mapping is not None,
        "version": __version__,
    }
    print(json.dumps(facts, indent=2))
    return 0


def _add_serve(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser(
        "serve",
        help="run the HTTP service (Ray Serve on a local Ray by default; --standalone for one process)",
        description="Limits and auth also read SWIFTEMBED_* environment variables (see Settings); flags win.",
    )
    p.add_argument("--standalone", action="store_true", help="one uvicorn process, no Ray")
    p.add_argument("--profile", choices=("default", "throughput"), default="default",
                   help="Ray Serve ingress: default proxy, or throughput-optimized with HAProxy")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (default 1)")
    p.add_argument("--metrics-port", type=int, default=8080, help="Ray's metrics export port (default 8080)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require Authorization: Bearer KEY (or SWIFTEMBED_API_KEY)")
    p.add_argument("--max-texts", type=int, help="texts per request (default 2048)")
    p.add_argument("--max-chars", type=int, help="characters per text (default 100000)")
    p.add_argument("--long-text", choices=("truncate", "reject"), help="texts over --max-chars (default truncate)")
    p.add_argument("--max-body-bytes", type=int, help="JSON request body limit (default 16 MiB)")
    p.add_argument("--cors-origin", action="append", dest="cors_origins", help="allow this CORS origin (repeatable)")
    add_model_options(p)
    p.set_defaults(run=_run_serve)


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        api_key=args.api_key,
        max_texts=args.max_texts,
        max_chars=args.max_chars,
        long_text=args.long_text,
        max_body_bytes=args.max_body_bytes,
        cors_origins=tuple(args.cors_origins) if args.cors_origins else None,
    )


def _run_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.standalone:
        from swiftembed.standalone import run_standalone

        run_standalone(load_embedder(args), settings, host=args.host, port=args.port)
        return 0
    from swiftembed.serve import run_local

    run_local(
        model=args.model,
        max_tokens=args.max_tokens,
        settings=settings,
        host=args.host,
        port=args.port,
        profile=args.profile,
        num_replicas=args.replicas,
        metrics_port=args.metrics_port,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
