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
        path = root / f"data.{part}"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: install Debian's wordnet-base (apt-get install wordnet-base)")
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("  ") or " | " not in line:  # the licence header
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
