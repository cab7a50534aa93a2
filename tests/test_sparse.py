"""Sparse (lexical) vectors and the dense / sparse / fused retrieval evaluation (docs/quality.md, "Hybrid search")."""

from __future__ import annotations

import json

import numpy as np
import pytest

from swiftembed import Embedder
from swiftembed.cli import main
from swiftembed.core.model import load_model
from swiftembed.core.sparse import WEIGHTINGS, SparseVector, sparse_encode, token_weights
from swiftembed.eval.quality import Pair
from swiftembed.eval.retrieval import (
    build_task,
    choose,
    compare,
    evaluate_retrieval,
    fuse,
    metrics,
    paired_bootstrap,
    split_queries,
)
from tests.conftest import STSB_DIR, VARIED_TEXTS, write_model

STSB_DEV = STSB_DIR / "sts-dev.csv"
TEXTS = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "Gunmen kill 11 foreign tourists in Pakistan",
    "Café naïve résumé",
    "东京 and Paris",
    "The food was not good at all.",
]


def hf_ids(embedder: Embedder, text: str) -> set[int]:
    """The real tokenizer's ids (no special tokens added), unknown id dropped: what encode pools."""
    ids = embedder.model.tokenizer.encode(text, add_special_tokens=False).ids
    return {i for i in ids if i != embedder.tokenizer.unk_id}


def check_vector(vector: SparseVector, *, normalized: bool = True) -> None:
    assert isinstance(vector, SparseVector)
    assert vector.indices.dtype == np.int32 and vector.values.dtype == np.float32
    assert len(vector.indices) == len(vector.values)
    assert np.all(np.diff(vector.indices) > 0), "indices ascending and unique"
    assert np.all(vector.values > 0)
    if normalized and len(vector.values):
        assert np.linalg.norm(vector.values) == pytest.approx(1.0, abs=1e-5)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> Embedder:
    """A vocabulary-quantized model: row = embeddings[mapping[id]] * weights[id]."""
    rng = np.random.default_rng(1)
    model = load_model(None)
    directory = write_model(
        tmp_path_factory.mktemp("quantized"),
        model.tokenizer,
        rng.normal(size=(300, 64)).astype(np.float32),
        mapping=rng.integers(0, 300, size=model.vocab_size).astype(np.int64),
        weights=rng.uniform(0.1, 3.0, size=model.vocab_size).astype(np.float32),
    )
    return Embedder.load(directory)


# Sparse vectors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["potion-base-8M", "swiftembed-potion-sts-8M"])
def test_indices_are_the_tokenizers_ids(embedders, name):
    embedder = embedders[name]
    vectors = embedder.sparse(TEXTS)
    assert len(vectors) == len(TEXTS)
    for text, vector in zip(TEXTS, vectors):
        check_vector(vector)
        assert vector.indices.tolist() == sorted(hf_ids(embedder, text))
        assert vector.indices.tolist() == sorted(set(embedder.tokenize(text)[0]))


def test_phrase_token_of_the_sts_model(embedders):
    """swiftembed-potion-sts-8M's "not good" is one added (non-special) token: it is a sparse entry too."""
    embedder = embedders["swiftembed-potion-sts-8M"]
    phrase = embedder.model.tokenizer.token_to_id("not good")
    assert phrase is not None and phrase in embedder.sparse("The food was not good.").indices


def test_repeats_weigh_more_but_saturate(embedder):
    raw = embedder.sparse("dog dog dog cat", normalize=False)
    dog, cat = (int(embedder.tokenize(w)[0][0]) for w in ("dog", "cat"))
    weights = dict(zip(raw.indices.tolist(), raw.values.tolist()))
    single = dict(zip(*(a.tolist() for a in embedder.sparse("dog cat", normalize=False))))
    assert weights[dog] > single[dog] and weights[cat] == pytest.approx(single[cat])
    assert weights[dog] < 3 * single[dog], "BM25 saturation: three repeats weigh less than three times one"


