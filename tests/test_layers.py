"""The package's layers and the direction of their imports: what the folder list promises a newcomer.

core (model, tokenizer, pooling, embedder, chunking, sparse, catalog) knows no HTTP and no Ray; service (batcher,
settings, metrics) sits on core; http (front door, routes, wire formats, OpenAPI, standalone server) on service
and core, without Ray; grpc (TEI's gRPC API and its server) beside http, on service and core, knowing neither
HTTP nor Ray; ray (deployment, tables, ingress, Ray Data job) on everything below it; files (streamed file
encoding) on core; eval on core and files. Checked from the source, so a stray import fails here first.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "swiftembed"

# layer -> the SwiftEmbed layers it may import
ALLOWED = {
    "core": {"core"},
    "service": {"core", "service"},
    "http": {"core", "service", "http"},
    "grpc": {"core", "service", "grpc"},
    "files": {"core", "files"},
    "eval": {"core", "files", "eval"},
    "ray": {"core", "service", "http", "grpc", "files", "ray"},
}
# layer -> third-party packages it must not import (at module level or inside functions)
FORBIDDEN = {
    "core": {"ray", "starlette", "uvicorn", "httpx", "prometheus_client"},
    "service": {"ray", "starlette", "uvicorn"},
    "http": {"ray", "grpc"},
    "grpc": {"ray", "starlette", "uvicorn", "httpx"},
    "files": {"ray", "starlette", "uvicorn"},
}


def imports(path: Path) -> set[str]:
    """Every module `path` imports, as dotted names (relative imports resolved against the package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = path.relative_to(PACKAGE.parent).with_suffix("").parts[: -node.level]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            if base == "swiftembed":  # from swiftembed import core ...
                names.update(f"swiftembed.{alias.name}" for alias in node.names)
    return names


def layer_modules() -> list[tuple[str, Path]]:
    return [(layer, path) for layer in ALLOWED for path in sorted((PACKAGE / layer).glob("*.py"))]


def test_every_module_belongs_to_a_layer():
    flat = {p.name for p in PACKAGE.glob("*.py")}
    assert flat <= {"__init__.py", "cli.py", "serve.py"}, f"modules outside the layers: {sorted(flat)}"
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(ALLOWED), packages


@pytest.mark.parametrize(("layer", "path"), layer_modules(), ids=lambda v: getattr(v, "name", v))
def test_imports_point_down_the_layers(layer, path):
    found = imports(path)
    ours = {name.split(".")[1] for name in found if name.startswith("swiftembed.") and name.count(".") >= 1}
    ours &= set(ALLOWED)
    assert ours <= ALLOWED[layer], f"{path.name} ({layer}) imports {sorted(ours - ALLOWED[layer])}"
    foreign = {name.split(".")[0] for name in found} & FORBIDDEN.get(layer, set())
    assert not foreign, f"{path.name} ({layer}) imports {sorted(foreign)}"


def test_the_check_sees_a_wrong_import(tmp_path):
    """Not vacuous: an import of the Ray layer from core, and of Ray itself, are found."""
    bad = PACKAGE / "core" / "_probe_not_a_module.py"
    source = "from swiftembed.ray.tables import SharedTables\nimport ray\nfrom ..http import wire\n"
    bad.write_text(source)
    try:
        found = imports(bad)
    finally:
        bad.unlink()
    assert {"swiftembed.ray.tables", "ray", "swiftembed.http"} <= found


def test_old_import_path_still_deploys():
    """Serve configs written before the layers (`swiftembed.serve:build_app`) keep working."""
    pytest.importorskip("ray")
    from swiftembed import serve
    from swiftembed.ray import deployment

    assert serve.build_app is deployment.build_app and serve.in_flight_policy is deployment.in_flight_policy
