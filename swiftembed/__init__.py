"""SwiftEmbed: sentence embeddings by static token lookup, served on Ray Serve."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Chunk", "Embedder", "ModelError", "StaticModel", "load_model", "__version__"]

if TYPE_CHECKING:
    from swiftembed.core.chunking import Chunk
    from swiftembed.core.embedder import Embedder
    from swiftembed.core.model import ModelError, StaticModel, load_model


def __getattr__(name: str) -> Any:
    """Imported on first use: `swiftembed-haproxy` runs on every HAProxy (re)start and needs none of numpy's cost."""
    if name == "Embedder":
        from swiftembed.core.embedder import Embedder

        return Embedder
    if name == "Chunk":
        from swiftembed.core.chunking import Chunk

        return Chunk
    if name in ("ModelError", "StaticModel", "load_model"):
        from swiftembed.core import model

        return getattr(model, name)
    raise AttributeError(f"module 'swiftembed' has no attribute {name!r}")
