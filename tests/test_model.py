"""Model loading: the vendored default, its checksums, and a clear error for every broken directory."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from swiftembed import Embedder, ModelError, load_model
from swiftembed.core.model import DEFAULT_MODEL_DIR, DEFAULT_MODEL_ID
from tests.conftest import write_model


def test_vendored_files_match_sha256sums():
    lines = (DEFAULT_MODEL_DIR / "SHA256SUMS").read_text().splitlines()
    assert len(lines) == 6
    for line in lines:
        digest, name = line.split()
        assert hashlib.sha256((DEFAULT_MODEL_DIR / name).read_bytes()).hexdigest() == digest, name
    assert "MIT" in (DEFAULT_MODEL_DIR / "LICENSE").read_text()
    assert "MIT" in (DEFAULT_MODEL_DIR / "PROVENANCE.md").read_text()


def test_default_model_facts():
    model = load_model()
    assert model.model_id == DEFAULT_MODEL_ID
    assert model.embeddings.shape == (29528, 256) and model.embeddings.dtype == np.float32
    assert model.vocab_size == 29528 and model.dim == 256
    assert model.normalize is True and model.max_tokens == 512
    assert len(model.checksum) == 64
    embedder = Embedder(model)
    assert (embedder.dim, embedder.vocab_size, embedder.model_id) == (256, 29528, DEFAULT_MODEL_ID)
    assert embedder.checksum == model.checksum


@pytest.fixture
def model_copy(tmp_path):
    target = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, target)
    return target


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "config.json"])
def test_missing_file(model_copy, name):
    (model_copy / name).unlink()
    with pytest.raises(ModelError, match=f"missing {name}"):
        load_model(model_copy)


def test_corrupt_safetensors(model_copy):
    data = (model_copy / "model.safetensors").read_bytes()
    (model_copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_model(model_copy)


def test_garbage_safetensors(model_copy):
    (model_copy / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_model(model_copy)


def test_row_count_mismatch(tmp_path):
    model = load_model()
    write_model(tmp_path, model.tokenizer, np.zeros((100, 8), np.float32))
    with pytest.raises(ModelError, match="table has 100 rows but the tokenizer has 29528 tokens"):
        load_model(tmp_path)


def test_wrong_tensor_name(tmp_path):
    model = load_model()
    write_model(tmp_path, model.tokenizer, np.zeros((model.vocab_size, 8), np.float32), tensor_name="vectors")
    with pytest.raises(ModelError, match="no tensor named 'embeddings' \\(found: vectors\\)"):
        load_model(tmp_path)


def test_mapping_out_of_range(tmp_path):
    model = load_model()
    mapping = np.full(model.vocab_size, 10, np.int64)
    write_model(tmp_path, model.tokenizer, np.zeros((10, 8), np.float32), mapping=mapping)
    with pytest.raises(ModelError, match="'mapping' points outside"):
        load_model(tmp_path)


def test_weights_wrong_length(tmp_path):
    model = load_model()
    write_model(
        tmp_path, model.tokenizer, np.zeros((model.vocab_size, 8), np.float32), weights=np.ones(5, np.float32)
    )
    with pytest.raises(ModelError, match="'weights' must hold one value per token"):
        load_model(tmp_path)


def test_bad_config_json(model_copy):
    (model_copy / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="config.json is not valid JSON"):
        load_model(model_copy)


def test_bad_tokenizer_json(model_copy):
    (model_copy / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(ModelError, match="not a valid tokenizers file"):
        load_model(model_copy)


def test_path_is_a_file(tmp_path):
    (tmp_path / "x").write_text("")
    with pytest.raises(ModelError, match="is a file"):
        load_model(tmp_path / "x")


def test_not_a_path_nor_hub_id():
    with pytest.raises(ModelError, match="neither an existing directory nor a Hugging Face Hub id"):
        load_model("./no/such/dir/here")


def test_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import importlib

    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)
    try:
        with pytest.raises(ModelError, match="minishlab/not-cached-here"):
            load_model("minishlab/not-cached-here")
    finally:
        monkeypatch.undo()
        importlib.reload(huggingface_hub.constants)


def test_sentence_transformers_layout(tmp_path):
    model = load_model()
    nested = tmp_path / "0_StaticEmbedding"
    write_model(nested, model.tokenizer, model.embeddings[:, :16].copy(), tensor_name="embedding.weight")
    (tmp_path / "config_sentence_transformers.json").write_text("{}")
    loaded = load_model(tmp_path)
    assert loaded.dim == 16


def test_with_embeddings_checks_shape():
    model = load_model()
    with pytest.raises(ModelError):
        model.with_embeddings(np.zeros((3, 3), np.float32))
    same = model.with_embeddings(model.embeddings.copy())
    assert same.checksum == model.checksum
