"""Text to token ids exactly as model2vec's `StaticModel.encode` does it, in the flat form the kernel wants.

The recipe: cut each text to `max_tokens * median_token_length` characters, tokenize without special tokens,
padding or any truncation from `tokenizer.json` except `max_tokens`, then drop the unknown-token id.

The HF tokenizer is the throughput floor of the whole service, so BERT-style WordPiece tokenizers get a fast
path for pure-ASCII text: the normalizer and pre-tokenizer reduce to one `str.translate` and `str.split`, and
each word's WordPiece ids come from a bounded cache. Anything the fast path does not model exactly (non-ASCII
text, text that may contain an added token, other tokenizer types) goes to the real tokenizer. Differential
tests against the real tokenizer keep the two identical.
"""

from __future__ import annotations

import copy
import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, chain
from typing import Any

import numpy as np
from tokenizers import Tokenizer

# Every ASCII control character but tab, newline and carriage return: BertNormalizer(clean_text) deletes them.
_ASCII_CONTROLS = [c for c in range(32) if chr(c) not in "\t\n\r"] + [127]
_WORD_CACHE_LIMIT = 1 << 18
# Multi-word added tokens by first word, then second word: the rest of each one's words.
Phrases = dict[str, dict[str, set[tuple[str, ...]]]]


