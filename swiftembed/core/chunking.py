"""Long documents as chunks: each text cut into runs of whole words, each run with its own vector.

The defining property: a chunk `(start, end)` of `text` has exactly the vector `Embedder.encode(text[start:end])`
gives (to float32 rounding). "Rounding" is that of `encode`'s float32 sum of the chunk's n token rows: each element
within 2 * n * eps32 * mean |row element| of the other (chunks sum in float64 and round once, so they are the nearer
to the exact mean). Normalized vectors differ by ~1e-7; un-normalized means, up to |5| for potion-base-8M, by up to
~1.4e-6 for 64-token chunks. To make the property hold:

* Chunks break only between the tokenizer's pre-tokenizer words, never inside one word's WordPiece pieces, so
  that tokenizing `text[start:end]` alone gives exactly the chunk's tokens. `start` is the first token's
  character offset, `end` the last token's end (plus any combining mark a composing normalizer folded into that
  token's last character), both into the text as given: the normalizer's lowercasing, accent stripping or
  deleted control characters do not shift them.
* Where an added token that matches only as a whole word (`single_word`, e.g. the "not good" phrases of a
  negation-aware vocabulary) makes a word's tokens depend on its neighbours, the words concerned stay together
  (`_separable`), and the chunks those rules cannot vouch for (an edge near a non-ASCII or control character,
  which a normalizer may turn into part of such a token) are tokenized again: one that tokenizes otherwise alone
  gets `encode`'s result for its text, whose token count may then differ from the whole text's by the few tokens
  concerned. Tokenizers without such tokens (plain BERT vocabularies) skip all of this.
* A chunk never holds more than `Embedder.max_tokens` tokens nor spans more than the `max_tokens *
  median_token_length` characters `encode` reads of a text, so `encode` truncates nothing of it.
  `chunk_tokens` above `max_tokens` is refused.
* A single word longer than `chunk_tokens` tokens is a chunk of its own (it cannot be split without changing
  its tokens). One beyond `encode`'s own limits (only possible for tokenizers whose words are not bounded, or an
  Embedder built with a small `max_tokens`) gets what `encode` gives for its text: the vector of its first
  tokens, as for any text longer than the limits.

Boundaries: from the first word, each chunk takes as many whole words as fit in `chunk_tokens` tokens (unknown
tokens count: `encode`'s truncation counts them too, though they add nothing to the vector). The next chunk starts
at the earliest word that makes it overlap the previous by at most `overlap_tokens` tokens, provided it still
reaches the word after the previous chunk (the overlap shrinks, down to none, where that word is long): so every
chunk starts and ends later than the one before, and none is contained in another. The last chunk is the one that
reaches the text's last word.

A chunk whose tokens are all unknown (or a text with no token at all: empty, whitespace, unknown characters only)
would have the all-zero vector, which matches nothing and which cosine indexes reject: such chunks are left out,
so an empty text has no chunk at all.

Cost grows with the document's length, not with chunk count x chunk size: the document is tokenized once, with
word offsets (long texts in pieces cut at whitespace where the tokenizer allows it: ASCII runs by the tokenizer's
ASCII fast path, the rest by the tokenizer itself, in parallel), its token rows are summed once per segment
between consecutive chunk boundaries (the pooling kernel), and each chunk's sum is the float64 sum of its
segments (or, for heavy overlaps, a difference of float64 prefix sums over them): exact to float32 rounding
whatever the document's length or the overlap. (A float32 running sum over a 250,000-token document is off by
3e-4 after normalization; a float64 one over every token row takes seconds and 0.5 GB.)
"""

from __future__ import annotations

import copy
import json
import operator
import re
import unicodedata
import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from scipy.sparse import csr_matrix
from tokenizers import Tokenizer

from swiftembed.core.pooling import Precision, mean_pool
from swiftembed.core.tokenizer import _WORD_CACHE_LIMIT, TextTokenizer, TokenBatch, _AsciiWordPiece

if TYPE_CHECKING:
    from swiftembed.core.embedder import Embedder

