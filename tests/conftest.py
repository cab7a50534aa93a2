"""Shared fixtures: the default embedder, model2vec as the oracle, small models built on the fly, text sets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from swiftembed import Embedder
from swiftembed.core.model import DEFAULT_MODEL_DIR

# ../shared beside the checkout holds the evaluation data; a plain clone has none. SWIFTEMBED_SHARED points
# elsewhere (`none`: behave as a plain clone, so every data-dependent test runs on the generated stand-ins).
SHARED = Path(os.environ.get("SWIFTEMBED_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
STSB_DIR = SHARED / "data" / "stsb"
SENTEVAL_DIR = SHARED / "data" / "senteval"

# Texts chosen to hit every branch of tokenization and pooling.
VARIED_TEXTS = [
    "",
    " ",
    "   \t\n  ",
    "...",
    "!?!?",
    "Hello world!",
    "A man with a hard hat is dancing.",
    "Café naïve résumé Ångström",
    "東京は日本の首都です",
    "中文字符和English混合",
    "I love 🍕 and 🚀!",
    "qzxvbnm xqjzk wvvvw",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "x" * 150,
    "hello [SEP] world [MASK] [cls]",
    "tab\there\x12control\x00nul\x7fdel",
    "Don't stop-believing!! (it's 100% true) #1 @user ~/path",
    "UPPER lower MiXeD",
    "\u200bzero\u200dwidth\ufeff",
    "Ελληνικά και русский текст",
    "word " * 700,
    "naïve " * 300 + "end",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--data-dependent", action="store_true",
        help="run only the tests that read the `sentences` fixture (with SWIFTEMBED_SHARED=none: what a plain "
             "clone runs on its generated stand-in data)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:  # a live Ray cluster takes tens of seconds to start and serve: not for the fast lane
        if item.get_closest_marker("ray") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
    if config.getoption("--data-dependent"):
        keep = [item for item in items if "sentences" in getattr(item, "fixturenames", ())]
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder.load()


@pytest.fixture(scope="session")
def embedders(embedder) -> dict[str, Embedder]:
    """Every bundled model by short name, the default first."""
    from swiftembed.core.catalog import BUNDLED

    return {name: embedder if i == 0 else Embedder.load(name) for i, name in enumerate(BUNDLED)}


@pytest.fixture(scope="session")
def reference():
    model2vec = pytest.importorskip("model2vec")
    return model2vec.StaticModel.from_pretrained(str(DEFAULT_MODEL_DIR))


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    """Several thousand real sentences: STS-B train when ../shared is present, else generated text."""
    path = STSB_DIR / "sts-train.csv"
    if path.exists():
        rows = [line.rstrip("\n").split("\t") for line in path.open(encoding="utf-8")]
        return list(dict.fromkeys(text for row in rows if len(row) >= 7 for text in row[5:7]))[:6000]
    rng = np.random.default_rng(0)
    words = ["the", "a", "man", "woman", "dog", "is", "running", "on", "beach", "Quick", "brown", "fox", "jumps",
             "over", "lazy", "cat's", "x-ray", "naïve", "café", "42", "3.14", "?", "!", "漢字", "🙂"]
    return [" ".join(rng.choice(words, size=rng.integers(1, 30))) for _ in range(6000)]


def write_model(
    directory: Path,
    tokenizer: Tokenizer,
    embeddings: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    mapping: np.ndarray | None = None,
    config: dict | None = None,
    tensor_name: str = "embeddings",
) -> Path:
    """A model2vec-format directory, written the way model2vec's save_pretrained lays it out."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {tensor_name: np.ascontiguousarray(embeddings)}
    if weights is not None:
        tensors["weights"] = np.ascontiguousarray(weights)
    if mapping is not None:
        tensors["mapping"] = np.ascontiguousarray(mapping)
    save_file(tensors, str(directory / "model.safetensors"))
    tokenizer.save(str(directory / "tokenizer.json"))
    cfg = {"model_type": "model2vec", "normalize": True, "hidden_dim": int(embeddings.shape[1])}
    cfg.update(config or {})
    (directory / "config.json").write_text(json.dumps(cfg))
    return directory


def wordlevel_tokenizer(words: list[str]) -> Tokenizer:
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def unigram_tokenizer(pieces: list[str]) -> Tokenizer:
    vocab = [("<unk>", 0.0)] + [(p, -float(i + 1) / len(pieces)) for i, p in enumerate(pieces)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    return tok


class RayServe:
    """A real local Ray (2 CPUs) with Serve's HAProxy ingress on a free loopback port and metrics exported."""

    def __init__(self, http_port: int, metrics_port: int) -> None:
        self.url = f"http://127.0.0.1:{http_port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"


@pytest.fixture(scope="session")
def ray_serve():
    """One Ray + Serve for the whole session: starting Ray costs seconds, so tests share it."""
    import os

    from swiftembed.ray.deployment import NAMESPACE
    from swiftembed.ray.ingress import serve_environment
    from tests.servers import free_port

    http_port, metrics_port = free_port(), free_port()
    # HAProxy ingress, as `swiftembed serve` starts it; its stats and metrics listeners on free ports of their own.
    # Ray's processes take the environment when Ray starts; it is restored after, so that the servers tests start
    # in subprocesses choose their own.
    saved = dict(os.environ)
    os.environ.update(serve_environment("haproxy", http_port))
    os.environ.update(RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()), RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()))
    import ray
    from ray import serve

    ray.init(
        num_cpus=2,
        namespace=NAMESPACE,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    os.environ.clear()
    os.environ.update(saved)
    try:
        yield RayServe(http_port, metrics_port)
    finally:
        serve.shutdown()
        ray.shutdown()