@dataclass(frozen=True)
class TokenBatch:
    """Token ids of many texts in CSR form: text i owns `ids[offsets[i]:offsets[i + 1]]`."""

    ids: np.ndarray  # int32, all texts' ids back to back
    offsets: np.ndarray  # int64, len(texts) + 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def to_lists(self) -> list[list[int]]:
        ids = self.ids.tolist()
        bounds = self.offsets.tolist()
        return [ids[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def select(self, start: int, stop: int) -> TokenBatch:
        """Texts `start:stop` as their own batch, sharing the ids buffer."""
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        return TokenBatch(self.ids[lo:hi], self.offsets[start : stop + 1] - lo)

    @classmethod
    def from_lists(cls, id_lists: Sequence[Sequence[int]]) -> TokenBatch:
        if len(id_lists) <= 16:  # a request's worth: plain Python beats numpy's per-call overhead
            offsets = np.array([0, *accumulate(map(len, id_lists))], dtype=np.int64)
            return cls(np.array(list(chain.from_iterable(id_lists)), dtype=np.int32), offsets)
        lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
        offsets = np.zeros(len(id_lists) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter(chain.from_iterable(id_lists), dtype=np.int32, count=int(offsets[-1]))
        return cls(ids, offsets)


class TextTokenizer:
    """model2vec's tokenization recipe around a `tokenizers.Tokenizer`, with an exact ASCII fast path."""

    def __init__(
        self, tokenizer: Tokenizer, max_tokens: int | None, *, fast_path: bool = True, in_place: bool = False
    ) -> None:
        """`in_place` configures `tokenizer` itself rather than a copy (~10 MB less for a BERT vocabulary), for an
        owner that uses it nowhere else."""
        self._tokenizer = tokenizer if in_place else copy.deepcopy(tokenizer)
        self._tokenizer.no_padding()
        if max_tokens is None:
            self._tokenizer.no_truncation()
        else:
            self._tokenizer.enable_truncation(max_tokens)
        self.max_tokens = max_tokens
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.unk_id = _unk_token_id(self._tokenizer)
        tokens = sorted(self._tokenizer.get_vocab().items(), key=lambda item: item[1])
        self.median_token_length = int(np.median([len(token) for token, _ in tokens]))
        self.max_chars = None if max_tokens is None else max_tokens * self.median_token_length
        self._fast = _AsciiWordPiece.build(self._tokenizer, self.unk_id) if fast_path else None

    @property
    def has_fast_path(self) -> bool:
        return self._fast is not None

    def encode(self, texts: Sequence[str]) -> TokenBatch:
        """Token ids of `texts`, ready for pooling (unknown tokens dropped, truncated to `max_tokens`)."""
        batch = TokenBatch.from_lists(self._truncated(texts))
        return batch if self.unk_id is None else _drop_id(batch, self.unk_id)

    def id_lists(self, texts: Sequence[str]) -> list[list[int]]:
        """What `encode` gives, as Python lists: cheaper than arrays for the few texts of a small request."""
        id_lists = self._truncated(texts)
        unk = self.unk_id
        if unk is not None:
            for index, ids in enumerate(id_lists):  # a loop, not comprehensions: most texts have no unknown token
                if unk in ids:
                    id_lists[index] = [i for i in ids if i != unk]
        return id_lists

    def _truncated(self, texts: Sequence[str]) -> list[list[int]]:
        cut = self.max_chars
        if cut is not None:
            for text in texts:
                if len(text) > cut:
                    texts = [t[:cut] for t in texts]
                    break
        if self._fast is None:
            return self._slow(texts)
        id_lists, pending = self._fast.encode(texts, self.max_tokens)
        if pending:
            for index, ids in zip(pending, self._slow([texts[i] for i in pending])):
                id_lists[index] = ids
        return id_lists

    def from_ids(self, id_lists: Sequence[Sequence[int]]) -> TokenBatch:
        """Caller-given token ids, treated as tokenized text is: truncated to `max_tokens`, unknown id dropped."""
        limit = self.max_tokens
        batch = TokenBatch.from_lists([ids if limit is None else ids[:limit] for ids in id_lists])
        if len(batch.ids) and (batch.ids.min() < 0 or batch.ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        return batch if self.unk_id is None else _drop_id(batch, self.unk_id)

    def _slow(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [encoding.ids for encoding in self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Per-text token id lists, as `StaticModel.tokenize` would give them after truncation."""
        return self.id_lists(texts)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tokenizer.id_to_token(token_id)


def _drop_id(batch: TokenBatch, token_id: int) -> TokenBatch:
    keep = batch.ids != token_id
    if len(keep) < 64:
        if token_id not in batch.ids.tolist():
            return batch
    elif keep.all():
        return batch
    kept = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(keep, out=kept[1:])
    return TokenBatch(batch.ids[keep], kept[batch.offsets])


def _unk_token_id(tokenizer: Tokenizer) -> int | None:
    """The id model2vec drops, found the way model2vec finds it."""
    model = tokenizer.model
    if hasattr(model, "unk_token"):
        token = model.unk_token
        return None if token is None else tokenizer.token_to_id(token)
    unk = json.loads(tokenizer.to_str())["model"].get("unk_id")
    return None if unk is None else int(unk)


class _AsciiWordPiece:
    """BertNormalizer + BertPreTokenizer + WordPiece, for pure-ASCII text only.

    For ASCII input BertNormalizer deletes control characters, turns tab/newline/CR into spaces and
    lower-cases; accent stripping and CJK spacing cannot apply. BertPreTokenizer then splits on spaces and
    isolates each ASCII punctuation character. One translate table does all of that.
    """

    def __init__(
        self,
        vocab: dict[str, int],
        unk_id: int,
        prefix: str,
        max_word_chars: int,
        lowercase: bool,
        added: re.Pattern[str] | None,
        phrases: Phrases | None = None,
    ) -> None:
        self._vocab = vocab
        self._unk = (unk_id,)
        self._prefix = prefix
        self._max_word_chars = max_word_chars
        self._added = added
        self._phrases = phrases or {}
        # A text can only hold a phrase if it holds its first word: when all phrases share one ("not"), a substring
        # test on the normalized text rules most texts out for less than a set lookup per word would cost.
        self._head = next(iter(self._phrases)) if len(self._phrases) == 1 else ""
        self._table = _ascii_table(lowercase)
        self._lower = lowercase
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def build(cls, tokenizer: Tokenizer, unk_id: int | None) -> _AsciiWordPiece | None:
        """The fast path if this tokenizer is one it reproduces exactly, else None."""
        spec = json.loads(tokenizer.to_str())
        normalizer, pre, model = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}, spec["model"]
        if (
            normalizer.get("type") != "BertNormalizer"
            or not normalizer.get("clean_text", False)
            or pre.get("type") != "BertPreTokenizer"
            or model.get("type") != "WordPiece"
            or unk_id is None
            or model.get("unk_token") not in model["vocab"]
        ):
            return None
        lowercase = bool(normalizer.get("lowercase", True))
        table = _ascii_table(lowercase=True)
        added, phrases = [], {}
        for token in spec.get("added_tokens", []):
            content = token["content"]
            words = content.translate(table).split() if content.isascii() else []
            if token.get("single_word") and len(words) > 1 and not token.get("special"):
                phrases.setdefault(words[0], {}).setdefault(words[1], set()).add(tuple(words[2:]))
            elif content:
                added.append(content)
        pattern = re.compile("|".join(map(re.escape, added)), re.IGNORECASE) if added else None
        return cls(
            vocab=dict(model["vocab"]),
            unk_id=unk_id,
            prefix=model.get("continuing_subword_prefix") or "##",
            max_word_chars=int(model.get("max_input_chars_per_word", 100)),
            lowercase=lowercase,
            added=pattern,
            phrases=phrases,
        )

    def encode(self, texts: Sequence[str], max_tokens: int | None) -> tuple[list[list[int]], list[int]]:
        """Ids for each ASCII text, and the indices of texts left for the real tokenizer.

        Printable ASCII (no control character to delete) is split on spaces only, and each chunk ("hat", "0.")
        looked up whole: punctuation is isolated once per new chunk, not per text. str.translate over the
        whole text costs ~50 ns a character, more than the rest of the tokenization.
        """
        table, cache, chunk_ids, added, phrases = self._table, self._cache, self._chunk_ids, self._added, self._phrases
        head, lower = self._head, self._lower
        if len(cache) > _WORD_CACHE_LIMIT:
            cache.clear()
        out: list[list[int]] = []
        pending: list[int] = []
        for index, text in enumerate(texts):
            if not text.isascii() or (added is not None and added.search(text)):
                pending.append(index)
                out.append([])
                continue
            lowered = text.lower() if lower else text
            if text.isprintable() and not (phrases and (head in lowered if head else True)):
                chunks = lowered.split()
            else:  # control characters to delete, or maybe a phrase: the words as BertPreTokenizer splits them
                chunks = text.translate(table).split()
                if phrases and self._holds_phrase(chunks):
                    pending.append(index)
                    out.append([])
                    continue
            ids: list[int] = []
            for chunk in chunks:
                hit = cache.get(chunk)
                ids.extend(hit if hit is not None else chunk_ids(chunk))
            if max_tokens is not None and len(ids) > max_tokens:
                del ids[max_tokens:]
            out.append(ids)
        return out, pending

    def _holds_phrase(self, words: list[str]) -> bool:
        return not self._phrases.keys().isdisjoint(words) and _has_phrase(words, self._phrases)

    def _chunk_ids(self, chunk: str) -> tuple[int, ...]:
        """A space-free run's ids, cached: its words after BertPreTokenizer, each through WordPiece."""
        if chunk.isalnum():
            ids = self._wordpiece(chunk)
        else:
            ids = tuple(i for word in chunk.translate(self._table).split() for i in self._wordpiece(word))
        self._cache[chunk] = ids
        return ids

    def _wordpiece(self, word: str) -> tuple[int, ...]:
        if len(word) > self._max_word_chars:
            return self._unk
        vocab, prefix = self._vocab, self._prefix
        ids: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else prefix + word[start:end]
                token_id = vocab.get(piece)
                if token_id is not None:
                    ids.append(token_id)
                    break
                end -= 1
            else:
                return self._unk
            start = end
        return tuple(ids)


def _has_phrase(words: list[str], phrases: Phrases) -> bool:
    """Whether a multi-word added token ("not good", matched by the tokenizer only as whole words) may occur.

    Such a token can only match where its own words (split as the fast path splits) follow each other in the
    text's words, so looking them up here finds every text the real tokenizer must see: a regex over thousands of
    phrases costs ~100 us per text, this a set lookup per word. A false alarm only costs the real tokenizer.
    """
    for i, word in enumerate(words[:-1]):
        seconds = phrases.get(word)
        rests = seconds.get(words[i + 1]) if seconds is not None else None
        if rests is not None and any(tuple(words[i + 2 : i + 2 + len(rest)]) == rest for rest in rests):
            return True
    return False


def _ascii_table(lowercase: bool) -> dict[int, Any]:
    """BertNormalizer + BertPreTokenizer on ASCII as one str.translate table (then str.split)."""
    table: dict[int, Any] = {c: None for c in _ASCII_CONTROLS}
    table.update({ord(c): " " for c in "\t\n\r"})
    table.update({ord(c): f" {c} " for c in string.punctuation})
    if lowercase:
        table.update({ord(c): c.lower() for c in string.ascii_uppercase})
    return table
