"""Loading model2vec-format static models: the token table, optional weights/mapping, tokenizer, config.

A model is plain data (numpy arrays plus a `tokenizers.Tokenizer`), so the Ray layer can put the table in the
object store and rebuild the same model around a zero-copy view of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

MODELS_DIR = Path(__file__).parent.parent / "models"
DEFAULT_MODEL_DIR = MODELS_DIR / "potion-base-8M"
DEFAULT_MODEL_ID = "minishlab/potion-base-8M"
DEFAULT_MAX_TOKENS = 512

# (tensor file, config, tokenizer, embedding tensor name) for the layouts model2vec itself reads.
_LAYOUTS: tuple[tuple[str, str, str, str], ...] = (
    ("model.safetensors", "config.json", "tokenizer.json", "embeddings"),
    ("model.safetensors", "config_sentence_transformers.json", "tokenizer.json", "embedding.weight"),
    (
        "0_StaticEmbedding/model.safetensors",
        "config_sentence_transformers.json",
        "0_StaticEmbedding/tokenizer.json",
        "embedding.weight",
    ),
)
_TABLE_DTYPES = (np.float32, np.float16, np.float64, np.int8)


class ModelError(ValueError):
    """A model directory or Hub id that cannot be loaded; the message says exactly what is wrong."""


@dataclass(frozen=True)
class StaticModel:
    """A loaded static model.

    `embeddings` is the table as stored (float32, float16 or int8). For vocabulary-quantized models a token's
    row is `embeddings[mapping[id]] * weights[id]`; otherwise `embeddings[id]` (times `weights[id]` if given).
    """

    model_id: str
    path: Path
    embeddings: np.ndarray
    tokenizer: Tokenizer
    config: dict[str, Any]
    checksum: str
    weights: np.ndarray | None = None
    mapping: np.ndarray | None = None
    stored_dtype: str = ""  # set once the table is replaced by its float32 widening

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    @property
    def normalize(self) -> bool:
        """model2vec's default when `config.json` is silent is not to normalize."""
        return bool(self.config.get("normalize", False))

    @property
    def max_tokens(self) -> int | None:
        value = self.config.get("max_length", DEFAULT_MAX_TOKENS)
        return None if value is None else int(value)

    @property
    def table_dtype(self) -> str:
        """The table's dtype as stored on disk (float16 and int8 tables are widened when shared)."""
        return self.stored_dtype or str(self.embeddings.dtype)

    def with_embeddings(self, embeddings: np.ndarray) -> StaticModel:
        """The same model around another copy of its table, or its float32 widening (e.g. a zero-copy view from Ray's
        object store): the copy read from disk can then be freed, whatever its dtype."""
        if embeddings.shape != self.embeddings.shape or embeddings.dtype not in (self.embeddings.dtype, np.float32):
            raise ModelError(
                f"table of shape {embeddings.shape} {embeddings.dtype} does not match the model's "
                f"{self.embeddings.shape} {self.embeddings.dtype}"
            )
        return dataclasses.replace(self, embeddings=embeddings, stored_dtype=self.table_dtype)


def load_model(
    name_or_path: str | os.PathLike[str] | None = None, *, token: str | None = None
) -> StaticModel:
    """Load a model2vec-format model from a directory, or resolve a Hugging Face Hub id to one.

    `None` loads the vendored default, potion-base-8M, with no network access; so does the bare name of a model
    shipped in the package (`swiftembed-potion-sts-8M`, see docs/quality.md).
    """
    if name_or_path is None:
        return _load_dir(DEFAULT_MODEL_DIR, DEFAULT_MODEL_ID)
    path = Path(name_or_path).expanduser()
    bundled = MODELS_DIR / str(name_or_path)
    if not path.exists() and "/" not in str(name_or_path) and (bundled / "model.safetensors").exists():
        path = bundled
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model path {path} is a file; expected a model2vec model directory")
        return _load_dir(path, _model_id_from_dir(path))
    return _load_dir(_download(str(name_or_path), token), str(name_or_path))


def _model_id_from_dir(path: Path) -> str:
    if path.resolve() == DEFAULT_MODEL_DIR.resolve():
        return DEFAULT_MODEL_ID
    return path.resolve().name