# Texts longer than this are tokenized in pieces cut at whitespace (where the tokenizer allows it): one long
# encode is single-threaded and grows faster than linearly; pieces go to the tokenizer's thread pool.
PIECE_CHARS = 1024
# ASCII texts a BERT-style tokenizer's fast path takes are split into words here, at its speed (tests turn it off
# to compare with the tokenizer's own offsets).
ASCII_FAST_PATH = True
# Normalizers and pre-tokenizers for which a piece boundary at ASCII whitespace changes no token: every
# normalizer here is per character (or per combining sequence, which whitespace ends); one pre-tokenizer must
# split words at whitespace and drop it, the others only split words further.
_PIECE_NORMALIZERS = frozenset({"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents"})
_SPLITS_AT_WHITESPACE = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit"})
_PIECE_PRE_TOKENIZERS = _SPLITS_AT_WHITESPACE | {"Punctuation", "Digits"}
_RUN = re.compile(r"[ \t\n\r]+")  # whitespace every allowed normalizer keeps as whitespace
_ASCII_SPACE = np.array([chr(c) in " \t\n\r" for c in range(128)])
# Words of printable ASCII as BertPreTokenizer splits them: runs of letters and digits, single punctuation.
_ASCII_WORD_RE = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9 \t\n\r]")
# 0 whitespace, 1 letter or digit, 2 punctuation, 3 a control character the normalizer deletes.
_ASCII_CLASSES = np.array(
    [0 if chr(c) in " \t\n\r" else 1 if chr(c).isalnum() else 2 if chr(c).isprintable() else 3 for c in range(128)],
    dtype=np.int8,
)
_ASCII_WORD = np.array([chr(c).isalnum() or chr(c) == "_" for c in range(128)])
# Unicode space separators (Zs) beyond ASCII: what BERT-style normalizers treat as whitespace.
_UNICODE_SPACES = np.array([0xA0, 0x1680, *range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000], dtype=np.uint32)


class Chunk(NamedTuple):
    """One chunk of a text: `text[start:end]`, and its vector (what `encode(text[start:end])` gives)."""

    start: int
    end: int
    embedding: np.ndarray


@dataclass(frozen=True)
class ChunkedText:
    """One text's chunks before finishing: character spans, float32 row sums and pooled token counts.

    What a serving layer batches across requests and finishes itself, as `Embedder.pool_texts(mean=False)` gives
    sums and counts: `Embedder.finish(sums, tokens=counts, ...)` turns them into the chunks' vectors.
    """

    spans: list[tuple[int, int]]
    sums: np.ndarray  # float32 (chunks, dim)
    counts: list[int]  # tokens pooled per chunk (unknown tokens excluded), all >= 1

    def __len__(self) -> int:
        return len(self.spans)


def chunk_texts(
    embedder: Embedder,
    texts: str | Sequence[str],
    chunk_tokens: int,
    overlap_tokens: int = 0,
    *,
    normalize: bool | None = None,
    dimensions: int | None = None,
    precision: Precision = "float32",
) -> list[list[Chunk]] | list[Chunk]:
    """Each text's chunks with their vectors (see the module docstring); a single string gives its list alone.

    `normalize`, `dimensions` and `precision` mean what they mean for `Embedder.encode`; all chunks of all texts
    are finished as one batch.
    """
    if isinstance(texts, str):
        return chunk_texts(  # type: ignore[return-value]
            embedder, [texts], chunk_tokens, overlap_tokens, normalize=normalize, dimensions=dimensions,
            precision=precision,
        )[0]
    embedder.check_options(dimensions, precision)
    chunked = chunk_sums(embedder, texts, chunk_tokens, overlap_tokens)
    vectors = finish_chunks(embedder, chunked, normalize=normalize, dimensions=dimensions, precision=precision)
    out: list[list[Chunk]] = []
    row = 0
    for one in chunked:
        out.append([Chunk(start, end, vectors[row + k]) for k, (start, end) in enumerate(one.spans)])
        row += len(one)
    return out


def finish_chunks(
    embedder: Embedder,
    chunked: Sequence[ChunkedText],
    *,
    normalize: bool | None = None,
    dimensions: int | None = None,
    precision: Precision = "float32",
) -> np.ndarray:
    """Every chunk's vector, all texts' chunks in text order, from one `Embedder.finish` call over their sums (the
    options as for `Embedder.encode`); the sums are reused in place."""
    if len(chunked) == 1:
        sums = chunked[0].sums
    else:
        sums = np.concatenate([one.sums for one in chunked]) if chunked else np.zeros((0, embedder.dim), np.float32)
    return embedder.finish(sums, tokens=[n for one in chunked for n in one.counts], normalize=normalize,
                           dimensions=dimensions, precision=precision, inplace=True)


