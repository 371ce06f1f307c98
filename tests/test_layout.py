"""The package's layout, read from its files and import statements.

- Layers, top to bottom: server -> engines -> models; client, bench and eval stand apart. The shared
  plumbing (audio, protocol, config, stats) imports no layer. No import circle.
- The server meets the models in one place: its composition root (`server/loading.py`, and
  `server/options.py` for the presets in `--help`); every other server module talks to engines.
- A package under `server/` never imports another package's private name (`_name`).
- No module over 450 lines; no tracked file over 1 MB outside `client/vendor/` and `docs/`.

Each rule is a function over a tree, run on the real one and on a planted violation (so a rule that
cannot fail would show).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "duplex"
SHARED = {"duplex.audio", "duplex.rtc_audio", "duplex.protocol", "duplex.config", "duplex.stats", "duplex"}
# what each layer may import from the package (beyond itself and the shared plumbing)
ALLOWED = {
    "duplex.models": set(),
    "duplex.engines": {"duplex.models"},
    "duplex.server": {"duplex.engines", "duplex.models"},
    "duplex.client": set(),
    "duplex.bench": {"duplex.client", "duplex.server"},
    "duplex.eval": {"duplex.client"},
}
COMPOSITION_ROOT = {"duplex.server.loading", "duplex.server.options"}   # the server modules that may import models
MAX_MODULE_LINES = 450
MAX_FILE_BYTES = 1_000_000
LARGE_FILES_ALLOWED = ("client/vendor/", "docs/")


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, root: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every package import in a file, at the top or inside functions (lazy imports
    count too): `from m import n` gives (m, n), or (m.n, None) when n is a module; `import m` gives (m, None)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.startswith("duplex")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("duplex"):
                continue
            for alias in node.names:  # `from . import x` names a module; `from .m import y` a symbol of m
                candidate = f"{base}.{alias.name}"
                found.append((candidate, None) if _exists(candidate, root) else (base, alias.name))
    return found


def _exists(module: str, root: Path) -> bool:
    path = root.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def import_graph(root: Path) -> dict[str, set[str]]:
    return {module_name(p, root): {m for m, _ in imported(p, root)} for p in root.rglob("*.py")}


GRAPH = import_graph(PACKAGE)


def layer_of(module: str) -> str | None:
    return next((layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")), None)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a layer its layer may not use, and server modules outside the composition root that import models."""
    wrong = []
    for module, targets in sorted(graph.items()):
        layer = layer_of(module)
        for target in sorted(targets):
            target_layer = layer_of(target)
            if layer is None:   # shared plumbing imports shared plumbing only; the command (cli) anything
                if module in SHARED and target not in SHARED:
                    wrong.append(f"{module} imports {target} (shared plumbing imports no layer)")
                continue
            if target in SHARED or target_layer in (layer, None):
                continue
            if target_layer not in ALLOWED[layer]:
                wrong.append(f"{module} imports {target} (a {target_layer} module)")
            elif layer == "duplex.server" and target_layer == "duplex.models" and module not in COMPOSITION_ROOT:
                wrong.append(f"{module} imports {target}: only the composition root ({', '.join(sorted(COMPOSITION_ROOT))}) "
                             "meets the models; take what it built")
    return wrong


def import_circle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for target in sorted(graph.get(module, ())):
            if target != module and not module.startswith(target + "."):  # a package's own __init__ is not a circle
                if circle := visit(target, path + [module]):
                    return circle
        done.add(module)
        return None

    for module in sorted(graph):
        if circle := visit(module, []):
            return circle
    return None


def family(module: str, root: Path) -> str:
    """The package a module belongs to (a package's __init__ belongs to the package itself)."""
    path = root.parent.joinpath(*module.split("."))
    return module if (path / "__init__.py").exists() else module.rsplit(".", 1)[0]


def private_imports(root: Path, within: str = "duplex.server") -> list[str]:
    """Imports, by a module under `within`, of a private name (`_x`, or a `_x` module) of another package."""
    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    wrong = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        if not module.startswith(within):
            continue
        for target, name in imported(path, root):
            if not target.startswith(within) or family(target, root) == family(module, root):
                continue
            parts = target.split(".") + ([name] if name else [])
            if any(private(p) for p in parts):
                wrong.append(f"{module} imports {target}{'.' + name if name else ''}, a private name of another package")
    return wrong


