"""`swiftembed.eval.classify` and `swiftembed eval classify`: reading labeled sets, the linear probe, the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from swiftembed.cli import main
from swiftembed.eval.classify import evaluate_classification, mean_accuracy, probe, read_sets
from swiftembed.files.bulk import InputError
from tests.conftest import SENTEVAL_DIR

pytest.importorskip("sklearn")

SENTEVAL = SENTEVAL_DIR
FOOD = "apple bread cheese butter pasta soup rice salad pepper onion garlic lemon".split()
SPORT = "football tennis soccer golf hockey rugby cricket boxing skiing cycling rowing sprint".split()


def separable(count: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Texts of 4 words from one of two disjoint word lists: any sensible embedding separates them."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(count):
        words, label = (FOOD, "food") if i % 2 else (SPORT, "sport")
        texts.append(" ".join(rng.sample(words, 4)))
        labels.append(label)
    return texts, labels


def write_pos_neg(root: Path, name: str, pos: list[str], neg: list[str], encoding: str = "utf-8") -> None:
    (root / f"{name}.pos").write_bytes("\n".join(pos).encode(encoding) + b"\n")
    (root / f"{name}.neg").write_bytes("\n".join(neg).encode(encoding) + b"\n")


def test_separable_classes_are_learned(embedder) -> None:
    texts, labels = separable(200)
    result = probe(embedder.encode(texts), labels, name="toy")
    assert result.accuracy == pytest.approx(100.0)
    assert len(result.folds) == 10 and result.texts == 200


def test_random_labels_give_chance() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(600, 16))
    labels = [str(x) for x in rng.integers(0, 2, size=600)]
    assert 40.0 < probe(vectors, labels, c=1.0).accuracy < 60.0


def test_probe_is_deterministic_and_seeded() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(300, 8))
    labels = ["a" if v[0] + 0.8 * rng.normal() > 0 else "b" for v in vectors]
    first, again = probe(vectors, labels, seed=3), probe(vectors, labels, seed=3)
    assert first == again
    assert probe(vectors, labels, seed=4).folds != first.folds


def test_pos_neg_directory_and_jsonl(tmp_path: Path, embedder) -> None:
    texts, labels = separable(100)
    food = [t for t, y in zip(texts, labels) if y == "food"]
    sport = [t for t, y in zip(texts, labels) if y == "sport"]
    write_pos_neg(tmp_path, "rt-polarity", [*food[:-1], "caf\xe9 apple bread cheese"], sport, encoding="latin-1")
    write_pos_neg(tmp_path, "toy", food, sport)
    with (tmp_path / "lines.jsonl").open("w") as handle:
        for text, label in zip(texts, labels):
            handle.write(json.dumps({"text": text, "label": label == "food"}) + "\n")
        handle.write("\n")
    sets = read_sets([tmp_path])
    assert [s.name for s in sets] == ["MR", "lines", "toy"]  # SentEval's name, SentEval sets first
    assert "caf\xe9 apple bread cheese" in sets[0].texts  # latin-1 decoded
    assert {len(s.texts) for s in sets} == {100}
    assert sorted(set(sets[1].labels)) == ["False", "True"]
    results = evaluate_classification(embedder.encode, sets, folds=5)
    assert [r.accuracy for r in results] == pytest.approx([100.0] * 3)
    assert mean_accuracy(results) == pytest.approx(100.0)
    assert [s.name for s in read_sets([tmp_path / "toy.pos", tmp_path / "lines.jsonl"])] == ["lines", "toy"]


def test_bad_inputs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{"text": "b"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: "):
        read_sets([bad])
    one = tmp_path / "one.jsonl"
    one.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 1}\n')
    with pytest.raises(ValueError, match="2 classes"):
        read_sets([one])
    (tmp_path / "lonely.pos").write_text("a\n")
    with pytest.raises(ValueError, match="lonely.neg"):
        read_sets([tmp_path / "lonely.pos"])
    with pytest.raises(ValueError, match="expected a directory"):
        read_sets([tmp_path / "x.txt"])


def test_cli_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts, labels = separable(80)
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    args = ["eval", "classify", str(path), "--model", "potion-base-8M", "--model", "swiftembed-potion-sts-8M",
            "--folds", "4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "C=10" in out and "4-fold" in out
    assert "potion-base-8M" in out and "swiftembed-potion-sts-8M" in out and "100.00" in out
    assert main([*args, "--json", "--C", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["setup"] == {"C": 1.0, "folds": 4, "seed": 0}
    assert report["sets"] == {"toy": 80}
    for name in ("potion-base-8M", "swiftembed-potion-sts-8M"):
        assert report["models"][name]["mean"] == 100.0
        assert len(report["models"][name]["toy"]["folds"]) == 4


def test_cli_reports_bad_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "classify", str(tmp_path)]) == 2
    assert "no <name>.pos" in capsys.readouterr().err


@pytest.mark.skipif(not (SENTEVAL / "custrev.pos").exists(), reason=f"{SENTEVAL} absent (../shared not laid out)")
def test_senteval_cr(embedder) -> None:
    """CR (3,771 sentences, ~3 s): potion-base-8M at C=10, 10 folds, seed 0 scored 79.21 here."""
    (cr,) = read_sets([SENTEVAL / "custrev.pos"])
    assert cr.name == "CR" and len(cr.texts) == 3771  # 3,775 lines, 4 of them blank (skipped)
    (result,) = evaluate_classification(embedder.encode, [cr])
    assert result.accuracy == pytest.approx(79.21, abs=0.05)


def test_cli_names_the_missing_extra(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from swiftembed.eval import quality

    def missing(*args: object, **kwargs: object) -> None:
        raise quality.MissingExtra(f"the contextual model needs the eval extra: {quality.EXTRA_HINT}")

    monkeypatch.setattr(quality, "load_contextual", missing)
    texts, labels = separable(20)
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    assert main(["eval", "classify", str(path), "--contextual"]) == 2
    assert "swiftembed[eval]" in capsys.readouterr().err