def chunk_sums(
    embedder: Embedder, texts: Sequence[str], chunk_tokens: int, overlap_tokens: int = 0
) -> list[ChunkedText]:
    """Per text, its chunks' spans, float32 row sums and token counts: `chunk_texts` before finishing."""
    chunk_tokens, overlap_tokens = _check(embedder, chunk_tokens, overlap_tokens)
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    tokenizer = embedder.tokenizer
    doc = _tokenize(tokenizer, texts)
    max_chars = tokenizer.max_chars
    max_tokens = tokenizer.max_tokens
    first_all = doc.first.tolist()
    starts_all, ends_all = doc.word_starts.tolist(), doc.word_ends.tolist()

    # Plan: word ranges [i, j) per chunk, by the greedy rule, text by text.
    text_of: list[int] = []
    lo_words: list[int] = []
    hi_words: list[int] = []
    over: list[int] = []  # chunks (by index) that get encode's own result: beyond its limits, or retokenized
    word_bounds = doc.text_words.tolist()
    for t in range(len(texts)):
        w0, w1 = word_bounds[t], word_bounds[t + 1]
        if w0 == w1:
            continue
        first = first_all[w0 : w1 + 1]  # token index of each word's first token, then the text's token end
        starts, ends = starts_all[w0:w1], ends_all[w0:w1]
        n = w1 - w0
        i = 0
        while True:
            j = bisect_right(first, first[i] + chunk_tokens) - 1
            if max_chars is not None:
                j = min(j, bisect_right(ends, starts[i] + max_chars))
            if j <= i:  # one word over the budget: a chunk of its own
                j = i + 1
                if (max_tokens is not None and first[j] - first[i] > max_tokens) or (
                    max_chars is not None and ends[i] - starts[i] > max_chars
                ):
                    over.append(len(text_of))
            text_of.append(t)
            lo_words.append(w0 + i)
            hi_words.append(w0 + j)
            if j >= n:
                break
            # The next chunk starts as early as the overlap allows, but late enough to reach word j.
            k = bisect_left(first, max(first[j] - overlap_tokens, first[j + 1] - chunk_tokens), i + 1, j)
            if max_chars is not None:
                k = max(k, bisect_left(starts, ends[j] - max_chars, i + 1, j))
            i = k

    if not text_of:
        return [ChunkedText([], np.zeros((0, embedder.dim), np.float32), []) for _ in texts]
    lo_words_a = np.asarray(lo_words, dtype=np.int64)
    hi_words_a = np.asarray(hi_words, dtype=np.int64)
    span_starts = doc.word_starts[lo_words_a]
    span_ends = doc.word_ends[hi_words_a - 1]
    setup = _setup(tokenizer)
    if setup.whole_words:
        suspects = _suspects(setup, texts, text_of, span_starts, span_ends)
        over = sorted({*over, *_retokenized_differently(tokenizer, texts, doc, text_of, lo_words, hi_words, suspects)})
    # Token ranges, then the same ranges over the known tokens only (unknown tokens add nothing).
    known_before = doc.known_before
    lo_known = known_before[doc.first[lo_words_a]]
    hi_known = known_before[doc.first[hi_words_a]]
    counts = hi_known - lo_known
    sums = _range_sums(embedder, doc.known_ids, lo_known, hi_known)
    if over:
        over_texts = [texts[text_of[k]][span_starts[k] : span_ends[k]] for k in over]
        sums[over], over_counts = embedder.pool_texts(over_texts, mean=False)
        counts[over] = over_counts

    out: list[ChunkedText] = []
    text_of_a = np.asarray(text_of, dtype=np.int64)
    bounds = np.searchsorted(text_of_a, np.arange(len(texts) + 1)).tolist()
    for t in range(len(texts)):
        a, b = bounds[t], bounds[t + 1]
        keep = np.flatnonzero(counts[a:b] > 0) + a  # all-unknown chunks would be zero vectors: left out
        out.append(
            ChunkedText(
                list(zip(span_starts[keep].tolist(), span_ends[keep].tolist())), sums[keep], counts[keep].tolist()
            )
        )
    return out


def _suspects(
    setup: _Setup, texts: Sequence[str], text_of: list[int], starts: np.ndarray, ends: np.ndarray
) -> list[int]:
    """The chunks the unit rules may not have protected: all, or those with an edge near an odd character."""
    if not setup.plain_whole_words:
        return list(range(len(text_of)))
    text_of_a = np.asarray(text_of, dtype=np.int64)
    bounds = np.searchsorted(text_of_a, np.arange(len(texts) + 1)).tolist()
    suspects: list[int] = []
    for t, text in enumerate(texts):
        a, b = bounds[t], bounds[t + 1]
        if a == b or (text.isascii() and _ASCII_CLASSES[np.frombuffer(text.encode(), dtype=np.uint8)].max() < 3):
            continue
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        odd = (codes >= 128) | (_ASCII_CLASSES[np.minimum(codes, 127)] == 3)
        before = np.zeros(len(codes) + 1, dtype=np.int64)
        np.cumsum(odd, out=before[1:])
        near = np.zeros(b - a, dtype=bool)
        for edges in (starts[a:b], ends[a:b]):  # an odd character within reach of the edge
            near |= before[np.minimum(edges + setup.reach, len(codes))] > before[np.maximum(edges - setup.reach, 0)]
        suspects.extend((np.flatnonzero(near) + a).tolist())
    return suspects