def test_weight_follows_the_row_norm(embedder):
    """Function words have short rows in potion-base-8M, so they weigh less than content words."""
    raw = embedder.sparse("the dog", normalize=False)
    the, dog = (int(embedder.tokenize(w)[0][0]) for w in ("the", "dog"))
    weights = dict(zip(raw.indices.tolist(), raw.values.tolist()))
    assert weights[the] < weights[dog]
    norms = np.linalg.norm(embedder.table[[the, dog]], axis=1) ** 0.25
    assert weights[the] / weights[dog] == pytest.approx(norms[0] / norms[1], rel=1e-5)


@pytest.mark.parametrize("text", ["", " ", "   \t\n  ", "[CLS] [SEP]"])
def test_empty_and_special_only_texts(embedder, text):
    vector = embedder.sparse(text)
    check_vector(vector)
    assert len(vector.indices) == 0


def test_special_tokens_are_left_out(embedder):
    vector = embedder.sparse("hello [SEP] world")
    assert embedder.model.tokenizer.token_to_id("[SEP]") not in vector.indices
    assert vector.indices.tolist() == embedder.sparse("hello world").indices.tolist()


def test_str_and_list(embedder):
    one = embedder.sparse("a dog runs")
    assert isinstance(one, SparseVector)
    (listed,) = embedder.sparse(["a dog runs"])
    assert one.indices.tolist() == listed.indices.tolist() and np.array_equal(one.values, listed.values)
    assert embedder.sparse([]) == []


def test_batch_equals_one_by_one_on_varied_texts(embedder):
    batch = sparse_encode(embedder, VARIED_TEXTS)
    for text, vector in zip(VARIED_TEXTS, batch):
        check_vector(vector)
        alone = embedder.sparse(text)
        assert vector.indices.tolist() == alone.indices.tolist()
        np.testing.assert_allclose(vector.values, alone.values, rtol=1e-6)


def test_truncation_matches_encode():
    short = Embedder(load_model(None), max_tokens=4)
    vector = short.sparse("one two three four five six seven")
    assert vector.indices.tolist() == sorted(set(short.tokenize("one two three four five six seven")[0]))
    assert len(vector.indices) == 4


def test_quantized_model(quantized):
    text = "One man is playing the guitar."  # no token twice: each value is the token's weight
    vector = quantized.sparse(text)
    check_vector(vector)
    assert vector.indices.tolist() == sorted(hf_ids(quantized, text))
    model = quantized.model
    norms = np.linalg.norm(quantized.table[model.mapping[vector.indices]], axis=1) * model.weights[vector.indices]
    np.testing.assert_allclose(quantized.sparse(text, normalize=False).values, norms**0.25, rtol=1e-5)


def test_weights_cached_and_every_weighting_runs(embedder):
    assert token_weights(embedder, "qnorm") is token_weights(embedder, "qnorm")
    for weighting in WEIGHTINGS:
        for vector in sparse_encode(embedder, TEXTS[:2], weighting=weighting):
            check_vector(vector)
    with pytest.raises(ValueError, match="weighting"):
        sparse_encode(embedder, ["x"], weighting="nope")


# Retrieval evaluation --------------------------------------------------------------------------------------
SENTENCES = [
    "A man is playing a guitar.", "A woman is slicing an onion.", "Two dogs run across a field.",
    "The stock market fell sharply today.", "A child rides a red bicycle.", "Rain is expected over the weekend.",
    "A chef cooks pasta in a kitchen.", "The president gave a speech in Paris.",
]


def test_identical_pairs_rank_first(embedder):
    """Queries identical to their relevant sentence: every ranking finds it first."""
    pairs = [Pair(i, s, s, 5.0) for i, s in enumerate(SENTENCES)] + [Pair(99, "x y", "An unrelated distractor.", 0.0)]
    task = build_task(pairs)
    assert len(task.queries) == len(SENTENCES) and len(task.corpus) == len(SENTENCES) + 1
    result = compare(embedder, task, resamples=100)
    for m in (result.dense, result.sparse, result.fused):
        assert (m.mrr10, m.recall1, m.recall10) == (100.0, 100.0, 100.0)
    assert result.gain == 0.0 and result.gain_low == result.gain_high == 0.0


