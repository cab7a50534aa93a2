"""SwiftEmbed: sentence embeddings by static token lookup, served on Ray Serve."""

from swiftembed.embedder import Embedder
from swiftembed.model import ModelError, StaticModel, load_model

__version__ = "0.1.0"
__all__ = ["Embedder", "ModelError", "StaticModel", "load_model", "__version__"]
