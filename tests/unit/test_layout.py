"""Guards of the code layout: what the brief fixes must stay true as the code grows."""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_no_qgis():
    offenders = [str(p) for p in (ROOT / "plugin" / "core").rglob("*.py") if {"qgis", "PyQt5", "PyQt6"} & _imports(p)]
    assert offenders == []


def test_core_imports_no_heavy_ml_at_module_level():
    """torch/vllm/terratorch live only in the vLLM environment: core may import them lazily, never at the top."""
    offenders = []
    for path in (ROOT / "plugin" / "core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(m.split(".")[0] in ("torch", "vllm", "terratorch") for m in mods):
                    offenders.append(str(path))
    assert offenders == []


def test_init_holds_only_class_factory():
    tree = ast.parse((ROOT / "__init__.py").read_text())
    top = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert len(top) == 1 and isinstance(top[0], ast.FunctionDef) and top[0].name == "classFactory"


def test_no_direct_pyqt_and_no_exec_underscore():
    bad = []
    for path in [ROOT / "__init__.py", *(ROOT / "plugin").rglob("*.py")]:
        text = path.read_text()
        if re.search(r"^\s*(from|import) (PyQt5|PyQt6|sip)\b", text, re.M):
            bad.append(f"{path}: direct PyQt import")
        if re.search(r"\.exec_\(", text):
            bad.append(f"{path}: exec_()")
    assert bad == []


def test_ui_files_carry_no_connections():
    for ui in (ROOT / "ui").glob("*.ui"):
        assert "<connections>" not in ui.read_text(), ui


def test_metadata_complete():
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt")
    general = meta["general"]
    for key in ("name", "description", "about", "version", "author", "email", "repository", "tracker",
                "homepage", "tags", "icon", "category"):
        assert general.get(key), key
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["qgisMaximumVersion"] == "4.99"
    assert general["hasProcessingProvider"] == "yes"
    assert general["supportsQt6"] == "True"
    assert (ROOT / general["icon"]).exists()


def _plugin_modules() -> dict[str, Path]:
    """Dotted name (plugin.core.http) -> file, for every module of the plugin package."""
    out = {}
    for path in (ROOT / "plugin").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _plugin_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The plugin modules `name` imports, at the top or inside functions, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and target != package:
                found.add(target)
    return found


def test_no_import_cycles_among_plugin_modules():
    """Data flows one way (parameters -> request -> pipeline -> transports -> result): no module imports,
    even lazily, a module that imports it back."""
    modules = _plugin_modules()
    graph = {name: _plugin_imports(name, path, modules) for name, path in modules.items()}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        for nxt in graph.get(node, ()):
            if nxt in trail:
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, trail + [nxt])
        done.add(node)

    done: set[str] = set()
    for name in modules:
        if name not in done:
            visit(name, [name])
    assert cycles == []


def test_every_module_says_what_it_is_for():
    """One module, one job, named in the first line of its docstring."""
    missing = [str(p.relative_to(ROOT)) for p in (ROOT / "plugin").rglob("*.py")
               if p.name != "__init__.py" and not (ast.get_docstring(ast.parse(p.read_text())) or "").strip()]
    assert missing == []


def test_core_modules_stay_small():
    """A core module past 400 lines has taken on a second job: split it (see the one-job modules beside it)."""
    big = {str(p.relative_to(ROOT)): n for p in (ROOT / "plugin" / "core").rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 400}
    assert big == {}


def test_test_data_stays_out_of_the_plugin():
    """The synthetic scene generator is demo and test data: it lives in scripts/, not in the plugin (or its zip)."""
    assert not list((ROOT / "plugin").rglob("scenes.py"))
    assert (ROOT / "scripts" / "scenes.py").exists()
