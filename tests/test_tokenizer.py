"""The ASCII fast path reproduces the real tokenizer exactly: differential tests, fuzzed and on real text."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swiftembed.core.model import load_model
from swiftembed.core.tokenizer import TextTokenizer, TokenBatch


# Both bundled tokenizers: potion-base-8M's, and swiftembed-potion-sts-8M's with ~4,000 "not X" phrase tokens.
@pytest.fixture(scope="module", params=[None, "swiftembed-potion-sts-8M"], ids=["potion", "phrases"])
def pair(request) -> tuple[TextTokenizer, TextTokenizer]:
    tokenizer = load_model(request.param).tokenizer
    return TextTokenizer(tokenizer, 512, fast_path=True), TextTokenizer(tokenizer, 512, fast_path=False)


def assert_same(pair, texts):
    fast, slow = pair
    assert fast.has_fast_path and not slow.has_fast_path
    assert fast.tokenize(texts) == slow.tokenize(texts)


ASCII_NOISE = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=300)
WORDY = st.lists(
    st.one_of(
        st.sampled_from(["the", "The", "DOG", "running", "un", "##", "[SEP]", "[sep]", "[MASK", "x" * 101, "x" * 100]),
        st.sampled_from(["not", "Not", "NOT", "cannot", " ", "good", "goodness", "open", "well", "known", "acid"]),
        st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=30),
        st.sampled_from(list(string.punctuation + string.whitespace) + ["\x00", "\x12", "\x1c", "\x7f", "\x0b"]),
    ),
    max_size=60,
).map("".join)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(ASCII_NOISE, WORDY), min_size=1, max_size=8))
def test_fuzzed_ascii_matches_real_tokenizer(pair, texts):
    assert_same(pair, texts)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=80), min_size=1, max_size=8))
def test_fuzzed_unicode_matches_real_tokenizer(pair, texts):
    assert_same(pair, texts)


def test_every_ascii_character_alone_and_between_words(pair):
    texts = [chr(c) for c in range(128)] + [f"ab{chr(c)}cd EF{chr(c)}{chr(c)}gh" for c in range(128)]
    assert_same(pair, texts)


def test_word_length_limit(pair):
    assert_same(pair, ["a" * 99, "a" * 100, "a" * 101, "ab" * 60 + " ok", "x" * 100 + "!" + "y" * 101])


def test_added_tokens_fall_back(pair):
    assert_same(pair, ["a [SEP] b", "[CLS][MASK]", "[PAD] [UNK] [unk]", "[sep]", "x[MASK]y"])


def test_phrase_tokens_fall_back(pair):
    assert_same(pair, ["The food was not good.", "NOT GOOD", "cannot goodness", "not  good", "not\tgood!",
                       "not\x00good", "_not good_", "not good's", "it's not open-ended", "not", "good not",
                       "not not good", "He did not pass; it was not safe, not cold and not correct."])


def test_truncation(pair):
    assert_same(pair, ["word " * 600, "a-b " * 300, "unbelievably " * 400])


def test_real_sentences(pair, sentences):
    assert_same(pair, sentences)


def test_cache_is_bounded(pair, monkeypatch):
    import swiftembed.core.tokenizer as module

    monkeypatch.setattr(module, "_WORD_CACHE_LIMIT", 50)
    fast, slow = pair
    texts = [f"word{i} other{i * 7}" for i in range(400)]
    for start in range(0, 400, 40):
        assert fast.tokenize(texts[start : start + 40]) == slow.tokenize(texts[start : start + 40])
    assert len(fast._fast._cache) <= 50 + 80 * 3


def test_no_padding_or_truncation_leaks_from_tokenizer_json():
    tokenizer = load_model().tokenizer
    tokenizer.enable_padding(length=64)
    tokenizer.enable_truncation(4)
    tok = TextTokenizer(tokenizer, 512, fast_path=False)
    ids = tok.tokenize(["one two three four five six seven", "hi"])
    assert len(ids[0]) == 7 and len(ids[1]) == 1


def test_token_batch_roundtrip():
    lists = [[1, 2], [], [3], [4, 5, 6]]
    batch = TokenBatch.from_lists(lists)
    assert batch.to_lists() == lists
    assert batch.select(1, 4).to_lists() == lists[1:]
    assert batch.lengths.tolist() == [2, 0, 1, 3]
