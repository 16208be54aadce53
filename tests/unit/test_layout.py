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
