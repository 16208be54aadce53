"""The plugin's files that QGIS shows: its icon and the flood map's style."""

from __future__ import annotations

from pathlib import Path

from qgis.PyQt.QtGui import QIcon

ROOT = Path(__file__).resolve().parents[2]
ICON_PATH = ROOT / "resources" / "icons" / "floodmapper.svg"
FLOOD_STYLE = ROOT / "resources" / "styles" / "flood.qml"


def icon() -> QIcon:
    return QIcon(str(ICON_PATH))
