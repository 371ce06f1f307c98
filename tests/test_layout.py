"""The package's layers, read from its import statements: no import circle, no import upwards.

Layers, top to bottom: server -> engines -> models; client, bench and eval stand apart. The shared
plumbing (audio, protocol, config, stats) imports no layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "duplex"
SHARED = {"duplex.audio", "duplex.protocol", "duplex.config", "duplex.stats", "duplex"}
# what each layer may import from the package (beyond itself and the shared plumbing)
ALLOWED = {
    "duplex.models": set(),
    "duplex.engines": {"duplex.models"},
    "duplex.server": {"duplex.engines", "duplex.models"},
    "duplex.client": set(),
    "duplex.bench": {"duplex.client", "duplex.server"},
    "duplex.eval": {"duplex.client"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Package modules this file imports, at the top or inside functions (lazy imports count too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("duplex"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("duplex"):
                continue
            for alias in node.names:  # `from . import x` names a module; `from .m import y` a symbol of m
                candidate = f"{base}.{alias.name}"
                found.add(candidate if _exists(candidate) else base)
    return found


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


GRAPH = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> str | None:
    return next((layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")), None)


def test_the_graph_is_read() -> None:
    # guards the reader itself: these edges exist, so a reader that found none would be broken
    assert "duplex.engines.base" in GRAPH["duplex.engines.duplex"]
    assert "duplex.models.moshi_batch" in GRAPH["duplex.engines.duplex"]
    assert "duplex.audio" in GRAPH["duplex.server.session"]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_upwards(module: str) -> None:
    layer = layer_of(module)
    if layer is None:  # shared plumbing and the command: audio, protocol, config, stats may import no layer
        if module in SHARED:
            assert all(target in SHARED for target in GRAPH[module]), (module, GRAPH[module])
        return
    for target in GRAPH[module]:
        target_layer = layer_of(target)
        if target in SHARED or target_layer in (layer, None):
            continue
        assert target_layer in ALLOWED[layer], f"{module} imports {target} (a {target_layer} module)"


def test_no_import_circle() -> None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        for target in sorted(GRAPH.get(module, ())):
            if target != module and not module.startswith(target + "."):  # a package's own __init__ is not a circle
                visit(target, path + [module])
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, [])