def test_metrics_ties_count_against_and_copies_are_excluded():
    pairs = [Pair(1, "q", "gold", 5.0), Pair(2, "r", "q", 1.0), Pair(3, "s", "other", 1.0)]
    task = build_task(pairs)
    assert task.corpus == ["gold", "q", "other"] and task.excluded == [[1]]
    tie = metrics(np.array([[0.5, 9.0, 0.5]]), task)  # the query's own copy is ignored; a tie is rank 2
    assert tie.mrr10 == 50.0 and tie.recall1 == 0.0 and tie.recall10 == 100.0
    assert metrics(np.array([[0.6, 9.0, 0.5]]), task).mrr10 == 100.0


def test_fusion_and_bootstrap():
    dense, sparse = np.array([[0.9, 0.8, 0.1]]), np.array([[0.0, 1.0, 0.2]])
    np.testing.assert_allclose(fuse(dense, sparse, "convex", 0.5), [[0.45, 0.9, 0.15]])
    rrf = fuse(dense, sparse, "rrf", 0.5)
    np.testing.assert_allclose(rrf, [[1 / 61 + 1 / 63, 1 / 62 + 1 / 61, 1 / 63 + 1 / 62]])
    with pytest.raises(ValueError):
        fuse(dense, sparse, "convex", 1.5)
    low, high, share = paired_bootstrap(np.zeros(50), np.full(50, 0.01))
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0) and share == 1.0


def test_split_and_choice_rule(embedder):
    task = build_task([Pair(i, s, s, 5.0) for i, s in enumerate(SENTENCES)])
    a, b = split_queries(task, seed=0)
    assert sorted(a.queries + b.queries) == sorted(task.queries) and a.corpus == task.corpus
    rows = [
        {"weighting": "binary", "fused_tune": 91.44, "sparse_tune": 84.4, "fusion": "convex", "alpha": 0.9},
        {"weighting": "qnorm-binary", "fused_tune": 91.40, "sparse_tune": 87.8, "fusion": "convex", "alpha": 0.9},
        {"weighting": "qnorm-sat", "fused_tune": 91.41, "sparse_tune": 87.7, "fusion": "convex", "alpha": 0.9},
        {"weighting": "norm-sat", "fused_tune": 91.16, "sparse_tune": 89.0, "fusion": "convex", "alpha": 0.9},
        {"weighting": "idf-corpus", "fused_tune": 99.0, "sparse_tune": 99.0, "fusion": "convex", "alpha": 0.9},
    ]
    assert choose(rows)["weighting"] == "qnorm-sat"


def test_cli_table_and_json(tmp_path, capsys):
    path = tmp_path / "pairs.jsonl"
    lines = [{"a": s, "b": s.replace("A ", "One ", 1), "score": 4.5} for s in SENTENCES]
    lines.append({"a": "unrelated", "b": "Nothing alike here.", "score": 0.2})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["eval", "retrieval", str(path)]) == 0
    out = capsys.readouterr().out
    assert "8 queries" in out and all(name in out for name in ("dense", "sparse", "fused", "95% CI"))
    assert main(["eval", "retrieval", str(path), "--json", "--alpha", "0.3", "--fusion", "rrf"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["queries"] == 8 and report["corpus"] == 9 and report["alpha"] == 0.3 and report["fusion"] == "rrf"
    assert set(report["dense"]) == {"mrr@10", "recall@1", "recall@10"}
    assert main(["eval", "retrieval", str(path), "--min-score", "5"]) == 2  # no query: a clear error


# STS-B dev: the figures of docs/quality.md ------------------------------------------------------------------
DEV_FIGURES = {  # (dense, sparse, fused, maxsim) MRR@10 and the fused - dense gain, as in docs/quality.md
    "potion-base-8M": (93.94, 91.24, 94.21, 94.00, 0.27),
    "swiftembed-potion-sts-8M": (94.78, 91.06, 95.18, 93.98, 0.39),
}


@pytest.mark.skipif(not STSB_DEV.exists(), reason=f"{STSB_DEV} absent (../shared not laid out)")
@pytest.mark.parametrize("name", list(DEV_FIGURES))
def test_stsb_dev_figures(embedders, name):
    result = evaluate_retrieval(embedders[name], STSB_DEV, with_maxsim=True)
    assert result.maxsim is not None
    got = (result.dense.mrr10, result.sparse.mrr10, result.fused.mrr10, result.maxsim.mrr10, result.gain)
    assert got == pytest.approx(DEV_FIGURES[name], abs=0.006)
