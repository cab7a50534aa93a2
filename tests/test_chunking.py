"""Chunking long documents (issue 19): every chunk's vector is `encode(text[start:end])`, boundaries by the rule.

The spans are checked against a deliberately plain re-implementation of the boundary rule over one whole-text
tokenization (no pieces, no bisect), and the token facts (counts, coverage, overlap) against the tokenizer itself.
"""

from __future__ import annotations

import copy
import json
import os
import time
import unicodedata
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swiftembed import Embedder
from swiftembed.core import chunking
from swiftembed.core.chunking import Chunk, ChunkedText, chunk_sums, chunk_texts
from swiftembed.core.model import load_model
from tests.conftest import VARIED_TEXTS, unigram_tokenizer, wordlevel_tokenizer, write_model

ATOL = 1e-6
EXAMPLES = int(os.environ.get("SWIFTEMBED_CHUNK_EXAMPLES", "120"))  # hypothesis examples per model
SIZES = [(1, 0), (3, 1), (8, 0), (16, 4), (50, 49), (128, 32), (512, 0)]
FRAGMENTS = [
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "a", "I", "Running", "x-ray", "cat's", "3.14",
    "42", ",", ".", "!!", "(", ")", "\"", "'", "#1", "@user", "~/path", "Café", "naïve", "résumé", "Ångström",
    "e\u0301", "\u0301", "東京", "は", "日本", "中文English", "🍕", "🚀", "👍🏽", "Ελληνικά", "русский", "[SEP]",
    "[MASK]", "[UNK]", "[cls]", "not", "not abaxial", "abaxial", "\x00", "\x12", "\x7f", "\u200b", "\ufeff", "ﬁ", "２",
    "not not", "_not", "not no", "nót", "NOT", "not\u200b",
    "supercalifragilisticexpialidocious", "x" * 99, "y" * 101, "ab-" * 40, "_",
]
MODELS = ["potion-base-8M", "swiftembed-potion-sts-8M", "quantized", "short-limit", "wordlevel", "unigram"]
WHITESPACE = [" ", " ", " ", "  ", "\n", "\t", "\r\n", "\n\n", "\u3000", "\xa0", ""]


@dataclass
class Word:
    start: int
    end: int
    tokens: int
    known: int


def untruncated(embedder: Embedder):
    tokenizer = copy.deepcopy(embedder.tokenizer._tokenizer)
    tokenizer.no_truncation()
    return tokenizer


_UNTRUNCATED: dict[int, object] = {}


def hf(embedder: Embedder):
    key = id(embedder)
    if key not in _UNTRUNCATED:
        _UNTRUNCATED[key] = (embedder, untruncated(embedder))
    return _UNTRUNCATED[key][1]


def words_of(embedder: Embedder, text: str) -> list[Word]:
    """The text's pre-tokenizer words, from one whole-text encode: offsets, token and known-token counts."""
    encoding = hf(embedder).encode(text, add_special_tokens=False)
    unk = embedder.tokenizer.unk_id
    words: list[Word] = []
    previous = None
    for token_id, (start, end), word in zip(encoding.ids, encoding.offsets, encoding.word_ids):
        known = int(token_id != unk)
        if words and word is not None and word == previous:
            words[-1].end = end
            words[-1].tokens += 1
            words[-1].known += known
        else:
            words.append(Word(start, end, 1, known))
        previous = word
    # A combining mark no token covers (composed into the character before it) belongs with the word before.
    for k, w in enumerate(words):
        stop = words[k + 1].start if k + 1 < len(words) else len(text)
        while w.end < stop and unicodedata.category(text[w.end]).startswith("M"):
            w.end += 1
    added = json.loads(hf(embedder).to_str())["added_tokens"]
    whole = [t["content"] for t in added if t.get("single_word")]
    inner = {word.lower() for t in added for word in t["content"].split()[:-1]}
    if not words or not whole:
        return words
    # Words stay together where a multi-word added token could span the cut (a word it begins or continues, then
    # one whitespace), and, for whole-word added tokens, where a word character on one side meets a character such
    # a token starts (ends) with on the other, with no whitespace between.
    starts, ends = {c[0].lower() for c in whole}, {c[-1].lower() for c in whole}
    units = [words[0]]
    for w in words[1:]:
        unit = units[-1]
        left, right, gap = text[unit.end - 1], text[w.start], text[unit.end : w.start]
        spaces = sum(map(is_space, gap))
        ok = True
        if whole:
            for q in range(unit.end, w.start + 1):  # whitespace after an inner word (past non-word characters)
                r = q
                while r > 0 and not (text[r - 1].isalnum() or text[r - 1] == "_" or text[r - 1].isspace()):
                    r -= 1
                if text[q].isspace() and spaces <= 1 and any(text[max(0, r - len(i)) : r].lower() == i for i in inner):
                    ok = False
            start_ok = is_space(right) or not wordish(left) or (right.isascii() and right.lower() not in starts)
            end_ok = is_space(left) or not wordish(right) or (left.isascii() and left.lower() not in ends)
            ok = ok and (spaces > 0 or (start_ok and end_ok))
        if ok:
            units.append(w)
        else:
            unit.end, unit.tokens, unit.known = w.end, unit.tokens + w.tokens, unit.known + w.known
    return units


