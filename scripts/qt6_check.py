"""Static Qt6/QGIS 4 readiness check of the plugin's Python (fails CI on Qt5-only usage).

QGIS 3.22 ships no pyqt5_to_pyqt6 script, so this is the project's own, driven by the real bindings:
- Qt imported from PyQt5/PyQt6/sip directly instead of qgis.PyQt;
- `exec_()` / `print_()` (gone in PyQt6);
- unscoped enum access such as `Qt.AlignLeft` or `Qgis.Info`: for every `Class.NAME` where Class is a Qt or
  QGIS class and NAME is an enum *value* of it, the scoped form `Class.Enum.NAME` is required;
- QRegExp, QDesktopWidget, QtWebKit (removed in Qt6).
Usage: python scripts/qt6_check.py [paths...]  (default: __init__.py and plugin/)
"""

from __future__ import annotations

import ast
import enum
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REMOVED = {"QRegExp", "QDesktopWidget", "QtWebKit", "QtWebKitWidgets", "QGLWidget"}


def class_namespace() -> dict[str, object]:
    names: dict[str, object] = {}
    import qgis.core
    import qgis.gui
    from qgis.PyQt import QtCore, QtGui, QtWidgets

    for module in (QtCore, QtGui, QtWidgets, qgis.core, qgis.gui):
        for name in dir(module):
            if name[0] in "QG":
                obj = getattr(module, name, None)
                if isinstance(obj, type):
                    names[name] = obj
    return names


def is_enum_value(cls: type, attr: str) -> bool:
    value = getattr(cls, attr, None)
    if value is None or isinstance(value, type) or callable(value) and not isinstance(value, int):
        return False
    if isinstance(value, enum.Enum):
        return True
    # sip enums (PyQt5): the value's type is a class attribute with another name
    vtype = type(value)
    if vtype is cls:  # the class is itself an enum type (e.g. a top-level enum): access is scoped
        return False
    plain = vtype is int or vtype is bool
    return isinstance(value, int) and not plain and getattr(vtype, "__name__", attr) != attr


def check_file(path: Path, classes: dict[str, object]) -> list[str]:
    problems = []
    text = path.read_text()
    tree = ast.parse(text, filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for mod in mods:
                if mod.split(".")[0] in ("PyQt5", "PyQt6", "sip"):
                    problems.append(f"{path}:{node.lineno}: import {mod}: use qgis.PyQt")
            for alias in node.names:
                if alias.name in REMOVED:
                    problems.append(f"{path}:{node.lineno}: {alias.name} is gone in Qt6")
        elif isinstance(node, ast.Attribute):
            if node.attr in ("exec_", "print_"):
                problems.append(f"{path}:{node.lineno}: {node.attr}() is gone in PyQt6: use {node.attr[:-1]}()")
            elif isinstance(node.value, ast.Name) and node.value.id in classes:
                cls = classes[node.value.id]
                if is_enum_value(cls, node.attr):
                    problems.append(
                        f"{path}:{node.lineno}: unscoped enum {node.value.id}.{node.attr}: "
                        f"use {node.value.id}.{type(getattr(cls, node.attr)).__name__}.{node.attr}"
                    )
    return problems


def main(argv: list[str]) -> int:
    targets = [Path(a) for a in argv] or [ROOT / "__init__.py", ROOT / "plugin"]
    files = [f for t in targets for f in ([t] if t.is_file() else sorted(t.rglob("*.py")))]
    classes = class_namespace()
    problems = [p for f in files for p in check_file(f, classes)]
    for p in problems:
        print(p)
    print(f"qt6-check: {len(files)} files, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