def _retokenized_differently(
    tokenizer: TextTokenizer,
    texts: Sequence[str],
    doc: _Words,
    text_of: list[int],
    lo: list[int],
    hi: list[int],
    suspects: list[int],
) -> list[int]:
    """Those of the `suspects` chunks whose text alone tokenizes otherwise than the whole text did there.

    Only for tokenizers with `single_word` added tokens, whose matches depend on context in ways the unit rules
    (`_separable`) cover for all but contrived texts: the check makes sure, at the cost of a second tokenization
    of the chunks concerned.
    """
    if not suspects:
        return []
    first, starts, ends = doc.first.tolist(), doc.word_starts.tolist(), doc.word_ends.tolist()
    pieces = [texts[text_of[k]][starts[lo[k]] : ends[hi[k] - 1]] for k in suspects]
    ids = doc.ids.tolist()
    encodings = _setup(tokenizer).tokenizer.encode_batch_fast(pieces, add_special_tokens=False)
    return [k for k, e in zip(suspects, encodings) if e.ids != ids[first[lo[k]] : first[hi[k]]]]


def _check(embedder: Embedder, chunk_tokens: int, overlap_tokens: int) -> tuple[int, int]:
    chunk_tokens, overlap_tokens = operator.index(chunk_tokens), operator.index(overlap_tokens)
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    if not 0 <= overlap_tokens < chunk_tokens:
        raise ValueError(f"overlap_tokens must be at least 0 and less than chunk_tokens, got {overlap_tokens}")
    limit = embedder.max_tokens
    if limit is not None and chunk_tokens > limit:
        raise ValueError(
            f"chunk_tokens must be at most the model's max_tokens ({limit}), got {chunk_tokens}: "
            "encode reads no more of a text, so a longer chunk would not get its own text's vector"
        )
    return chunk_tokens, overlap_tokens


def _range_sums(embedder: Embedder, ids: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """float32 sums of the (weighted) rows of `ids[lo[k]:hi[k]]` for every k, in time linear in `len(ids)`.

    The rows are summed once per segment between consecutive boundaries (the pooling kernel, float32); each
    range is then the float64 sum of its few segments, or, where ranges overlap so much that they hold many
    segments each, the difference of two float64 prefix sums over the segments: no float32 cancellation however
    long the document, and no more work than the document's length (and the number of chunks) calls for.
    """
    points = np.unique(np.concatenate(([0, len(ids)], lo, hi)))
    segments = mean_pool(
        embedder.table,
        TokenBatch(ids, points),
        rows=embedder.model.mapping,
        weights=embedder.model.weights,
        mean=False,
    )
    first, stop = np.searchsorted(points, lo), np.searchsorted(points, hi)  # each range's segments
    spans = stop - first
    if spans.sum() <= 4 * len(segments) + 64:  # a few segments per range (a modest overlap): add them up
        indptr = np.zeros(len(lo) + 1, dtype=np.int64)
        np.cumsum(spans, out=indptr[1:])
        indices = np.arange(indptr[-1]) - np.repeat(indptr[:-1] - first, spans)
        ranges = csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(lo), len(segments)))
        return (ranges @ segments.astype(np.float64)).astype(np.float32)
    prefix = np.zeros((len(points), segments.shape[1]), dtype=np.float64)
    np.cumsum(segments, axis=0, dtype=np.float64, out=prefix[1:])
    return (prefix[stop] - prefix[first]).astype(np.float32)


# Tokenization with offsets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Words:
    """Several texts' tokens, grouped into units a chunk may not split, with character offsets per text.

    A unit is a pre-tokenizer word, or several when the tokenizer's added tokens make cutting between them unsafe.
    """

    ids: np.ndarray  # int64 (tokens): every token id, unknown ones included, all texts back to back
    first: np.ndarray  # int64 (units + 1): each unit's first token index, then the total token count
    word_starts: np.ndarray  # int64 (units): character start of each unit's first token, in its own text
    word_ends: np.ndarray  # int64 (units): character end of each unit's last token
    text_words: np.ndarray  # int64 (texts + 1): text t owns units text_words[t]:text_words[t + 1]
    known_before: np.ndarray  # int64 (tokens + 1): known (not unknown) tokens before each token index
    known_ids: np.ndarray  # int32: the known tokens' ids, all texts back to back