def _download(repo_id: str, token: str | None) -> Path:
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise ModelError(f"model {repo_id!r} is neither an existing directory nor a Hugging Face Hub id (owner/name)")
    try:
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    except ImportError as exc:  # pragma: no cover - huggingface_hub comes with tokenizers
        raise ModelError(f"model {repo_id!r} is not a local directory and huggingface_hub is not installed") from exc
    patterns = sorted({p for layout in _LAYOUTS for p in layout[:3]})
    try:
        folder = huggingface_hub.snapshot_download(repo_id, token=token, allow_patterns=patterns)
    except OfflineModeIsEnabled as exc:
        raise ModelError(f"model {repo_id!r} is not cached locally and Hugging Face Hub access is offline") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise ModelError(
            f"could not download model {repo_id!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}); "
            "pass a local model directory when offline"
        ) from exc
    return Path(folder)


def _find_layout(path: Path) -> tuple[Path, Path, Path, str]:
    for tensors, config, tokenizer, tensor_name in _LAYOUTS:
        files = (path / tensors, path / config, path / tokenizer)
        if all(f.is_file() for f in files):
            return (*files, tensor_name)
    missing = [name for name in ("model.safetensors", "config.json", "tokenizer.json") if not (path / name).is_file()]
    raise ModelError(f"model directory {path} is missing {', '.join(missing)} (model2vec layout expected)")


def _load_dir(path: Path, model_id: str) -> StaticModel:
    tensors_path, config_path, tokenizer_path, tensor_name = _find_layout(path)
    tensors = _read_tensors(tensors_path)
    if tensor_name not in tensors:
        raise ModelError(
            f"{tensors_path} has no tensor named {tensor_name!r} (found: {', '.join(sorted(tensors)) or 'none'})"
        )
    embeddings = tensors[tensor_name]
    if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise ModelError(f"tensor {tensor_name!r} in {tensors_path} has shape {embeddings.shape}; expected 2-D rows")
    if embeddings.dtype not in _TABLE_DTYPES:
        raise ModelError(f"tensor {tensor_name!r} has unsupported dtype {embeddings.dtype}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{config_path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelError(f"{config_path} must hold a JSON object")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise ModelError(f"{tokenizer_path} is not a valid tokenizers file: {exc}") from exc

    weights = tensors.get("weights")
    mapping = tensors.get("mapping")
    _check_shapes(tokenizer.get_vocab_size(with_added_tokens=True), embeddings, weights, mapping, tensors_path)
    return StaticModel(
        model_id=model_id,
        path=path,
        embeddings=embeddings,
        tokenizer=tokenizer,
        config=config,
        checksum=_checksum(tensors_path, tokenizer_path, config_path),
        weights=None if weights is None else weights.astype(np.float32, copy=False),
        mapping=None if mapping is None else mapping.astype(np.int64, copy=False),
    )


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise ModelError(f"{path} is not a readable safetensors file: {exc}") from exc


def _check_shapes(
    vocab: int, embeddings: np.ndarray, weights: np.ndarray | None, mapping: np.ndarray | None, where: Path
) -> None:
    rows = embeddings.shape[0]
    if mapping is None:
        if rows != vocab:
            raise ModelError(
                f"{where}: table has {rows} rows but the tokenizer has {vocab} tokens "
                "(a vocabulary-quantized model needs a 'mapping' tensor)"
            )
    else:
        if mapping.shape != (vocab,) or not np.issubdtype(mapping.dtype, np.integer):
            raise ModelError(f"{where}: 'mapping' must be {vocab} integers, one per token; got {mapping.shape}")
        if vocab and (mapping.min() < 0 or mapping.max() >= rows):
            raise ModelError(f"{where}: 'mapping' points outside the table's {rows} rows")
    if weights is not None and weights.shape != (vocab,):
        raise ModelError(f"{where}: 'weights' must hold one value per token ({vocab}); got shape {weights.shape}")


def _checksum(*files: Path) -> str:
    """SHA-256 over the files that decide the vectors, so replicas and clients can tell models apart."""
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
