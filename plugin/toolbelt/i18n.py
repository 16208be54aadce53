"""Translations: every user-facing string goes through tr() with the plugin's context."""

from __future__ import annotations

from qgis.PyQt.QtCore import QCoreApplication

CONTEXT = "FloodMapper"


def tr(text: str) -> str:
    return QCoreApplication.translate(CONTEXT, text)