@dataclass(frozen=True)
class _Setup:
    """What chunking needs to know of one tokenizer, worked out once per Embedder."""

    tokenizer: Tokenizer  # the embedder's tokenizer without truncation
    pieces: bool  # whether texts may be tokenized in pieces cut at whitespace
    # Whether some added token matches only as a whole word (`single_word`): such a match depends on the
    # characters around it, and a failed candidate hides any match overlapping it.
    whole_words: bool = False
    # Whether every such token is plain words of ASCII letters and digits one space apart: then, with the unit
    # rules, only a chunk edge near a non-ASCII or control character can tokenize otherwise alone, and only such
    # chunks are checked (`reach`: the longest such token, plus a margin). Otherwise every chunk is checked.
    plain_whole_words: bool = True
    reach: int = 0
    # The characters such tokens start (end) with, as 128 ASCII flags ignoring case.
    whole_word_starts: np.ndarray | None = None
    whole_word_ends: np.ndarray | None = None
    # Words a multi-word added token has before a space ("not" in "not good"), lowercased: after one of them (and
    # characters that are neither word characters nor whitespace), a space may be the middle of a match.
    inner_words: frozenset[str] = frozenset()
    # Such a word, then non-word characters (group 2), then whitespace.
    inner: re.Pattern[str] | None = None
    runs: dict[str, _Run] = field(default_factory=dict, compare=False)  # `_ascii_words`' cache


_SETUPS: weakref.WeakKeyDictionary[TextTokenizer, _Setup] = weakref.WeakKeyDictionary()


def _setup(tokenizer: TextTokenizer) -> _Setup:
    setup = _SETUPS.get(tokenizer)
    if setup is None:
        hf = tokenizer._tokenizer
        if tokenizer.max_tokens is not None:  # a copy: the embedder's own tokenizer stays as it is
            hf = copy.deepcopy(hf)
            hf.no_truncation()
        setup = _SETUPS[tokenizer] = _make_setup(hf)
    return setup


def _make_setup(tokenizer: Tokenizer) -> _Setup:
    spec = json.loads(tokenizer.to_str())
    added = spec.get("added_tokens", [])
    contents = [t["content"] for t in added if t.get("content")]
    inner_words = frozenset(word.lower() for content in contents for word in content.split()[:-1])
    inner = None
    if inner_words:
        words = sorted(inner_words, key=len, reverse=True)
        inner = re.compile("(" + "|".join(map(re.escape, words)) + r")([^\w\s]*)\s", re.IGNORECASE)
    # Pieces need multi-word added tokens made of ASCII words, one space apart (what `_cut_may_part` checks).
    pieces = _pieces_allowed(spec) and all(
        re.fullmatch(r"\S+(?: \S+)*", content) and content.isascii()
        for content in contents
        if any(c.isspace() for c in content)
    )
    whole = [t["content"] for t in added if t.get("single_word") and t.get("content")]
    return _Setup(
        tokenizer,
        pieces,
        whole_words=bool(whole),
        plain_whole_words=all(re.fullmatch(r"[A-Za-z0-9]+(?: [A-Za-z0-9]+)*", content) for content in whole),
        reach=max(map(len, whole), default=0) + 8,
        whole_word_starts=_ascii_flags({c[0] for c in whole}) if whole else None,
        whole_word_ends=_ascii_flags({c[-1] for c in whole}) if whole else None,
        inner_words=inner_words,
        inner=inner,
    )


def _pieces_allowed(spec: dict) -> bool:
    """Whether cutting a text at ASCII whitespace leaves the tokens of what lies on either side unchanged."""

    def kinds(component: dict | None, wrapper: str) -> set[str]:
        if not component:
            return set()
        if component.get("type") == "Sequence":
            return set().union(*(kinds(part, wrapper) for part in component.get(wrapper, [])))
        return {component.get("type", "")}

    normalizers = kinds(spec.get("normalizer"), "normalizers")
    pre_tokenizers = kinds(spec.get("pre_tokenizer"), "pretokenizers")
    return (
        normalizers <= _PIECE_NORMALIZERS
        and pre_tokenizers <= _PIECE_PRE_TOKENIZERS
        and bool(pre_tokenizers & _SPLITS_AT_WHITESPACE)
    )


