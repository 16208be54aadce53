"""Loading the plugin imports none of the packages it may have to install first (static check of every module
import that runs at load, followed through the plugin's own modules)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALLABLE = {"numpy", "rasterio", "requests", "urllib3", "affine", "attr", "certifi", "click", "cligj",
               "click_plugins", "pyparsing", "idna", "charset_normalizer"}
LOAD_PATH = [ROOT / "__init__.py", ROOT / "plugin" / "qgis_plugin.py",
             *sorted((ROOT / "plugin" / "processing").glob("*.py")), *sorted((ROOT / "plugin" / "gui").glob("*.py")),
             *sorted((ROOT / "plugin" / "toolbelt").glob("*.py"))]


def _load_time_imports(tree: ast.Module):
    """Import nodes that run when the module is imported: module level, also inside if/try, not TYPE_CHECKING."""
    def walk(body):
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    yield from walk(node.body)
                yield from walk(node.orelse)
            elif isinstance(node, ast.Try):
                for part in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                    yield from walk(part)
            elif isinstance(node, ast.ClassDef):
                yield from walk(node.body)
    yield from walk(tree.body)


def _resolve(path: Path, node: ast.ImportFrom) -> list[Path]:
    base = path.parent
    for _ in range(node.level - 1):
        base = base.parent
    target = base.joinpath(*(node.module or "").split(".")) if node.module else base
    found = [p for p in (target.with_suffix(".py"), target / "__init__.py") if p.exists()]
    for alias in node.names:  # `from . import log`
        found += [p for p in (target / f"{alias.name}.py",) if p.exists()]
    return found


def test_no_installable_package_is_imported_at_load():
    seen: set[Path] = set()
    todo = list(LOAD_PATH)
    offenders = []
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in _load_time_imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                todo += _resolve(path, node)
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                          if n.split(".")[0] in INSTALLABLE]
    assert offenders == []
    assert ROOT / "plugin" / "core" / "dependencies.py" in seen  # the walk does follow relative imports
