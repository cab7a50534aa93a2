"""Sentence classification with a linear probe on frozen vectors (SentEval-style): MR, CR, MPQA and the like.

STS only measures how cosine ranks pairs; a probe measures what else the vectors hold (sentiment, opinion), which a
general-purpose model must keep. Protocol: embed every text once, then a seeded stratified k-fold cross-validation
of an L2-regularized logistic regression (scikit-learn, the `classify` extra); accuracy x 100 per set, and the mean.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from swiftembed.eval.quality import Encoder, MissingExtra
from swiftembed.files.bulk import InputError

# SentEval's file names for the binary sets shipped as <stem>.pos / <stem>.neg; any other stem keeps its own name.
SENTEVAL_NAMES = {"rt-polarity": "MR", "custrev": "CR", "mpqa": "MPQA"}
CLASSIFY_HINT = "pip install 'swiftembed[classify]' (scikit-learn)"


@dataclass(frozen=True)
class LabeledSet:
    name: str
    texts: list[str]
    labels: list[str]


@dataclass(frozen=True)
class ProbeResult:
    name: str
    texts: int
    accuracy: float  # mean over folds, x100
    folds: list[float]  # per-fold accuracy, x100


def _decode(raw: bytes) -> str:
    """UTF-8 when the file is; else latin-1, the encoding of SentEval's original files (every byte decodes)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _text_lines(path: Path) -> list[str]:
    return [line.strip() for line in _decode(path.read_bytes()).splitlines() if line.strip()]


def read_jsonl(path: Path) -> LabeledSet:
    """One {"text": str, "label": str | int | bool} per line; a bad line raises `InputError` naming it."""
    texts, labels = [], []
    for number, line in enumerate(_decode(path.read_bytes()).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(str(path), number, f"invalid JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or "label" not in obj:
            raise InputError(str(path), number, 'expected an object {"text": str, "label": ...}')
        if not isinstance(obj["label"], str | int | bool):
            raise InputError(str(path), number, f"label {obj['label']!r} must be a string or an integer")
        texts.append(obj["text"])
        labels.append(str(obj["label"]))
    return LabeledSet(path.stem, texts, labels)


def read_pos_neg(pos: Path, neg: Path) -> LabeledSet:
    """One text per line per class; the set is named as SentEval names it (rt-polarity -> MR) or by the stem."""
    texts_pos, texts_neg = _text_lines(pos), _text_lines(neg)
    stem = pos.name[: -len(".pos")]
    return LabeledSet(SENTEVAL_NAMES.get(stem, stem), texts_pos + texts_neg, ["pos"] * len(texts_pos) + ["neg"] *
                      len(texts_neg))


def read_sets(paths: Sequence[str | os.PathLike[str]]) -> list[LabeledSet]:
    """Labeled sets from files and directories: `.jsonl`/`.ndjson` files, `<name>.pos` (with its `.neg`), or a
    directory holding either; SentEval's sets come in MR, CR, MPQA order, then the rest by name."""
    found: list[LabeledSet] = []
    for given in map(Path, paths):
        if given.is_dir():
            pos = sorted(given.glob("*.pos"))
            jsonl = sorted(p for p in given.iterdir() if p.suffix.lower() in (".jsonl", ".ndjson"))
            if not pos and not jsonl:
                raise ValueError(f"{given}: no <name>.pos/<name>.neg pairs or .jsonl files")
            found += [read_pos_neg(p, _neg_of(p)) for p in pos] + [read_jsonl(p) for p in jsonl]
        elif given.suffix.lower() in (".jsonl", ".ndjson"):
            found.append(read_jsonl(_existing(given)))
        elif given.suffix == ".pos":
            found.append(read_pos_neg(_existing(given), _neg_of(given)))
        else:
            raise ValueError(f"{given}: expected a directory, a .jsonl file or a <name>.pos file (with <name>.neg)")
    order = list(SENTEVAL_NAMES.values())
    found.sort(key=lambda s: (order.index(s.name) if s.name in order else len(order), s.name))
    for labeled in found:
        if len(set(labeled.labels)) < 2:
            raise ValueError(f"{labeled.name}: a classifier needs at least 2 classes")
    return found


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    return path


def _neg_of(pos: Path) -> Path:
    return _existing(pos.with_name(pos.name[: -len(".pos")] + ".neg"))


def require_sklearn():  # -> tuple[type, type]
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold
    except ImportError as exc:
        raise MissingExtra(f"the linear probe needs scikit-learn ({exc}): {CLASSIFY_HINT}") from exc
    return LogisticRegression, StratifiedKFold


def probe(vectors: np.ndarray, labels: Sequence[str], *, c: float = 10.0, folds: int = 10, seed: int = 0,
          name: str = "") -> ProbeResult:
    """Cross-validated accuracy of logistic regression (inverse regularization `c`) on fixed vectors."""
    logistic_regression, stratified_k_fold = require_sklearn()
    y = np.asarray(labels)
    x = np.asarray(vectors, dtype=np.float64)
    splits = stratified_k_fold(n_splits=folds, shuffle=True, random_state=seed).split(x, y)
    scores = []
    for train, test in splits:
        model = logistic_regression(C=c, max_iter=2000).fit(x[train], y[train])
        scores.append(100.0 * float((model.predict(x[test]) == y[test]).mean()))
    return ProbeResult(name, len(y), float(np.mean(scores)), scores)


def evaluate_classification(encode: Encoder, sets: Sequence[LabeledSet], *, c: float = 10.0, folds: int = 10,
                            seed: int = 0) -> list[ProbeResult]:
    """One probe per set; vectors are unit rows (as served), an all-zero vector stays zero."""
    require_sklearn()  # fail on a missing extra before any encoding
    results = []
    for labeled in sets:
        vectors = np.asarray(encode(list(labeled.texts)), dtype=np.float64)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
        results.append(probe(vectors, labeled.labels, c=c, folds=folds, seed=seed, name=labeled.name))
    return results


def mean_accuracy(results: Sequence[ProbeResult]) -> float:
    return float(np.mean([r.accuracy for r in results]))
