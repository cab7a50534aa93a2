"""English training text that a package registry really provides: WordNet 3.0 from Debian's `wordnet-base`.

`apt-get install wordnet-base` puts the database in /usr/share/wordnet (licence: the WordNet 3.0 licence, a
permissive BSD-style one; /usr/share/doc/wordnet-base/copyright). Each synset line ends in a gloss: one or more
definitions and, in double quotes, example sentences written by lexicographers. Both are short, varied English,
which is what a static model needs more of: the definitions cover 117,000 senses in plain words, and the
examples show words in use ("he ran across the street").
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
PARTS = ("noun", "verb", "adj", "adv")
_QUOTED = re.compile(r'"([^"]{12,300})"')


def wordnet_sentences(root: Path = WORDNET_DIR) -> Iterator[str]:
    """Every gloss definition and quoted example, in file order (duplicates included)."""
    for part in PARTS:
        for line in _records(root / f"data.{part}"):
            if " | " not in line:
                continue
            gloss = line.split(" | ", 1)[1].strip()
            definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
            if len(definition) >= 12:
                yield definition
            yield from (example.strip() for example in _QUOTED.findall(gloss))


def sample_sentences(count: int, seed: int, exclude: set[str] = frozenset(), root: Path = WORDNET_DIR) -> list[str]:
    """`count` distinct sentences drawn with `seed` (none in `exclude`), in a stable order."""
    unique = sorted(set(wordnet_sentences(root)) - exclude)
    rng = random.Random(seed)
    return rng.sample(unique, min(count, len(unique)))


def wordnet_antonyms(root: Path = WORDNET_DIR) -> dict[str, list[str]]:
    """The antonyms of each one-word adjective or verb in its most frequent sense that has any.

    ("good" -> ["bad"], "open" -> ["closed"], "pass" -> ["fail"]). WordNet stores antonyms as `!` pointers
    between word senses (`src/tgt`: two hex digits each, numbering the word in the pointing synset and in the
    target synset); `index.*` lists a word's senses most frequent first. Adjectives are tried before verbs.
    """
    antonyms: dict[str, list[str]] = {}
    for part in ("adj", "verb"):
        synsets = dict(_synsets(root / f"data.{part}"))
        for word, offsets in _senses(root / f"index.{part}"):
            if word in antonyms or not _ONE_WORD.fullmatch(word):
                continue
            for offset in offsets:
                words, pointers = synsets[offset]
                found = sorted({
                    synsets[target][0][int(st[2:], 16) - 1]
                    for symbol, target, st in pointers
                    if symbol == "!" and target in synsets and int(st[:2], 16) - 1 < len(words)
                    and words[int(st[:2], 16) - 1] == word and int(st[2:], 16)
                })
                found = [a for a in found if _ONE_WORD.fullmatch(a)]
                if found:
                    antonyms[word] = found
                    break
    return dict(sorted(antonyms.items()))


def _senses(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(lemma, synset offsets, most frequent sense first) per line of an index file."""
    for line in _records(path):
        fields = line.split()
        count = int(fields[2])
        yield fields[0].lower(), fields[-count:]


_ONE_WORD = re.compile(r"[a-z]+")


def _synsets(path: Path) -> Iterator[tuple[str, tuple[list[str], list[tuple[str, str, str]]]]]:
    """(offset, (words, pointers as (symbol, target offset, source/target))) per synset line of a data file."""
    for line in _records(path):
        fields = line.split(" | ", 1)[0].split()
        count = int(fields[3], 16)
        # A word may carry a syntactic marker: "long(a)".
        words = [fields[4 + 2 * i].lower().split("(", 1)[0] for i in range(count)]
        at = 4 + 2 * count
        pointers = [(fields[at + 1 + 4 * i], fields[at + 2 + 4 * i], fields[at + 4 + 4 * i])
                    for i in range(int(fields[at]))]
        yield fields[0], (words, pointers)


def _records(path: Path) -> Iterator[str]:
    """The lines of a WordNet data or index file, without the licence header (its lines start with two spaces)."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: install Debian's wordnet-base (apt-get install wordnet-base)")
    with path.open(encoding="utf-8", errors="replace") as handle:
        yield from (line for line in handle if not line.startswith("  "))


FORTUNES_DIR = Path("/usr/share/games/fortunes")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_PLAIN = re.compile(r"[A-Za-z][A-Za-z ,;:'\"()\-.!?]{10,298}[A-Za-z.!?\"')]")


def fortune_sentences(root: Path = FORTUNES_DIR) -> Iterator[str]:
    """Sentences of Debian's `fortunes` (BSD licence): quotations, jokes, literature, in everyday registers.

    WordNet's glosses are dictionary prose; these add opinion, humour and conversation, the registers a general
    model meets. Each fortune is split at sentence ends; attributions ("-- Mark Twain"), ASCII art, code and
    very short pieces are dropped.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is missing: install Debian's fortunes (apt-get install fortunes)")
    for path in sorted(p for p in root.iterdir() if p.is_file() and not p.suffix):
        text = path.read_text(encoding="utf-8", errors="replace").replace("\x08", "")
        for fortune in text.split("\n%\n"):
            lines = [line.strip() for line in fortune.splitlines() if not line.strip().startswith("--")]
            for sentence in _SENTENCE_END.split(" ".join(line for line in lines if line)):
                sentence = " ".join(sentence.split())
                if _PLAIN.fullmatch(sentence) and len(sentence.split()) >= 3:
                    yield sentence


def wordnet_lemmas(root: Path = WORDNET_DIR) -> list[str]:
    """Every distinct WordNet lemma ("dog", "kick the bucket"), spaces for underscores, sorted.

    Words and collocations alone: the teacher's vector of a word by itself is the clearest target for its row.
    """
    lemmas: set[str] = set()
    for part in PARTS:
        for line in _records(root / f"index.{part}"):
            lemmas.add(line.split(" ", 1)[0].replace("_", " "))
    return sorted(lemmas)