def _ascii_flags(chars: set[str]) -> np.ndarray:
    """128 flags: which ASCII characters are in `chars`, ignoring case."""
    lowered = {c.lower() for c in chars}
    return np.array([chr(c).lower() in lowered for c in range(128)])


def _piece_starts(text: str, setup: _Setup) -> list[int]:
    """Where to cut a long text for the tokenizer: at the start of a whitespace run, but not right after a word
    that begins or continues a multi-word added token (a run of two or more whitespace characters is safe)."""
    starts = [0]
    target = PIECE_CHARS
    while target < len(text):
        match = _RUN.search(text, target)
        if match is None:
            break
        cut = match.start()
        mid_run = cut == target and text[cut - 1] in " \t\n\r"
        if setup.inner_words and not mid_run and match.end() - cut == 1 and _cut_may_part(text, cut, setup):
            target = match.end() + 1
            continue
        starts.append(cut)
        target = cut + PIECE_CHARS
    return starts


def _cut_may_part(text: str, cut: int, setup: _Setup) -> bool:
    """Whether a multi-word added token could span a single whitespace at `cut`: the word before it, past any
    characters a normalizer may delete, is one such a token begins or continues with, or might become one."""
    pos = cut
    while pos > 0 and text[pos - 1] not in " \t\n\r" and not text[pos - 1].isalnum():
        pos -= 1
    reach = max(map(len, setup.inner_words))
    word = text[max(0, pos - reach) : pos]
    return not word.isascii() or any(word.lower().endswith(inner) for inner in setup.inner_words)


def _tokenize(tokenizer: TextTokenizer, texts: Sequence[str]) -> _Words:
    """One tokenization of every text, no truncation, with unit grouping and character offsets."""
    setup = _setup(tokenizer)
    fast = tokenizer._fast if ASCII_FAST_PATH else None
    # Long texts in pieces where that changes no token. Runs of ASCII pieces go to the ASCII fast path if it can
    # take them; the rest to the tokenizer itself, all in one parallel batch.
    parts: list[tuple[int, int, _Record | int]] = []  # (text, shift, record or index into hf_pieces), in order
    hf_pieces: list[str] = []
    for index, text in enumerate(texts):
        cuts = _piece_starts(text, setup) if setup.pieces and len(text) > PIECE_CHARS else [0]
        bounds = list(zip(cuts, [*cuts[1:], len(text)]))
        pieces = [text[a:b] for a, b in bounds] if len(bounds) > 1 else [text]
        k = 0
        while k < len(pieces):
            m = k + 1
            if fast is not None and pieces[k].isascii():
                while m < len(pieces) and pieces[m].isascii():
                    m += 1
                run = pieces[k] if m == k + 1 else text[bounds[k][0] : bounds[m - 1][1]]
                record = _ascii_words(fast, setup.runs, run)
                if record is not None:
                    parts.append((index, bounds[k][0], record))
                    k = m
                    continue
            for q in range(k, m):  # piece by piece: some of the run may still suit the fast path
                record = _ascii_words(fast, setup.runs, pieces[q]) if fast is not None and m > k + 1 else None
                if record is None:
                    parts.append((index, bounds[q][0], len(hf_pieces)))
                    hf_pieces.append(pieces[q])
                else:
                    parts.append((index, bounds[q][0], record))
            k = m
    hf_records = _hf_words(setup.tokenizer, hf_pieces) if hf_pieces else []
    done = [r if isinstance(r, _Record) else hf_records[r] for _, _, r in parts]
    shifts = [shift for _, shift, _ in parts]
    words_per_text = [0] * len(texts)
    for record, (text_index, _, _) in zip(done, parts):
        words_per_text[text_index] += len(record.sizes)
    if not done:
        empty = np.zeros(0, dtype=np.int64)
        done, shifts = [_Record(empty, empty, empty, empty)], [0]
    ids = np.concatenate([r.ids for r in done])
    sizes = np.concatenate([r.sizes for r in done])
    shift_per_word = np.repeat(np.asarray(shifts, dtype=np.int64), [len(r.sizes) for r in done])
    word_starts = np.concatenate([r.starts for r in done]) + shift_per_word
    word_ends = np.concatenate([r.ends for r in done]) + shift_per_word
    total = len(ids)
    first = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=first[1:])
    text_words = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(words_per_text, out=text_words[1:])
    bounds = text_words.tolist()
    for index, text in enumerate(texts):
        lo, hi = bounds[index], bounds[index + 1]
        if lo < hi and not text.isascii():
            _take_marks(text, word_starts[lo:hi], word_ends[lo:hi])
    if setup.whole_words:  # words that must not be parted become one unit
        keep = np.ones(len(word_starts), dtype=bool)
        for index, text in enumerate(texts):
            lo, hi = bounds[index], bounds[index + 1]
            if hi - lo > 1:
                keep[lo + 1 : hi] = _separable(text, word_starts[lo:hi], word_ends[lo:hi], setup)
        if not keep.all():
            units = np.flatnonzero(keep)
            word_ends = word_ends[np.append(units[1:], len(keep)) - 1]
            word_starts = word_starts[units]
            first = np.append(first[units], total)
            text_words = np.searchsorted(units, text_words)
    unk = tokenizer.unk_id
    known = ids != unk if unk is not None else np.ones(total, dtype=bool)
    known_before = np.zeros(total + 1, dtype=np.int64)
    np.cumsum(known, out=known_before[1:])
    return _Words(
        ids=ids,
        first=first,
        word_starts=word_starts,
        word_ends=word_ends,
        text_words=text_words,
        known_before=known_before,
        known_ids=ids[known].astype(np.int32),
    )


