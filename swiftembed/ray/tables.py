"""One copy of each model's token table per node: Ray's object store, read zero-copy by every replica and actor.

The table is `ray.put` once by a detached owner actor per model checksum, so it outlives whatever built the
application (under `serve deploy` and KubeRay the builder runs in a short-lived task, and an object it puts dies
with it). Readers get a read-only view of their node's copy; if the owner is gone they start a new one, and if that
fails they fall back to their own copy from disk. Used by the Serve deployment and the Ray Data bulk job alike.
"""

from __future__ import annotations

import logging

import numpy as np
import ray

from swiftembed.core.model import StaticModel, load_model

log = logging.getLogger("ray.serve")

NAMESPACE = "swiftembed"


@ray.remote(num_cpus=0, max_restarts=0)
class TableOwner:
    """Owns the object-store copy of one model's float32 table; detached, named by the model's checksum."""

    def __init__(self, source: str | None) -> None:
        model = load_model(source)
        self.checksum = model.checksum
        self.ref = ray.put(np.ascontiguousarray(model.embeddings, dtype=np.float32))

    def table(self) -> tuple[str, list[ray.ObjectRef]]:
        return self.checksum, [self.ref]  # in a list, so Ray hands over the reference, not the array


def owner_name(checksum: str) -> str:
    return f"table-{checksum[:24]}"


def shared_table(model: StaticModel, source: str | None, timeout_s: float = 120.0) -> tuple[np.ndarray, str]:
    """The model's float32 table as a zero-copy, read-only view from the object store (or a private copy), and
    where it came from: `object_store` or `private`."""
    name = owner_name(model.checksum)
    for attempt in (1, 2):
        owner = None
        try:
            owner = TableOwner.options(  # type: ignore[attr-defined]
                name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
            ).remote(source)
            checksum, (ref,) = ray.get(owner.table.remote(), timeout=timeout_s)
            if checksum != model.checksum:
                raise RuntimeError(f"owner {name} holds checksum {checksum}, expected {model.checksum}")
            table = ray.get(ref, timeout=timeout_s)
            return table, "object_store"
        except Exception as exc:  # owner died, its object was lost, or it could not load the model
            log.warning("shared table attempt %d for %s failed: %s", attempt, name, exc)
            if owner is not None:
                try:
                    ray.kill(owner)
                except Exception:
                    pass
    log.warning("serving %s from a private copy of its table", model.model_id)
    return np.ascontiguousarray(model.embeddings, dtype=np.float32), "private"


class SharedTables:
    """A `TableSource` for `Catalog.load`: every model's table through `shared_table`, remembering where each
    came from (by checksum)."""

    def __init__(self) -> None:
        self.sources: dict[str, str] = {}

    def __call__(self, model: StaticModel, source: str | None) -> np.ndarray:
        table, self.sources[model.checksum] = shared_table(model, source)
        return table