def is_space(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def wordish(ch: str) -> bool:
    return not is_space(ch) and (not ch.isascii() or ch.isalnum() or ch == "_")


def reference_spans(embedder: Embedder, text: str, chunk_tokens: int, overlap_tokens: int) -> list[tuple[int, int]]:
    """The boundary rule, written plainly."""
    words = words_of(embedder, text)
    max_chars = embedder.tokenizer.max_chars
    spans = []
    i = 0
    while i < len(words):
        j, tokens = i, 0
        while (
            j < len(words)
            and tokens + words[j].tokens <= chunk_tokens
            and (max_chars is None or words[j].end - words[i].start <= max_chars)
        ):
            tokens += words[j].tokens
            j += 1
        j = max(j, i + 1)
        known = sum(w.known for w in words[i:j])
        limit = embedder.max_tokens
        if (limit is not None and words[i].tokens > limit) or (
            max_chars is not None and words[i].end - words[i].start > max_chars
        ):  # a single word beyond encode's limits: what encode makes of its (cut) text
            known = len(embedder.tokenize(text[words[i].start : words[i].end])[0])
        if known:
            spans.append((words[i].start, words[j - 1].end))
        if j == len(words):
            break
        k = j  # back while the overlap stays within overlap_tokens and the chunk from k still reaches word j
        while (
            k - 1 > i
            and sum(w.tokens for w in words[k - 1 : j]) <= overlap_tokens
            and sum(w.tokens for w in words[k - 1 : j + 1]) <= chunk_tokens
            and (max_chars is None or words[j].end - words[k - 1].start <= max_chars)
        ):
            k -= 1
        i = k
    return spans


def check(embedder: Embedder, text: str, chunk_tokens: int, overlap_tokens: int, chunks: list[Chunk] | None = None):
    """Every property of one text's chunks; returns them."""
    if chunks is None:
        chunks = embedder.chunk(text, chunk_tokens, overlap_tokens)
    assert all(isinstance(c, Chunk) for c in chunks)
    spans = [(c.start, c.end) for c in chunks]
    assert spans == reference_spans(embedder, text, chunk_tokens, overlap_tokens)
    # Offsets in order, inside the text; every chunk starts and ends later than the one before.
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert s0 < s1 and e0 < e1
    assert all(0 <= s < e <= len(text) for s, e in spans)
    tokenizer = hf(embedder)
    unk = embedder.tokenizer.unk_id
    encoding = tokenizer.encode(text, add_special_tokens=False)
    if not chunks:  # only for a text without a known token
        assert all(token_id == unk for token_id in encoding.ids)
        return chunks
    # The defining property.
    pieces = [text[s:e] for s, e in spans]
    vectors = np.stack([c.embedding for c in chunks])
    np.testing.assert_allclose(vectors, embedder.encode(pieces), rtol=0, atol=ATOL)
    # Token facts, from the tokenizer: size (and nothing truncated), coverage, overlap.
    units = {(w.start, w.end) for w in words_of(embedder, text)}
    max_chars = embedder.tokenizer.max_chars
    token_starts = [s for s, _ in encoding.offsets]
    token_ends = [e for _, e in encoding.offsets]
    for piece, span in zip(pieces, spans):
        alone = tokenizer.encode(piece, add_special_tokens=False)
        if alone.ids != encoding.ids[bisect_left(token_starts, span[0]) : bisect_right(token_ends, span[1])]:
            # Tokenized otherwise alone (and so given encode's vector above): only where whole-word added tokens
            # see another context, near characters the unit rules cannot judge.
            assert chunking._setup(embedder.tokenizer).whole_words, piece
            continue
        if len(alone.ids) > chunk_tokens or len(piece) > (max_chars or len(piece)):  # only a single word
            assert span in units, piece  # (or words that may not be parted)
        else:
            assert embedder.tokenize(piece)[0] == [i for i in alone.ids if i != unk]
    starts = [s for s, _ in spans]
    for token_id, (ts, te) in zip(encoding.ids, encoding.offsets):
        if token_id != unk:  # inside the last chunk starting at or before it (it has the furthest end)
            k = bisect_right(starts, ts) - 1
            assert k >= 0 and te <= spans[k][1], f"token at {ts}:{te} outside every chunk"
    for (_, e0), (s1, _) in zip(spans, spans[1:]):
        shared = bisect_right(token_ends, e0) - bisect_left(token_starts, s1)
        assert shared <= overlap_tokens
    return chunks


def long_document(sentences: list[str], chars: int) -> str:
    rng = np.random.default_rng(19)
    parts, size = [], 0
    while size < chars:
        sentence = sentences[int(rng.integers(len(sentences)))]
        parts.append(sentence + ("\n\n" if rng.random() < 0.1 else " "))
        size += len(parts[-1])
    return "".join(parts)[:chars]


def summation_rounding(embedder: Embedder, texts: list[str], dimensions: int | None = None) -> np.ndarray:
    """How far two float32 means of each text's n token rows may differ by rounding alone, per element.

    A float32 sum of n terms is off by at most (n - 1) * eps * sum|x| (so its mean by (n - 1) * eps * mean|x|):
    `encode` sums that way, chunks sum their segments in float64 and are rounded once. Twice n * eps * mean|x|
    (weighted rows as pooled) bounds their difference; it grows with a text's length and its rows' magnitude.
    """
    eps = float(np.finfo(np.float32).eps)
    table, model = np.abs(embedder.table.astype(np.float64)), embedder.model
    bounds = []
    for ids in embedder.tokenize(texts):
        ids = np.asarray(ids, dtype=np.int64)
        rows = table[ids if model.mapping is None else model.mapping[ids]]
        if model.weights is not None:
            rows = rows * np.abs(model.weights[ids, None])
        bounds.append(2 * len(ids) * eps * rows.mean(axis=0)[:dimensions])
    return np.stack(bounds)


def random_text(rng: np.random.Generator, words: int) -> str:
    out = []
    for _ in range(words):
        out.append(FRAGMENTS[int(rng.integers(len(FRAGMENTS)))])
        out.append(WHITESPACE[int(rng.integers(len(WHITESPACE)))])
    return "".join(out)


# Embedders beyond the bundled two --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> Embedder:
    """A vocabulary-quantized model: row = embeddings[mapping[id]] * weights[id]."""
    rng = np.random.default_rng(1)
    model = load_model(None)
    vocab = model.vocab_size
    directory = write_model(
        tmp_path_factory.mktemp("quantized"),
        model.tokenizer,
        rng.normal(size=(300, 64)).astype(np.float32),
        mapping=rng.integers(0, 300, size=vocab).astype(np.int64),
        weights=rng.uniform(0.1, 3.0, size=vocab).astype(np.float32),
        config={"normalize": True},
    )
    return Embedder.load(directory)


@pytest.fixture(scope="module")
def short_limit() -> Embedder:
    """max_tokens 16: encode reads 16 * 6 = 96 characters, less than a 99-character word."""
    return Embedder(load_model(None), max_tokens=16)


@pytest.fixture(scope="module")
def wordlevel(tmp_path_factory) -> Embedder:
    words = "the a man woman dog is running on beach quick brown fox".split()
    rng = np.random.default_rng(4)
    directory = tmp_path_factory.mktemp("wordlevel")
    write_model(directory, wordlevel_tokenizer(words), rng.normal(size=(len(words) + 1, 24)).astype(np.float32))
    return Embedder.load(directory)


@pytest.fixture(scope="module")
def unigram(tmp_path_factory) -> Embedder:
    """Metaspace + Unigram + NFKC: no whitespace cutting; words carry their leading space."""
    pieces = ["▁the", "▁a", "▁man", "▁dog", "▁run", "ning", "▁on", "▁be", "ach", "▁", "t", "h", "e", "a", "n", "s"]
    rng = np.random.default_rng(5)
    directory = tmp_path_factory.mktemp("unigram")
    write_model(directory, unigram_tokenizer(pieces), rng.normal(size=(len(pieces) + 1, 24)).astype(np.float32))
    return Embedder.load(directory)


@pytest.fixture(scope="module")
def every(embedders, quantized, short_limit, wordlevel, unigram) -> dict[str, Embedder]:
    return {**embedders, "quantized": quantized, "short-limit": short_limit, "wordlevel": wordlevel,
            "unigram": unigram}


# The property on chosen texts ------------------------------------------------------------------------------

EDGE_TEXTS = {
    "empty": "",
    "whitespace": " \t\n\r\n   \u3000 ",
    "single word": "hello",
    "single punctuation": "!",
    "5000-char word": "x" * 5000,
    "5000-char hyphenated": "ab-" * 1667,
    "non-ascii": "Café naïve résumé Ångström e\u0301x \u0301abc 東京は日本の首都です "
    "中文字符和English混合 I love 🍕 and 🚀! 👍🏽",
    "control characters": "tab\there\x12control\x00nul\x7fdel \x1c sep\x1d \x0bvertical\x0cfeed",
    "zero width": "\u200bzero\u200dwidth\ufeff and ﬁ ２ ",
    "unknown only": "🍕 🚀 \u200b 👍🏽",
    "special tokens": "hello [SEP] world [MASK] [cls] [UNK] x[SEP]y",
    "phrases": "it is not abaxial, not  abaxial, xnot abaxial, not abaxials, NOT ABAXIAL. not\nabaxial",
    # (swiftembed-potion-sts-8M's whole-word "not no" candidate hides "not abaxial" after "not "; "_" and "x" are
    # word characters that keep a whole-word token from matching; "\u200b" and accents vanish in normalizing)
    "phrase contexts": "not not abaxial. snot not abaxial _not abaxial not\u200b abaxial not abaxial_ nót abaxial "
    "not\u0301 abaxial x not no not notice",
}


@pytest.mark.parametrize("name", list(EDGE_TEXTS))
@pytest.mark.parametrize("size", SIZES, ids=[f"{c}-{o}" for c, o in SIZES])
def test_edge_texts(embedders, name, size):
    for embedder in embedders.values():
        check(embedder, EDGE_TEXTS[name], *size)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("size", SIZES, ids=[f"{c}-{o}" for c, o in SIZES])
def test_varied_texts_every_model(every, model, size):
    embedder = every[model]
    if size[0] > (embedder.max_tokens or size[0]):
        pytest.skip("chunk_tokens above this model's max_tokens")
    for text in VARIED_TEXTS:
        check(embedder, text, *size)


@pytest.mark.parametrize("size", [(8, 2), (128, 32), (256, 0), (512, 128)])
def test_long_document(embedders, sentences, size):
    text = long_document(sentences, 60_000)
    for embedder in embedders.values():
        chunks = check(embedder, text, *size)
        assert chunks[0].start == 0 and len(chunks) > 60_000 // 6 // size[0]


def test_retokenizing_catches_what_the_rules_miss(embedders):
    """"nót nót abaxial" normalizes to "not not abaxial", where the whole text matches no phrase but "nót abaxial"
    alone does: the unit rules (on the text as given) miss it, the second tokenization catches it."""
    sts = embedders["swiftembed-potion-sts-8M"]
    text = "nót nót abaxial"
    doc = chunking._tokenize(sts.tokenizer, [text])
    assert len(doc.word_starts) == 3
    assert chunking._retokenized_differently(sts.tokenizer, [text], doc, [0], [1], [3], [0]) == [0]
    assert chunking._suspects(chunking._setup(sts.tokenizer), [text], [0], np.array([4]), np.array([15])) == [0]
    ascii_text = "it is not good at all " * 20
    assert chunking._suspects(chunking._setup(sts.tokenizer), [ascii_text], [0], np.array([0]), np.array([40])) == []
    for size in [(1, 0), (2, 1), (3, 2)]:
        check(sts, text, *size)


def test_unit_rules_alone_suffice_for_plain_ascii(embedders, monkeypatch):
    """Without the second tokenization, ASCII text full of phrase material still chunks exactly."""
    monkeypatch.setattr(chunking, "_suspects", lambda *args: [])
    sts = embedders["swiftembed-potion-sts-8M"]
    fragments = ["not", "no", "notice", "noticed", "not no", "not abaxial", "abaxial", "abaxials", "_", "x", "-",
                 ",", ".", "NOT", "Not", "[SEP]", "42", "notable", "'", "not not", "snot", "not_", "not-"]
    rng = np.random.default_rng(7)
    for _ in range(150):
        parts = rng.choice(fragments + [" ", " ", "  ", "\n", "\t", ""], size=int(rng.integers(1, 80)))
        chunk_tokens = int(rng.integers(1, 20))
        check(sts, "".join(parts), chunk_tokens, int(rng.integers(0, chunk_tokens)))


def test_no_text_no_chunk(embedder):
    """Nothing to embed (no token, or only unknown ones): no chunk, rather than one all-zero vector."""
    texts = ["", "   ", "\n\t", "\u200b", "🍕🚀", "[UNK]", "x" * 5000]
    assert embedder.chunk(texts, 16) == [[] for _ in texts]
    assert [len(c) for c in chunk_sums(embedder, texts, 16)] == [0] * len(texts)


def test_long_word_is_its_own_chunk(embedder):
    text = "the supercalifragilisticexpialidocious dog"
    word = "supercalifragilisticexpialidocious"
    assert len(embedder.tokenize(word)[0]) > 3
    chunks = check(embedder, text, 3, 1)
    assert [text[c.start : c.end] for c in chunks] == ["the", word, "dog"]


def test_words_beyond_encode_limits(short_limit, unigram):
    """A word over `max_tokens` tokens or `max_chars` characters gets what encode gives its text (truncated)."""
    text = "a " + "x" * 99 + " b c"
    chunks = check(short_limit, text, 16, 4)
    assert [text[c.start : c.end] for c in chunks] == ["a", "x" * 99, "b c"]
    unbroken = "the" + "theman" * 200 + " dog"  # one Metaspace word of ~400 tokens, max_tokens 512
    check(unigram, unbroken, 512, 8)
    small = Embedder(unigram.model, max_tokens=8)
    chunks = check(small, unbroken, 8, 2)
    np.testing.assert_allclose(chunks[0].embedding, small.encode(unbroken), atol=ATOL)


def test_multiple_texts_match_one_by_one(embedders, sentences):
    texts = [*EDGE_TEXTS.values(), *VARIED_TEXTS, long_document(sentences, 5000)]
    for embedder in embedders.values():
        together = embedder.chunk(texts, 20, 5)
        assert len(together) == len(texts)
        for text, chunks in zip(texts, together):
            alone = embedder.chunk(text, 20, 5)
            assert [(c.start, c.end) for c in alone] == [(c.start, c.end) for c in chunks]
            if chunks:
                np.testing.assert_array_equal(np.stack([c.embedding for c in alone]),
                                              np.stack([c.embedding for c in chunks]))


@pytest.mark.parametrize(
    "options",
    [
        {"normalize": False},
        {"dimensions": 64},
        {"normalize": False, "dimensions": 32},
        {"precision": "int8"},
        {"precision": "uint8"},
        {"precision": "binary"},
        {"precision": "ubinary", "dimensions": 128},
    ],
)
def test_options_as_encode(embedder, sentences, options):
    text = long_document(sentences, 8000)
    chunks = embedder.chunk(text, 64, 16, **options)
    expected = embedder.encode([text[c.start : c.end] for c in chunks], **options)
    got = np.stack([c.embedding for c in chunks])
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if options.get("precision", "float32") == "float32" and not options.get("normalize", True):
        # Unnormalized means reach |5| here (a float32 step of 4.8e-7): compare at float32 summation rounding.
        bound = summation_rounding(embedder, [text[c.start : c.end] for c in chunks], options.get("dimensions"))
        assert np.all(np.abs(got - expected) <= bound)
    elif options.get("precision", "float32") == "float32":
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
    else:  # a rounding difference may flip a code at a step edge: almost all codes are equal
        assert np.mean(got == expected) > 0.999


@pytest.mark.parametrize("step", [1, 3, 64])
def test_range_sums_by_segments_or_prefix(quantized, step):
    """Few segments per range (added up) or many (prefix sums): both the exact sums of the weighted rows."""
    rng = np.random.default_rng(step)
    ids = rng.integers(0, quantized.vocab_size, 20_000).astype(np.int32)
    lo = np.arange(0, len(ids) - 128, step)
    hi = lo + 128
    got = chunking._range_sums(quantized, ids, lo, hi)
    rows = quantized.table[quantized.model.mapping[ids]].astype(np.float64) * quantized.model.weights[ids, None]
    prefix = np.concatenate([np.zeros((1, rows.shape[1])), np.cumsum(rows, axis=0)])
    np.testing.assert_allclose(got, prefix[hi] - prefix[lo], rtol=1e-5, atol=1e-5)


def test_chunk_sums_are_what_serving_finishes(embedder, sentences):
    texts = ["", long_document(sentences, 3000), "hello world", "🍕"]
    chunked = chunk_sums(embedder, texts, 32, 8)
    assert all(isinstance(c, ChunkedText) for c in chunked)
    assert [len(c) for c in chunked][::2] == [0, 1]
    for text, one in zip(texts, chunked):
        assert one.sums.dtype == np.float32 and one.sums.shape == (len(one), embedder.dim)
        assert one.counts == [len(embedder.tokenize(text[s:e])[0]) for s, e in one.spans]
        if len(one):
            vectors = embedder.finish(one.sums, tokens=one.counts)
            np.testing.assert_allclose(vectors, embedder.encode([text[s:e] for s, e in one.spans]), atol=ATOL)
            means = embedder.finish(one.sums, tokens=one.counts, normalize=False)
            pieces = [text[s:e] for s, e in one.spans]
            expected = embedder.encode(pieces, normalize=False)
            assert np.all(np.abs(means - expected) <= summation_rounding(embedder, pieces))


def test_single_string_and_thin_method(embedder):
    text = "one two three four five six seven"
    chunks = embedder.chunk(text, 3, 1)
    assert isinstance(chunks, list) and all(isinstance(c, Chunk) for c in chunks)
    assert [(c.start, c.end) for c in chunks] == [(c.start, c.end) for c in chunk_texts(embedder, [text], 3, 1)[0]]
    assert [text[c.start : c.end] for c in chunks] == ["one two three", "three four five", "five six seven"]


def test_validation(embedder):
    for chunk_tokens, overlap_tokens in [(0, 0), (-1, 0), (4, 4), (4, 5), (4, -1), (513, 0)]:
        with pytest.raises(ValueError):
            embedder.chunk(["text"], chunk_tokens, overlap_tokens)
    with pytest.raises(ValueError, match="max_tokens"):
        embedder.chunk(["text"], 1000)
    with pytest.raises(TypeError):
        embedder.chunk(["text"], 8.5)
    with pytest.raises(TypeError):
        chunk_sums(embedder, "text", 8)
    with pytest.raises(ValueError):
        embedder.chunk(["text"], 8, dimensions=10_000)
    with pytest.raises(ValueError):
        embedder.chunk(["text"], 8, precision="float16")
    assert embedder.chunk([], 8) == []
    assert len(embedder.chunk(["text"], np.int64(8))[0]) == 1


def test_does_not_touch_the_embedders_tokenizer(embedder):
    before = embedder.tokenizer._tokenizer.truncation
    embedder.chunk("word " * 2000, 512)
    assert embedder.tokenizer._tokenizer.truncation == before
    assert len(embedder.tokenize("word " * 700)[0]) == 512


def test_unlimited_embedder(sentences):
    embedder = Embedder(load_model(None), max_tokens=None)
    text = long_document(sentences, 20_000)
    check(embedder, text, 2000, 100)


# Tokenizing in pieces --------------------------------------------------------------------------------------


@pytest.mark.parametrize("piece_chars", [1, 7, 64])
def test_pieces_change_nothing(embedders, sentences, monkeypatch, piece_chars):
    """Cutting texts at whitespace for the tokenizer gives the whole-text tokenization (the reference's)."""
    monkeypatch.setattr(chunking, "PIECE_CHARS", piece_chars)
    rng = np.random.default_rng(piece_chars)
    texts = [long_document(sentences, 3000), EDGE_TEXTS["phrases"] * 20, EDGE_TEXTS["non-ascii"] * 10,
             EDGE_TEXTS["control characters"] * 10, EDGE_TEXTS["special tokens"] * 10, random_text(rng, 400)]
    for embedder in embedders.values():
        for text in texts:
            check(embedder, text, 24, 6)


def test_ascii_words_match_the_tokenizer(every, sentences, monkeypatch):
    """The ASCII fast path's words, ids and offsets are the tokenizer's own (with offsets, no pieces)."""
    rng = np.random.default_rng(3)
    ascii_fragments = [f for f in FRAGMENTS if f.isascii()]
    texts = [
        *[sentence for sentence in sentences if sentence.isascii()][:300],
        long_document(sentences, 20_000).encode("ascii", "ignore").decode(),
        *(f * 3 for f in ascii_fragments),
        *("".join(rng.choice(ascii_fragments + [" ", "\n", "\t", ""], size=40)) for _ in range(200)),
        "".join(map(chr, range(32, 127))), "x" * 100, "x" * 101, "a_b-c.d", "DON'T  stop\r\n", "", "  ",
    ]
    texts = [text for text in texts if text.isascii()]
    assert len(texts) > 500
    for embedder in every.values():
        fast = chunking._tokenize(embedder.tokenizer, texts)
        monkeypatch.setattr(chunking, "ASCII_FAST_PATH", False)
        monkeypatch.setattr(chunking, "PIECE_CHARS", 10**9)
        slow = chunking._tokenize(embedder.tokenizer, texts)
        monkeypatch.undo()
        for name in ("ids", "first", "word_starts", "word_ends", "text_words", "known_before", "known_ids"):
            np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)


