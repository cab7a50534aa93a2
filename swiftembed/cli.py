"""The `swiftembed` command line: encode texts and files, inspect a model, run the service."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from swiftembed import __version__
from swiftembed.core.catalog import BUNDLED, Catalog
from swiftembed.core.embedder import Embedder
from swiftembed.core.model import ModelError
from swiftembed.core.pooling import PRECISIONS
from swiftembed.eval import quality
from swiftembed.files.bulk import (
    DEFAULT_CHUNK,
    INPUT_FORMATS,
    InputError,
    JsonlWriter,
    Record,
    RowWriter,
    detect_format,
    encode_stream,
    open_input,
    open_writer,
    output_shape,
    read_records,
)
from swiftembed.ray.ingress import INGRESSES
from swiftembed.service.settings import Settings, read_key_file


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
    _add_batch(commands)
    _add_info(commands)
    _add_serve(commands)
    _add_env(commands)
    _add_eval(commands)
    return parser


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model directory, bundled model name (potion-base-8M, "
                        "swiftembed-potion-sts-8M) or Hub id (default: vendored potion-base-8M)")
    parser.add_argument("--max-tokens", type=int, default=-1, help="tokens per text (default: the model's, 512)")


def load_embedder(args: argparse.Namespace) -> Embedder:
    return Embedder.load(args.model, max_tokens=args.max_tokens)


def _add_encode(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser(
        "encode",
        help="embed texts given as arguments, on stdin, or in a text/JSONL/Parquet file",
        description="Texts come from the arguments, else --input FILE (one text per line, JSONL with --field, or "
        "Parquet with --column), else stdin (one text per line). Output goes to --output (.npy, .parquet or "
        ".jsonl) or stdout (JSONL). Files stream in chunks of --chunk-size texts, so memory stays bounded.",
    )
    p.add_argument("texts", nargs="*", help="texts to embed")
    p.add_argument("-i", "--input", type=Path,
                   help="input file: .jsonl/.ndjson is JSONL, .parquet/.pq Parquet, anything else text lines")
    p.add_argument("--input-format", choices=INPUT_FORMATS, help="override the format guessed from the suffix")
    p.add_argument("--field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--column", default="text", help="Parquet column holding the text (default: text)")
    p.add_argument("-o", "--output", type=Path,
                   help="output file: .npy (row i = record i), .parquet (id = line/row number, embedding) or .jsonl")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="a malformed record (bad JSONL line, invalid UTF-8, Parquet null or non-string): stop, or "
                   "report its line/row number and go on")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK, help="texts encoded per step (bounds memory)")
    p.add_argument("--chunk-tokens", type=int, metavar="N",
                   help="cut each text into chunks of whole words of at most N tokens, one output row per chunk "
                   "with the record's id and the chunk's number and character span (start, end); .npy output "
                   "writes the spans to <name>.offsets.npy as int64 rows (id, chunk, start, end)")
    p.add_argument("--overlap-tokens", type=int, default=0, metavar="M",
                   help="with --chunk-tokens: consecutive chunks share at most M tokens (default 0)")
    p.add_argument("--dimensions", type=int, help="keep the first k dimensions (re-normalized)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32")
    p.add_argument("--no-normalize", action="store_true", help="return raw mean vectors")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on files")
    add_model_options(p)
    p.set_defaults(run=_run_encode)


def _run_encode(args: argparse.Namespace) -> int:
    if args.chunk_size < 1:
        raise ValueError("--chunk-size must be positive")
    if args.chunk_tokens is not None and not 0 <= args.overlap_tokens < args.chunk_tokens:
        raise ValueError("--chunk-tokens must be positive and --overlap-tokens from 0 to --chunk-tokens - 1")
    if args.chunk_tokens is None and args.overlap_tokens:
        raise ValueError("--overlap-tokens needs --chunk-tokens")
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
        records, total = open_input(
            args.input, args.input_format or detect_format(args.input), field=args.field, column=args.column,
            on_error=args.on_error, chunk_size=args.chunk_size,
        )
    else:
        if args.input_format == "parquet":
            raise ValueError("Parquet input must be a file (--input)")
        stdin = getattr(sys.stdin, "buffer", sys.stdin)  # bytes: split on \n only, bad UTF-8 reported by line
        records = read_records(stdin, args.input_format or "text", field=args.field, on_error=args.on_error)

    chunks = args.chunk_tokens is not None
    if args.output is None:
        writer: RowWriter = JsonlWriter(sys.stdout)
    else:
        writer = open_writer(args.output, *output_shape(embedder.dim, args.dimensions, args.precision), spans=chunks)

    bar = None
    if args.input is not None and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="text", file=sys.stderr, disable=None)
    try:
        written = encode_stream(
            embedder, records, writer, chunk_size=args.chunk_size, progress=bar.update if bar else None,
            chunk_tokens=args.chunk_tokens, overlap_tokens=args.overlap_tokens, **options,
        )
    finally:
        if bar is not None:
            bar.close()
    if args.output is not None:
        what = "chunk embeddings" if chunks else "embeddings"
        print(f"wrote {written} {what} to {args.output}", file=sys.stderr)
    return 0


def _add_batch(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser(
        "batch",
        help="embed a large text/JSONL/Parquet file with Ray Data into Parquet files (id, embedding)",
        description="Shards the input, embeds the shards on a pool of Ray actors (one Embedder each, the token "
        "table shared per node) and writes Parquet files under OUTPUT_DIR with id = the record's 1-based line "
        "(Parquet: row) number. Starts a local Ray unless --address names a cluster; on a cluster INPUT and "
        "OUTPUT_DIR must be paths every node sees.",
    )
    p.add_argument("input", type=Path, help="input file: .jsonl/.ndjson is JSONL, .parquet/.pq Parquet, else text")
    p.add_argument("output_dir", type=Path, help="directory for the Parquet files (created; must be empty)")
    p.add_argument("--input-format", choices=INPUT_FORMATS, help="override the format guessed from the suffix")
    p.add_argument("--field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--column", default="text", help="Parquet column holding the text (default: text)")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail", help="a malformed record")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all cores)")
    p.add_argument("--workers", type=int, help="embedding actors (default: one per free CPU)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_CHUNK, help="texts per encode call in a worker")
    add_model_options(p)
    p.set_defaults(run=_run_batch)


def _run_batch(args: argparse.Namespace) -> int:
    from swiftembed.ray.data_job import run_batch

    result = run_batch(
        args.input, args.output_dir, fmt=args.input_format, field=args.field, column=args.column,
        on_error=args.on_error, model=args.model, max_tokens=args.max_tokens, batch_size=args.batch_size,
        address=args.address, num_cpus=args.num_cpus, workers=args.workers,
    )
    skipped = f", skipped {result.skipped} malformed records" if result.skipped else ""
    print(f"wrote {result.rows} embeddings to {args.output_dir} ({result.workers} workers){skipped}", file=sys.stderr)
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
        "table_dtype": embedder.model.table_dtype,
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
    p.add_argument("--ingress", choices=INGRESSES, default="replica",
                   help="how HTTP reaches the replicas: each replica answers on --port itself (default), Ray's "
                   "HAProxy ingress (falls back to the proxy when HAProxy is missing), or Ray's Python proxy")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (default 1)")
    p.add_argument("--metrics-port", type=int, default=8080, help="Ray's metrics export port (default 8080)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-file", metavar="PATH", help="require Authorization: Bearer KEY, KEY read from PATH "
                   "(or SWIFTEMBED_API_KEY / SWIFTEMBED_API_KEY_FILE in the environment)")
    p.add_argument("--api-key", help=argparse.SUPPRESS)  # kept for old scripts: it warns (the process list shows it)
    d = Settings()  # every default from the one place that holds it
    p.add_argument("--max-texts", type=int, help=f"texts per request (default {d.max_texts})")
    p.add_argument("--max-chars", type=int, help=f"characters per text (default {d.max_chars})")
    p.add_argument("--long-text", choices=("truncate", "reject"),
                   help=f"texts over --max-chars (default {d.long_text})")
    p.add_argument("--max-body-bytes", type=int, help=f"JSON request body limit (default {d.max_body_bytes})")
    p.add_argument("--max-batch-size", type=int,
                   help=f"most requests merged into one kernel call (default {d.max_batch_size})")
    p.add_argument("--batch-wait-timeout-s", type=float,
                   help=f"how long a batch may wait for more requests (default {d.batch_wait_timeout_s})")
    p.add_argument("--cors-origin", action="append", dest="cors_origins", help="allow this CORS origin (repeatable)")
    p.add_argument("--grpc-port", type=int, help="also serve TEI's gRPC API on this port of --host (default "
                   f"{'off' if d.grpc_port is None else d.grpc_port}; under Ray every replica listens there)")
    p.add_argument("--model", action="append", dest="models", metavar="[NAME=]MODEL",
                   help="serve this model: a directory, bundled model name or Hub id, as NAME if given (repeatable; "
                   f"default: the bundled models, {', '.join(BUNDLED)}); requests choose one by `model`")
    p.add_argument("--default-model", help="the model for requests that name none (default: the first --model)")
    p.add_argument("--max-tokens", type=int, default=-1, help="tokens per text (default: each model's, 512)")
    p.set_defaults(run=_run_serve)


def _add_env(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser(
        "env",
        help="the environment Ray must start with for an ingress, as shell exports",
        description='For `serve run` / `ray start`: eval "$(swiftembed env)" before starting Ray.',
    )
    p.add_argument("--ingress", choices=INGRESSES, default="replica")
    p.add_argument("--port", type=int, default=8000, help="the service's port (names HAProxy's file directory)")
    p.add_argument("--auth", choices=("token", "disabled"), default="token",
                   help="Ray's token authentication (a head starts with it on; every node must then have it and "
                        "the same token)")
    p.add_argument("--auth-token-file", type=Path,
                   help="the file holding the cluster's token, the same on every node (RAY_AUTH_TOKEN_PATH; "
                        "default: Ray's ~/.ray/auth_token). Its path is printed, never the token")
    p.set_defaults(run=_run_env)


def _run_env(args: argparse.Namespace) -> int:
    import shlex

    from swiftembed.ray.ingress import choose_ingress, serve_environment

    env = serve_environment(choose_ingress(args.ingress), args.port)
    env["RAY_AUTH_MODE"] = args.auth
    if args.auth == "token" and args.auth_token_file is not None:
        env["RAY_AUTH_TOKEN_PATH"] = str(args.auth_token_file.resolve())
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
    if args.auth == "token" and args.auth_token_file is None and "RAY_AUTH_TOKEN" not in os.environ:
        token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        state = "found" if token.is_file() else "missing: `ray get-auth-token --generate` makes one"
        print(f"# Ray's token: {token} ({state}); every node needs the same token there, or RAY_AUTH_TOKEN_PATH "
              "naming a file that holds it")
    return 0


def settings_from_args(args: argparse.Namespace) -> Settings:
    api_key = args.api_key
    if api_key is not None:
        print("swiftembed: warning: --api-key is visible to every user of this machine in the process list; "
              "use --api-key-file or SWIFTEMBED_API_KEY", file=sys.stderr)
    if args.api_key_file is not None:
        api_key = read_key_file(args.api_key_file)
    return Settings.from_env(
        api_key=api_key,
        max_texts=args.max_texts,
        max_chars=args.max_chars,
        long_text=args.long_text,
        max_body_bytes=args.max_body_bytes,
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_timeout_s,
        grpc_port=args.grpc_port,
        cors_origins=tuple(args.cors_origins) if args.cors_origins else None,
    )


def _run_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.standalone:
        from swiftembed.http.server import StartCompanion, run_standalone

        catalog = Catalog.load(args.models, default=args.default_model, max_tokens=args.max_tokens)
        beside: list[StartCompanion] = []
        if settings.grpc_port is not None:  # TEI's gRPC API on the same loop, over the same service
            from swiftembed.grpc.server import start_grpc

            beside.append(functools.partial(start_grpc, host=args.host, port=settings.grpc_port))
        run_standalone(catalog, settings, host=args.host, port=args.port, beside=beside)
        return 0
    from swiftembed.ray.deployment import run_local

    run_local(
        models=args.models,
        default_model=args.default_model,
        max_tokens=args.max_tokens,
        settings=settings,
        host=args.host,
        port=args.port,
        ingress=args.ingress,
        num_replicas=args.replicas,
        metrics_port=args.metrics_port,
    )
    return 0


def _add_eval(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("eval", help="measure quality: STS correlation, failure-mode suite")
    sub = p.add_subparsers(dest="eval_command", required=True)
    sts = sub.add_parser(
        "sts",
        help="Spearman/Pearson x100 of cosine similarity against gold scores",
        description="FILE is an STS-Benchmark TSV (genre, file, year, id, score 0..5, sentence1, sentence2) or "
        'JSONL, one {"a": ..., "b": ..., "score": ...} per line.',
    )
    sts.add_argument("file", type=Path)
    sts.add_argument("--format", choices=("tsv", "jsonl"), help="default: jsonl for .jsonl/.ndjson, else tsv")
    sts.add_argument("--contextual", action="store_true", help=f"also score {quality.CONTEXTUAL_NAME} (eval extra)")
    add_model_options(sts)
    sts.set_defaults(run=_run_sts)
    fm = sub.add_parser(
        "failure-modes",
        help="accuracy on the bundled polysemy/negation/entity/composition suite",
        description="A case passes when the anchor is closer (cosine) to its positive than to its negative; "
        "a tie is a miss.",
    )
    fm.add_argument("--contextual", action="store_true", help=f"also score {quality.CONTEXTUAL_NAME} (eval extra)")
    fm.add_argument("--json", action="store_true", help="JSON with per-case cosines instead of a table")
    add_model_options(fm)
    fm.set_defaults(run=_run_failure_modes)
    _add_classify(sub)
    _add_eval_retrieval(sub)


def _encoders(args: argparse.Namespace) -> dict[str, tuple[str, quality.Encoder]] | None:
    """{"ours": ..., "contextual": ...}; the extra is loaded first so a missing one fails before any work."""
    contextual = None
    if args.contextual:
        try:
            contextual = quality.load_contextual()
        except quality.MissingExtra as exc:
            print(f"swiftembed: error: {exc}", file=sys.stderr)
            return None
    embedder = load_embedder(args)
    encoders: dict[str, tuple[str, quality.Encoder]] = {"ours": (embedder.model_id, embedder.encode)}
    if contextual is not None:
        encoders["contextual"] = (quality.CONTEXTUAL_NAME, contextual)
    return encoders


def _run_sts(args: argparse.Namespace) -> int:
    pairs = quality.read_pairs(args.file, args.format)
    encoders = _encoders(args)
    if encoders is None:
        return 2
    results = {role: (name, quality.evaluate_sts(encode, pairs)) for role, (name, encode) in encoders.items()}
    width = max(len(name) for name, _ in results.values()) + 2
    print(f"{args.file}: {len(pairs)} pairs ({args.format or quality.detect_pair_format(args.file)})")
    print(f"{'model':<{width}}{'spearman':>9}{'pearson':>9}")
    for name, result in results.values():
        print(f"{name:<{width}}{result.spearman:>9.2f}{result.pearson:>9.2f}")
    if "contextual" in results:
        ours, theirs = results["ours"][1], results["contextual"][1]
        spearman, pearson = 100 * ours.spearman / theirs.spearman, 100 * ours.pearson / theirs.pearson
        print(f"{'ours/contextual':<{width}}{spearman:>8.1f}%{pearson:>8.1f}%")
    return 0


def _run_failure_modes(args: argparse.Namespace) -> int:
    cases = quality.check_suite()
    encoders = _encoders(args)
    if encoders is None:
        return 2
    runs = {role: quality.run_suite(encode, cases) for role, (_, encode) in encoders.items()}
    tables = {role: quality.accuracy(results) for role, results in runs.items()}
    if args.json:
        report = {
            "suite": quality.SUITE_PATH.name,
            "models": {role: name for role, (name, _) in encoders.items()},
            "accuracy": tables,
            "cases": [
                {
                    "id": case.id,
                    "category": case.category,
                    **{
                        role: {
                            "positive": round(results[i].positive, 4),
                            "negative": round(results[i].negative, 4),
                            "passed": results[i].passed,
                        }
                        for role, results in runs.items()
                    },
                }
                for i, case in enumerate(cases)
            ],
        }
        print(json.dumps(report, indent=2))
        return 0
    print(f"failure modes: {len(cases)} cases ({quality.SUITE_PATH.name}); "
          "a case passes when cos(anchor, positive) wins")
    for role, (name, _) in encoders.items():
        print(f"{role}: {name}")
    print(f"{'category':<13}{'cases':>6}" + "".join(f"{role:>16}" for role in runs))
    for category, row in tables["ours"].items():
        cells = "".join(f"{t[category]['correct']:>8}{100 * t[category]['accuracy']:>7.1f}%" for t in tables.values())
        print(f"{category:<13}{row['cases']:>6}{cells}")
    return 0


def _add_classify(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "classify",
        help="linear-probe accuracy on labeled sentences (MR, CR, MPQA; classify extra)",
        description="SentEval-style: each text embedded once, then seeded stratified k-fold logistic regression "
        "(scikit-learn); accuracy x100 per set and the mean. PATH: a directory of <name>.pos/<name>.neg files "
        '(one text per line; UTF-8 or latin-1) or .jsonl files, or such files, JSONL lines {"text", "label"}.',
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--model", action="append", dest="models", metavar="MODEL",
                   help="model directory or bundled name (repeatable; default: vendored potion-base-8M)")
    p.add_argument("--contextual", action="store_true", help=f"also probe {quality.CONTEXTUAL_NAME} (eval extra)")
    p.add_argument("--C", type=float, default=10.0, dest="c", help="inverse L2 regularization (default 10)")
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="fold shuffling seed")
    p.add_argument("--max-tokens", type=int, default=-1, help="tokens per text (default: the model's, 512)")
    p.add_argument("--json", action="store_true", help="JSON with per-fold accuracies instead of a table")
    p.set_defaults(run=_run_classify)


def _run_classify(args: argparse.Namespace) -> int:
    from swiftembed.eval import classify

    sets = classify.read_sets(args.paths)
    try:
        classify.require_sklearn()
        encoders: dict[str, quality.Encoder] = {}
        for name in args.models or [None]:
            embedder = Embedder.load(name, max_tokens=args.max_tokens)
            encoders[name or embedder.model_id] = embedder.encode
        if args.contextual:
            encoders[quality.CONTEXTUAL_NAME] = quality.load_contextual()
    except quality.MissingExtra as exc:
        print(f"swiftembed: error: {exc}", file=sys.stderr)
        return 2
    runs = {name: classify.evaluate_classification(encode, sets, c=args.c, folds=args.folds, seed=args.seed)
            for name, encode in encoders.items()}
    if args.json:
        print(json.dumps({
            "setup": {"C": args.c, "folds": args.folds, "seed": args.seed},
            "sets": {s.name: len(s.texts) for s in sets},
            "models": {name: {"mean": round(classify.mean_accuracy(results), 2),
                              **{r.name: {"accuracy": round(r.accuracy, 2), "folds": [round(f, 2) for f in r.folds]}
                                 for r in results}}
                       for name, results in runs.items()},
        }, indent=2))
        return 0
    print(f"linear probe: logistic regression C={args.c:g}, {args.folds}-fold stratified CV (seed {args.seed}); "
          "accuracy x100")
    width = max(len(name) for name in runs) + 2
    print(f"{'model':<{width}}" + "".join(f"{s.name:>9}" for s in sets) + f"{'mean':>9}")
    for name, results in runs.items():
        cells = "".join(f"{r.accuracy:>9.2f}" for r in results)
        print(f"{name:<{width}}{cells}{classify.mean_accuracy(results):>9.2f}")
    return 0


def _add_eval_retrieval(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from swiftembed.eval import retrieval

    p = sub.add_parser(
        "retrieval",
        help="MRR@10, recall@1/@10 of dense, sparse and fused (hybrid) ranking on paraphrase pairs",
        description="FILE as for `eval sts`. Each pair scored >= --min-score makes sentence1 a query and sentence2 its "
        "relevant text; the corpus is every distinct sentence2. Fused = alpha x dense cosine + (1 - alpha) x sparse "
        "dot product; the fused - dense MRR@10 comes with a 95% paired bootstrap interval (1000 resamples, seed 0).",
    )
    p.add_argument("file", type=Path)
    p.add_argument("--format", choices=("tsv", "jsonl"), help="default: jsonl for .jsonl/.ndjson, else tsv")
    p.add_argument("--min-score", type=float, default=retrieval.MIN_SCORE, help="paraphrase threshold (default 4.0)")
    p.add_argument("--alpha", type=float, default=retrieval.DEFAULT_ALPHA,
                   help=f"dense weight in the fusion (default {retrieval.DEFAULT_ALPHA}, chosen on STS-B train)")
    p.add_argument("--fusion", choices=("convex", "rrf"), default=retrieval.DEFAULT_FUSION)
    p.add_argument("--maxsim", action="store_true",
                   help="also rank by late interaction over token vectors (/similarity's maxsim mode)")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    add_model_options(p)
    p.set_defaults(run=_run_retrieval)


def _run_retrieval(args: argparse.Namespace) -> int:
    from swiftembed.eval import retrieval

    embedder = load_embedder(args)
    result = retrieval.evaluate_retrieval(
        embedder, args.file, args.format, min_score=args.min_score, fusion=args.fusion, alpha=args.alpha,
        with_maxsim=args.maxsim,
    )
    if args.json:
        print(json.dumps({"model": embedder.model_id, "file": str(args.file), **result.to_dict()}, indent=2))
        return 0
    print(f"{args.file}: {result.queries} queries (score >= {args.min_score:g}), corpus {result.corpus}; "
          f"{embedder.model_id}, sparse {result.weighting}, fused {result.fusion} alpha {result.alpha:g}")
    print(f"{'ranking':<8}{'mrr@10':>9}{'recall@1':>10}{'recall@10':>11}")
    rankings = [("dense", result.dense), ("sparse", result.sparse), ("fused", result.fused)]
    for name, m in rankings + ([("maxsim", result.maxsim)] if result.maxsim is not None else []):
        print(f"{name:<8}{m.mrr10:>9.2f}{m.recall1:>10.2f}{m.recall10:>11.2f}")
    print(f"fused - dense MRR@10: {result.gain:+.2f} (95% CI {result.gain_low:+.2f} .. {result.gain_high:+.2f}, "
          f"fused ahead in {100 * result.gain_positive:.1f}% of resamples)")
    if result.maxsim_gain is not None:
        gain, low, high = result.maxsim_gain
        print(f"maxsim - dense MRR@10: {gain:+.2f} (95% CI {low:+.2f} .. {high:+.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