@dataclass(frozen=True)
class _Record:
    """One text's tokens by word: ids, tokens per word, each word's character span."""

    ids: np.ndarray  # int64 (tokens)
    sizes: np.ndarray  # int64 (words)
    starts: np.ndarray  # int64 (words)
    ends: np.ndarray  # int64 (words)


def _hf_words(tokenizer: Tokenizer, texts: Sequence[str]) -> list[_Record]:
    """The tokenizer's own tokens, grouped by its word ids, with each word's span from its tokens' offsets."""
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    total = int(lengths.sum())
    ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int64, count=total)
    offsets = np.fromiter(
        chain.from_iterable(chain.from_iterable(e.offsets for e in encodings)), dtype=np.int64, count=2 * total
    ).reshape(total, 2)
    # None (a token outside any word) becomes NaN, which differs from everything: a word of its own.
    word_ids = np.array(list(chain.from_iterable(e.word_ids for e in encodings)), dtype=np.float64)
    new_word = np.ones(total, dtype=bool)
    if total > 1:
        np.not_equal(word_ids[1:], word_ids[:-1], out=new_word[1:])
    text_first = np.zeros(len(encodings) + 1, dtype=np.int64)
    np.cumsum(lengths, out=text_first[1:])
    new_word[text_first[:-1][lengths > 0]] = True  # each text starts a word
    first = np.append(np.flatnonzero(new_word), total)
    sizes = np.diff(first)
    starts = offsets[first[:-1], 0]
    ends = offsets[first[1:] - 1, 1]
    bounds = text_first.tolist()
    text_words = np.searchsorted(first[:-1], bounds).tolist()
    return [
        _Record(ids[bounds[t] : bounds[t + 1]], *(a[text_words[t] : text_words[t + 1]] for a in (sizes, starts, ends)))
        for t in range(len(texts))
    ]