def long_modules(root: Path) -> list[str]:
    return [f"{p.relative_to(root.parent)}: {n} lines" for p in sorted(root.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]


def large_files(repo: Path, files: list[str]) -> list[str]:
    """Tracked files over 1 MB outside the folders where big files belong (vendored builds, docs' images)."""
    return [f"{name}: {size:,} bytes" for name in files
            if not name.startswith(LARGE_FILES_ALLOWED) and (repo / name).is_file()
            and (size := (repo / name).stat().st_size) > MAX_FILE_BYTES]


def tracked_files(repo: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True)
    return [name for name in out.stdout.decode().split("\0") if name]


# --- the rules on the real tree ---------------------------------------------------------------------
def test_the_graph_is_read() -> None:
    # guards the reader itself: these edges exist, so a reader that found none would be broken
    assert "duplex.engines.base" in GRAPH["duplex.engines.duplex"]
    assert "duplex.models.moshi_batch" in GRAPH["duplex.engines.duplex"]
    assert "duplex.audio" in GRAPH["duplex.server.session"]
    assert "duplex.server.recording" in GRAPH["duplex.server.session"]   # through the package's __init__
    assert any(t.startswith("duplex.models") for t in GRAPH["duplex.server.loading"])


def test_no_import_upwards_and_the_server_meets_the_models_in_one_place() -> None:
    assert upward_imports(GRAPH) == []


def test_no_import_circle() -> None:
    assert import_circle(GRAPH) is None


def test_no_server_package_imports_another_packages_private_name() -> None:
    assert private_imports(PACKAGE) == []


def test_no_module_over_450_lines() -> None:
    assert long_modules(PACKAGE) == []


def test_no_tracked_file_over_1_mb_outside_vendor_and_docs() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files")
    files = tracked_files(REPO)
    assert "duplex/server/app.py" in files   # the list is read
    assert large_files(REPO, files) == []


def test_the_server_families_are_packages() -> None:
    for package in ("protocols", "protocols/realtime", "recording", "fleet"):
        init = PACKAGE / "server" / package / "__init__.py"
        names = ast.literal_eval(next(n.value for n in ast.walk(ast.parse(init.read_text()))
                                      if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "__all__"))
        assert names, f"{init} names what it offers in __all__"
    flat = sorted(p.name for p in (PACKAGE / "server").glob("*.py"))
    assert not [n for n in flat if n.startswith(("realtime", "recording", "recorder", "supervisor", "lb_"))], flat


# --- each rule catches a planted violation ----------------------------------------------------------
def plant(tmp_path: Path, files: dict[str, str]) -> Path:
    """A small `duplex` package in tmp_path with these modules (every folder gets an __init__.py)."""
    root = tmp_path / "duplex"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        for folder in [path.parent, *path.parent.parents]:
            if folder == root.parent:
                break
            (folder / "__init__.py").touch()
    return root


def test_a_server_module_importing_models_outside_the_composition_root_is_caught(tmp_path: Path) -> None:
    root = plant(tmp_path, {"models/spec.py": "", "engines/base.py": "",
                            "server/loading.py": "from ..models.spec import X\n",
                            "server/session.py": "from ..engines.base import E\n",
                            "server/recording/meta.py": "def f():\n    from ...models.spec import PRESETS\n"})
    wrong = upward_imports(import_graph(root))
    assert len(wrong) == 1 and wrong[0].startswith("duplex.server.recording.meta imports duplex.models.spec"), wrong


def test_an_import_upwards_is_caught(tmp_path: Path) -> None:
    root = plant(tmp_path, {"models/x.py": "from ..engines import base\n", "engines/base.py": ""})
    assert upward_imports(import_graph(root)) == ["duplex.models.x imports duplex.engines.base (a duplex.engines module)"]


def test_an_import_circle_is_caught(tmp_path: Path) -> None:
    root = plant(tmp_path, {"server/a.py": "from .b import y\n", "server/b.py": "from . import c\n",
                            "server/c.py": "from .a import x\n"})
    assert import_circle(import_graph(root)) == ["duplex.server.a", "duplex.server.b", "duplex.server.c", "duplex.server.a"]


def test_a_private_name_of_another_server_package_is_caught(tmp_path: Path) -> None:
    root = plant(tmp_path, {"server/recording/store.py": "_GAP = 1\nclass _Receipt: ...\n",
                            "server/recording/http.py": "from .store import _Receipt\n",          # its own package: fine
                            "server/protocols/ws.py": "from ..recording.store import _GAP\n",       # another's: caught
                            "server/session.py": "from .recording import store\nx = store._GAP\n"})  # not an import
    assert private_imports(root) == ["duplex.server.protocols.ws imports duplex.server.recording.store._GAP, "
                                     "a private name of another package"]


def test_a_long_module_is_caught(tmp_path: Path) -> None:
    root = plant(tmp_path, {"server/ok.py": "x = 1\n" * MAX_MODULE_LINES, "server/long.py": "x = 1\n" * (MAX_MODULE_LINES + 1)})
    assert long_modules(root) == [f"duplex/server/long.py: {MAX_MODULE_LINES + 1} lines"]


def test_a_large_file_outside_vendor_and_docs_is_caught(tmp_path: Path) -> None:
    for name in ("opuslib-3.0.1.tar.gz", "docs/big.png", "client/vendor/big.wasm", "small.txt"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * (MAX_FILE_BYTES + 1 if name != "small.txt" else 10))
    listed = ["opuslib-3.0.1.tar.gz", "docs/big.png", "client/vendor/big.wasm", "small.txt"]
    assert large_files(tmp_path, listed) == [f"opuslib-3.0.1.tar.gz: {MAX_FILE_BYTES + 1:,} bytes"]
