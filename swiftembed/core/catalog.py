"""The models one service serves, by name: each answers to its short name and to its full id.

A request's `model` is resolved here once; from then on the data path carries the `Served` model: its short name
(the batching group and the metric label), its full id (what answers report) and its Embedder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

from swiftembed.core.embedder import Embedder
from swiftembed.core.model import StaticModel, load_model

# What a service serves when not told otherwise; the first is the default model.
BUNDLED: tuple[str, ...] = ("potion-base-8M", "swiftembed-potion-sts-8M")

# (model, where it came from) -> the model's float32 table: e.g. a zero-copy view from Ray's object store.
TableSource = Callable[[StaticModel, "str | None"], np.ndarray]


class Served(NamedTuple):
    name: str  # short name: the last part of the full id, or the name given as NAME=SOURCE
    model_id: str  # full id, as answers report it
    embedder: Embedder


class UnknownModel(KeyError):
    def __init__(self, name: str, served: Sequence[str]) -> None:
        super().__init__(name)
        self.name, self.served = name, list(served)

    def __str__(self) -> str:
        name = self.name if len(self.name) <= 80 else self.name[:80] + "..."
        return f"model {name!r} is not served here; served: {', '.join(self.served)}"


def parse_spec(spec: str | None) -> tuple[str | None, str | None]:
    """`NAME=SOURCE` serves SOURCE (a directory, bundled name or Hub id) as NAME; a bare SOURCE keeps its name."""
    if spec is None:
        return None, None
    name, sep, source = spec.partition("=")
    if sep and name and "/" not in name and source:
        return name, source
    return None, spec


def short_name(model_id: str) -> str:
    return model_id.rstrip("/").rsplit("/", 1)[-1]


class Catalog:
    """The served models, in order; the default answers requests that name no model."""

    def __init__(self, served: Sequence[Served], default: str | None = None) -> None:
        if not served:
            raise ValueError("a service needs at least one model")
        self.models: dict[str, Served] = {}
        # Every name a request may give (short name, full id; None: the default): one dict lookup per request.
        self.names: dict[str | None, Served] = {}
        for model in served:
            for name in dict.fromkeys((model.name, model.model_id)):
                other = self.names.setdefault(name, model)
                if other is not model:
                    raise ValueError(f"two models answer to {name!r}: {other.model_id} and {model.model_id}; "
                                     "serve one of them under another name (NAME=SOURCE)")
            self.models[model.name] = model
        self.default = self.names[None] = served[0] if default is None else self.get(default)

    @classmethod
    def of(cls, *embedders: Embedder) -> Catalog:
        """Embedders under their own names, the first the default."""
        return cls([Served(short_name(e.model_id), e.model_id, e) for e in embedders])

    @classmethod
    def load(
        cls,
        specs: Sequence[str | None] | None = None,
        *,
        default: str | None = None,
        max_tokens: int | None = -1,
        table: TableSource | None = None,
    ) -> Catalog:
        """Load every model of `specs` (default: the bundled ones; a None spec is the vendored default model).
        `table` supplies each float32 table, e.g. a shared one, instead of the copy read from disk."""
        served = []
        for spec in specs or BUNDLED:
            name, source = parse_spec(spec)
            model = load_model(source)
            if table is not None:
                shared = table(model, source)
                model = model.with_embeddings(shared)  # drop the private copy read from disk
                embedder = Embedder(model, max_tokens=max_tokens, table=shared, own_tokenizer=True)
            else:
                embedder = Embedder(model, max_tokens=max_tokens, own_tokenizer=True)
            served.append(Served(name or short_name(model.model_id), model.model_id, embedder))
        return cls(served, default)

    def get(self, name: str | None) -> Served:
        """The model answering to `name` (its short name or full id); None is the default."""
        model = self.names.get(name)
        if model is None:
            raise UnknownModel(name, list(self.models))
        return model

    def __iter__(self) -> Iterator[Served]:
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)
