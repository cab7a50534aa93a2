"""Retrieval evaluation of dense, sparse and fused (hybrid) ranking on paraphrase pairs from an STS file.

The task: every pair scored >= `min_score` (4.0: "paraphrase" on STS-B's 0..5 scale) makes its sentence1 a query
and its sentence2 a relevant document; the corpus is every distinct sentence2 of the file, so the other pairs'
sentence2s are the distractors. sentence1s are not added to the corpus: STS-B often has several captions of one
video or headline among its sentence1s, unlabelled paraphrases of one another that would count as misses. A
corpus text identical to the query but not labelled relevant is left out of that query's ranking (same reason).
Ties count against the relevant document (a document ranks below every other one with an equal or higher score),
so a method that cannot separate documents gets no credit for it.

Scores: dense cosine, sparse dot product (of L2-normalized `swiftembed.core.sparse` vectors, a cosine too), and their
fusion: `convex` alpha * dense + (1 - alpha) * sparse, or `rrf` reciprocal rank fusion 1/(k + rank) summed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from swiftembed.core.embedder import Embedder
from swiftembed.core.sparse import DEFAULT_WEIGHTING, SparseVector, sparse_encode, sparse_from_batch
from swiftembed.eval.quality import Pair, PairFormat, read_pairs

Fusion = Literal["convex", "rrf"]
# Chosen on STS-B train with potion-base-8M (docs/quality.md "Hybrid search"), never on dev.
DEFAULT_FUSION: Fusion = "convex"
DEFAULT_ALPHA = 0.9
RRF_K = 60
MIN_SCORE = 4.0
TOP_K = 10


@dataclass(frozen=True)
class RetrievalTask:
    """Queries, corpus and relevance judgements built from scored pairs."""

    queries: list[str]
    corpus: list[str]
    relevant: list[list[int]]  # per query, corpus indices of its relevant documents
    excluded: list[list[int]] = field(default_factory=list)  # per query, corpus indices left out (query copies)


@dataclass(frozen=True)
class Metrics:
    """MRR@10 and recall@1/@10, x100, with the per-query reciprocal ranks behind them (for paired tests)."""

    mrr10: float
    recall1: float
    recall10: float
    reciprocal_ranks: np.ndarray = field(repr=False)

    def row(self) -> dict[str, float]:
        return {
            "mrr@10": round(self.mrr10, 2), "recall@1": round(self.recall1, 2), "recall@10": round(self.recall10, 2)
        }


@dataclass(frozen=True)
class Comparison:
    """Dense, sparse and fused metrics on one task, and the paired bootstrap of fused minus dense MRR@10."""

    queries: int
    corpus: int
    fusion: str
    alpha: float
    weighting: str
    dense: Metrics
    sparse: Metrics
    fused: Metrics
    gain: float  # fused - dense MRR@10, x100
    gain_low: float  # 95% paired-bootstrap interval
    gain_high: float
    gain_positive: float  # share of resamples with fused > dense
    maxsim: Metrics | None = None  # late interaction over token vectors, when asked
    maxsim_gain: tuple[float, float, float] | None = None  # maxsim - dense MRR@10: mean, 95% interval

    def to_dict(self) -> dict[str, object]:
        return {
            "queries": self.queries,
            "corpus": self.corpus,
            "weighting": self.weighting,
            "fusion": self.fusion,
            "alpha": self.alpha,
            "dense": self.dense.row(),
            "sparse": self.sparse.row(),
            "fused": self.fused.row(),
            "fused_minus_dense_mrr@10": {
                "mean": round(self.gain, 2),
                "ci95": [round(self.gain_low, 2), round(self.gain_high, 2)],
                "share_positive": round(self.gain_positive, 4),
            },
            **({} if self.maxsim is None or self.maxsim_gain is None else {
                "maxsim": self.maxsim.row(),
                "maxsim_minus_dense_mrr@10": {"mean": round(self.maxsim_gain[0], 2),
                                              "ci95": [round(self.maxsim_gain[1], 2), round(self.maxsim_gain[2], 2)]},
            }),
        }


def build_task(pairs: Sequence[Pair], min_score: float = MIN_SCORE) -> RetrievalTask:
    """Queries (distinct sentence1s of pairs scored >= `min_score`), corpus (distinct sentence2s of all pairs)."""
    corpus = list(dict.fromkeys(p.b for p in pairs))
    where = {text: i for i, text in enumerate(corpus)}
    relevant: dict[str, list[int]] = {}
    for p in pairs:
        if p.score >= min_score:
            docs = relevant.setdefault(p.a, [])
            if where[p.b] not in docs:
                docs.append(where[p.b])
    if not relevant:
        raise ValueError(f"no pair scores >= {min_score}: no queries")
    queries = list(relevant)
    excluded = [[where[q]] if q in where and where[q] not in relevant[q] else [] for q in queries]
    return RetrievalTask(queries, corpus, [relevant[q] for q in queries], excluded)


def sparse_matrix(vectors: Sequence[SparseVector], vocab: int):  # -> scipy.sparse.csr_matrix
    from scipy import sparse  # lazy, like evaluate.correlations

    lengths = np.fromiter((len(v.indices) for v in vectors), dtype=np.int64, count=len(vectors))
    indptr = np.zeros(len(vectors) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = np.concatenate([v.indices for v in vectors]) if vectors else np.zeros(0, np.int32)
    values = np.concatenate([v.values for v in vectors]) if vectors else np.zeros(0, np.float32)
    return sparse.csr_matrix((values, indices, indptr), shape=(len(vectors), vocab))


def dense_scores(embedder: Embedder, task: RetrievalTask) -> np.ndarray:
    """Cosine of every query with every corpus text (queries x corpus, float32)."""
    q = embedder.encode(task.queries, normalize=True)
    d = embedder.encode(task.corpus, normalize=True)
    return q @ d.T


def maxsim_scores(embedder: Embedder, task: RetrievalTask) -> np.ndarray:
    """Late interaction (`swiftembed.core.pooling.maxsim`, /similarity's `maxsim` mode) of every query with every
    corpus text (queries x corpus): per query token its best cosine with a token of the text, averaged."""
    from swiftembed.core.pooling import maxsim

    return maxsim(embedder.token_vectors(task.queries), embedder.token_vectors(task.corpus),  # type: ignore[arg-type]
                  pairwise=False)


def sparse_scores(embedder: Embedder, task: RetrievalTask, weighting: str = DEFAULT_WEIGHTING) -> np.ndarray:
    """Dot product of L2-normalized sparse vectors (queries x corpus, float32); `weighting` "idf-corpus" is the
    reference that needs the corpus: BM25's idf of each token over `task.corpus`, with saturated counts."""
    if weighting == "idf-corpus":
        weights = corpus_idf(embedder, task.corpus)
        q, d = (
            sparse_matrix(sparse_from_batch(embedder.tokens(texts), weights), embedder.vocab_size)
            for texts in (task.queries, task.corpus)
        )
        return np.asarray((q @ d.T).toarray(), dtype=np.float32)
    q = sparse_matrix(sparse_encode(embedder, task.queries, weighting=weighting), embedder.vocab_size)
    d = sparse_matrix(sparse_encode(embedder, task.corpus, weighting=weighting), embedder.vocab_size)
    return np.asarray((q @ d.T).toarray(), dtype=np.float32)


def corpus_idf(embedder: Embedder, corpus: Sequence[str]) -> np.ndarray:
    """BM25's idf, log(1 + (N - df + 0.5) / (df + 0.5)), per token id over `corpus` (special tokens 0)."""
    from swiftembed.core.sparse import token_weights

    batch = embedder.tokens(corpus)
    vocab = embedder.vocab_size
    owner = np.repeat(np.arange(len(batch), dtype=np.int64), batch.lengths)
    df = np.bincount(np.unique(owner * vocab + batch.ids) % vocab, minlength=vocab)
    idf = np.log1p((len(corpus) - df + 0.5) / (df + 0.5)).astype(np.float32)
    return idf * (token_weights(embedder, "one") > 0)


def ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every document per query row (descending score; ties broken by corpus order)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    out = np.empty_like(order)
    np.put_along_axis(out, order, np.arange(1, scores.shape[1] + 1)[None, :], axis=1)
    return out


def fuse(dense: np.ndarray, sparse: np.ndarray, fusion: Fusion = DEFAULT_FUSION, alpha: float = DEFAULT_ALPHA,
         k: int = RRF_K) -> np.ndarray:
    """Fused scores: convex combination of the two cosines, or (weighted) reciprocal rank fusion."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    if fusion == "convex":
        return alpha * dense + (1.0 - alpha) * sparse
    if fusion == "rrf":
        return 2 * (alpha / (k + ranks(dense)) + (1.0 - alpha) / (k + ranks(sparse)))
    raise ValueError(f"fusion must be convex or rrf, got {fusion!r}")


def metrics(scores: np.ndarray, task: RetrievalTask, top_k: int = TOP_K) -> Metrics:
    """MRR@k and recall@1/@k (x100) of `scores` (queries x corpus) against the task's judgements."""
    scores = np.array(scores, dtype=np.float64)
    for row, gone in enumerate(task.excluded):
        scores[row, gone] = -np.inf
    reciprocal = np.zeros(len(task.queries))
    recall1 = np.zeros(len(task.queries))
    recall_k = np.zeros(len(task.queries))
    for row, docs in enumerate(task.relevant):
        line = scores[row]
        # pessimistic rank: 1 + documents scoring at least as high, other than the relevant one itself
        doc_ranks = np.array([int(np.count_nonzero(line >= line[d])) for d in docs])
        best = doc_ranks.min()
        reciprocal[row] = 1.0 / best if best <= top_k else 0.0
        recall1[row] = np.mean(doc_ranks <= 1)
        recall_k[row] = np.mean(doc_ranks <= top_k)
    return Metrics(100 * reciprocal.mean(), 100 * recall1.mean(), 100 * recall_k.mean(), reciprocal)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """95% interval of mean(b - a) x100 over queries resampled with replacement, and the share of resamples > 0."""
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return 100 * float(low), 100 * float(high), float(np.mean(means > 0))


def compare(
    embedder: Embedder,
    task: RetrievalTask,
    *,
    fusion: Fusion = DEFAULT_FUSION,
    alpha: float = DEFAULT_ALPHA,
    weighting: str = DEFAULT_WEIGHTING,
    resamples: int = 1000,
    with_maxsim: bool = False,
) -> Comparison:
    """Dense vs sparse vs fused on one task, with a paired bootstrap (seed 0) of the fused gain; `with_maxsim`
    adds late interaction over token vectors, and its paired gain over dense."""
    dense = dense_scores(embedder, task)
    sparse = sparse_scores(embedder, task, weighting)
    m_dense, m_sparse = metrics(dense, task), metrics(sparse, task)
    m_fused = metrics(fuse(dense, sparse, fusion, alpha), task)
    low, high, positive = paired_bootstrap(m_dense.reciprocal_ranks, m_fused.reciprocal_ranks, resamples)
    m_maxsim = maxsim_gain = None
    if with_maxsim:
        m_maxsim = metrics(maxsim_scores(embedder, task), task)
        m_low, m_high, _ = paired_bootstrap(m_dense.reciprocal_ranks, m_maxsim.reciprocal_ranks, resamples)
        maxsim_gain = (m_maxsim.mrr10 - m_dense.mrr10, m_low, m_high)
    return Comparison(
        len(task.queries), len(task.corpus), fusion, alpha, weighting, m_dense, m_sparse, m_fused,
        m_fused.mrr10 - m_dense.mrr10, low, high, positive, m_maxsim, maxsim_gain,
    )


def evaluate_retrieval(
    embedder: Embedder,
    path: str | os.PathLike[str],
    fmt: PairFormat | None = None,
    *,
    min_score: float = MIN_SCORE,
    **options: object,
) -> Comparison:
    """`compare` on the paraphrase-retrieval task of an STS-B TSV or {"a", "b", "score"} JSONL file."""
    return compare(embedder, build_task(read_pairs(path, fmt), min_score), **options)  # type: ignore[arg-type]


# Choosing the weighting and fusion (on STS-B train only) -----------------------------------------------------
TUNE_ALPHAS = tuple(round(0.05 * i, 2) for i in range(1, 20))
NEAR = 0.1  # MRR@10 points: fused results this close to the best are treated as equal
SAME_FAMILY = 0.2


def subset(task: RetrievalTask, rows: Sequence[int]) -> RetrievalTask:
    """The same corpus with only the queries `rows`."""
    return RetrievalTask(
        [task.queries[i] for i in rows], task.corpus, [task.relevant[i] for i in rows], [task.excluded[i] for i in rows]
    )


def split_queries(task: RetrievalTask, seed: int = 0) -> tuple[RetrievalTask, RetrievalTask]:
    """Seeded halves of the queries over the whole corpus: one to choose settings on, one to check the choice."""
    order = np.random.default_rng(seed).permutation(len(task.queries))
    half = len(order) // 2
    return subset(task, sorted(order[:half].tolist())), subset(task, sorted(order[half:].tolist()))


def tune(
    embedder: Embedder,
    task: RetrievalTask,
    *,
    seed: int = 0,
    weightings: Sequence[str] | None = None,
    alphas: Sequence[float] = TUNE_ALPHAS,
) -> dict[str, object]:
    """Every weighting x fusion x alpha scored by fused MRR@10 on a seeded half of the queries ("tune"), the best
    per weighting and overall re-scored on the other half ("check"), so the choice can be seen to carry over."""
    from swiftembed.core.sparse import WEIGHTINGS

    tune_task, check_task = split_queries(task, seed)
    dense = {name: dense_scores(embedder, t) for name, t in (("tune", tune_task), ("check", check_task))}
    tasks = {"tune": tune_task, "check": check_task}
    rows: list[dict[str, object]] = []
    for weighting in weightings or [*WEIGHTINGS, "idf-corpus"]:
        sparse = {name: sparse_scores(embedder, t, weighting) for name, t in tasks.items()}
        grid = [
            (metrics(fuse(dense["tune"], sparse["tune"], fusion, alpha), tune_task).mrr10, fusion, alpha)
            for fusion in ("convex", "rrf")
            for alpha in alphas
        ]
        best, fusion, alpha = max(grid, key=lambda g: g[0])
        rrf_best = max((g for g in grid if g[1] == "rrf"), key=lambda g: g[0])
        check = metrics(fuse(dense["check"], sparse["check"], fusion, alpha), check_task).mrr10  # type: ignore[arg-type]
        rows.append({
            "weighting": weighting,
            "sparse_tune": round(metrics(sparse["tune"], tune_task).mrr10, 2),
            "sparse_check": round(metrics(sparse["check"], check_task).mrr10, 2),
            "fusion": fusion,
            "alpha": alpha,
            "fused_tune": round(best, 2),
            "fused_check": round(check, 2),
            "rrf_tune": {"alpha": rrf_best[2], "mrr@10": round(rrf_best[0], 2)},
            "convex_tune": {a: round(m, 2) for m, f, a in grid if f == "convex"},
        })
    chosen = choose(rows)
    return {
        "seed": seed,
        "queries": {"tune": len(tune_task.queries), "check": len(check_task.queries)},
        "corpus": len(task.corpus),
        "dense_tune": round(metrics(dense["tune"], tune_task).mrr10, 2),
        "dense_check": round(metrics(dense["check"], check_task).mrr10, 2),
        "rows": rows,
        "chosen": {k: chosen[k] for k in ("weighting", "fusion", "alpha")},
        "chosen_on_check": compare(
            embedder, check_task, weighting=str(chosen["weighting"]), fusion=chosen["fusion"],  # type: ignore[arg-type]
            alpha=float(chosen["alpha"]),  # type: ignore[arg-type]
        ).to_dict(),
    }


def choose(
    rows: Sequence[dict[str, object]], near: float = NEAR, same_family: float = SAME_FAMILY
) -> dict[str, object]:
    """The rule applied to `tune`'s rows: among weightings whose fused MRR@10 on the tune half is within `near` of
    the best (differences that small are noise at ~700 queries), the one whose sparse vectors rank best alone
    (the vector is also served on its own); a twin that differs only in the count transform and is within
    `same_family` of it alone counts as tied (few tokens repeat within a sentence), and BM25 saturation, the
    transform meant for longer texts, wins the tie."""
    from swiftembed.core.sparse import WEIGHTINGS

    rows = [r for r in rows if r["weighting"] in WEIGHTINGS]  # idf-corpus is a reference, not servable
    best = max(float(r["fused_tune"]) for r in rows)  # type: ignore[arg-type]
    close = [r for r in rows if float(r["fused_tune"]) >= best - near]  # type: ignore[arg-type]
    pick = max(close, key=lambda r: float(r["sparse_tune"]))  # type: ignore[arg-type]
    family = WEIGHTINGS[str(pick["weighting"])][0]
    for r in close:
        kind, transform = WEIGHTINGS[str(r["weighting"])]
        if (kind == family and transform.__name__ == "_saturated"
                and float(r["sparse_tune"]) >= float(pick["sparse_tune"]) - same_family):  # type: ignore[arg-type]
            return r
    return pick


def _main(argv: Sequence[str] | None = None) -> int:
    """`python -m swiftembed.eval.retrieval tune TRAIN_FILE [--model NAME]`: the choice table of docs/quality.md."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m swiftembed.eval.retrieval")
    parser.add_argument("command", choices=("tune",))
    parser.add_argument("file")
    parser.add_argument("--model", default=None)
    parser.add_argument("--min-score", type=float, default=MIN_SCORE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = tune(Embedder.load(args.model), build_task(read_pairs(args.file), args.min_score), seed=args.seed)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