def _ascii_words(fast: _AsciiWordPiece, runs: dict[str, _Run], text: str) -> _Record | None:
    """The same as `_hf_words` for a text the tokenizer's ASCII fast path takes, at its speed; None for others.

    Printable ASCII (plus tab, newline, carriage return) with no added token in it: BertPreTokenizer's words are
    the runs of letters and digits and each punctuation character (their spans found here with numpy), and each
    whitespace-free run's ids and tokens per word are cached as the fast path caches its ids.
    """
    if not text.isascii() or (fast._added is not None and fast._added.search(text)):
        return None
    classes = _ASCII_CLASSES[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    if len(classes) and classes.max() == 3:  # control characters: the normalizer deletes them, joining words
        return None
    alnum = classes == 1
    joined = alnum[1:] & alnum[:-1]  # letters and digits continuing a word
    starts = classes != 0
    ends = starts.copy()
    starts[1:] &= ~joined
    ends[:-1] &= ~joined
    lowered = text.lower() if fast._lower else text
    if fast._phrases and fast._head in lowered and fast._holds_phrase(_ASCII_WORD_RE.findall(lowered)):
        return None
    if len(runs) > _WORD_CACHE_LIMIT:
        runs.clear()
    if len(fast._cache) > _WORD_CACHE_LIMIT:
        fast._cache.clear()
    chunks = lowered.split()
    entries = list(map(runs.get, chunks))
    if None in entries:
        entries = [entry or _run(fast, runs, chunk) for entry, chunk in zip(entries, chunks)]
    sizes = np.fromiter(chain.from_iterable(map(itemgetter(1), entries)), dtype=np.int64)
    ids = np.fromiter(chain.from_iterable(map(itemgetter(0), entries)), dtype=np.int64, count=int(sizes.sum()))
    word_starts, word_ends = np.flatnonzero(starts), np.flatnonzero(ends) + 1
    if len(sizes) != len(word_starts):  # (cannot happen: the two splits are the same)
        return None
    return _Record(ids, sizes, word_starts, word_ends)


_Run = tuple[tuple[int, ...], tuple[int, ...]]  # a whitespace-free run's ids, and tokens per word


def _run(fast: _AsciiWordPiece, runs: dict[str, _Run], chunk: str) -> _Run:
    pieces = [fast._cache.get(word) or fast._chunk_ids(word) for word in _ASCII_WORD_RE.findall(chunk)]
    entry = runs[chunk] = (tuple(chain.from_iterable(pieces)), tuple(map(len, pieces)))
    return entry


def _take_marks(text: str, starts: np.ndarray, ends: np.ndarray) -> None:
    """Extend word ends (in place) over the combining marks right after them that no token's offsets cover.

    A composing normalizer (NFC, NFKC) makes "e" + U+0301 one "é" whose offsets cover the "e" alone: a chunk
    ending there must keep the mark, or its text would tokenize to "e". A mark some token covers stays its own.
    """
    nexts = np.append(starts[1:], len(text))
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    gaps = np.flatnonzero((ends < nexts) & (codes[np.minimum(ends, len(text) - 1)] >= 0x300))
    for word in gaps.tolist():
        end, stop = int(ends[word]), int(nexts[word])
        while end < stop and unicodedata.category(text[end]).startswith("M"):
            end += 1
        ends[word] = end


def _separable(text: str, starts: np.ndarray, ends: np.ndarray, setup: _Setup) -> np.ndarray:
    """For each pair of consecutive words, whether a chunk may end after the first and one start at the second.

    Where the chunk's text alone could match an added token the whole text does not, they may not (only tokens
    that match as whole words, `single_word`, are a risk: a failed candidate hides any match overlapping it):
    * a word that begins or continues a multi-word added token ("not" of "not good"), then a single whitespace:
      a candidate failing across the cut can hide a match the chunk after it would make ("not not good":
      "not no", followed by a letter, hides "not good");
    * for `single_word` tokens, which match only where no word character (regex `\\w`) touches them: a word
      character on one side, on the other a character such a token starts (ends) with, no whitespace between
      ("_not good" matches nothing, "not good" alone does). Non-ASCII characters count as word characters that
      any token may start or end with, since a normalizer may turn them into anything.
    """
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    ascii_codes = np.minimum(codes, 127)
    wide = codes >= 128
    space = np.where(wide, np.isin(codes, _UNICODE_SPACES), _ASCII_SPACE[ascii_codes])
    spaces_before = np.zeros(len(codes) + 1, dtype=np.int64)
    np.cumsum(space, out=spaces_before[1:])
    last, first = ends[:-1] - 1, starts[1:]  # the first word's last character, the second word's first
    spaces = spaces_before[first] - spaces_before[last + 1]
    ok = np.ones(len(first), dtype=bool)
    if setup.whole_words and setup.inner is not None:
        # The whitespace after each inner word, counted up to each position: one in the gap, or starting the
        # second word (Metaspace), may be the middle of a match. (Matches overlapping a found one would end at the
        # same whitespace: non-overlapping search finds every such position.)
        marked = np.zeros(len(codes) + 1, dtype=np.int64)
        marked[[m.end(2) for m in setup.inner.finditer(text)]] = 1
        inner_before = np.zeros(len(codes) + 2, dtype=np.int64)
        np.cumsum(marked, out=inner_before[1:])
        ok &= ~((inner_before[first + 1] > inner_before[last + 1]) & (spaces <= 1))
    if setup.whole_words:
        wordish = ~space & (wide | _ASCII_WORD[ascii_codes])
        may_start = wide[first] | setup.whole_word_starts[ascii_codes[first]]  # type: ignore[index]
        may_end = wide[last] | setup.whole_word_ends[ascii_codes[last]]  # type: ignore[index]
        start_ok = space[first] | ~wordish[last] | ~may_start
        end_ok = space[last] | ~wordish[first] | ~may_end
        ok &= (spaces > 0) | (start_ok & end_ok)
    return ok