def test_piece_rules(embedders, wordlevel, unigram):
    sts = embedders["swiftembed-potion-sts-8M"]
    assert chunking._setup(sts.tokenizer).pieces and chunking._setup(sts.tokenizer).whole_words
    assert chunking._setup(embedders["potion-base-8M"].tokenizer).pieces
    assert chunking._setup(wordlevel.tokenizer).pieces
    assert not chunking._setup(unigram.tokenizer).pieces
    text = "a " * 3000 + "not abaxial " * 3000
    starts = chunking._piece_starts(text, chunking._setup(sts.tokenizer))
    assert len(starts) > 3
    for cut in starts[1:]:
        assert text[cut] == " " and not text[:cut].endswith("not")


# Fuzzing ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_fuzz_fragments(every, model):
    embedder = every[model]
    rng = np.random.default_rng(1919)
    for _ in range(80):
        text = random_text(rng, int(rng.integers(0, 120)))
        chunk_tokens = int(rng.integers(1, min(40, embedder.max_tokens or 40)))
        check(embedder, text, chunk_tokens, int(rng.integers(0, chunk_tokens)))


TEXTS = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=300),
    st.lists(st.sampled_from(FRAGMENTS + WHITESPACE), max_size=80).map("".join),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(st.characters(codec="utf-8"), max_size=3)), max_size=60)
    .map(" ".join),
)


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS, chunk_tokens=st.integers(1, 24), overlap=st.integers(0, 23))
def test_fuzz_hypothesis(every, model, text, chunk_tokens, overlap):
    embedder = every[model]
    chunk_tokens = min(chunk_tokens, embedder.max_tokens or chunk_tokens)
    check(embedder, text, chunk_tokens, min(overlap, chunk_tokens - 1))


# Size --------------------------------------------------------------------------------------------------------


def test_one_megabyte_document(embedder, sentences):
    text = long_document(sentences, 1_000_000)
    started = time.perf_counter()
    chunks = embedder.chunk(text, 128, 32)
    elapsed = time.perf_counter() - started
    print(f"\nchunking 1 MB ({len(chunks)} chunks of 128 tokens, overlap 32): {elapsed:.2f} s")
    assert len(chunks) > 1_000_000 // 6 // 128
    spans = [(c.start, c.end) for c in chunks]
    assert all(s0 < s1 and e0 < e1 for (s0, e0), (s1, e1) in zip(spans, spans[1:]))
    assert spans[0][0] == 0 and spans[-1][1] > len(text) - 100
    sample = np.random.default_rng(0).choice(len(chunks), 300, replace=False)
    np.testing.assert_allclose(
        np.stack([chunks[k].embedding for k in sample]),
        embedder.encode([text[chunks[k].start : chunks[k].end] for k in sample]),
        rtol=0,
        atol=ATOL,
    )
