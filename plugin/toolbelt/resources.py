"""The plugin's files that QGIS shows: its icon and the styles of the flood map and the water probability."""

from __future__ import annotations

from pathlib import Path

from qgis.PyQt.QtGui import QIcon

ROOT = Path(__file__).resolve().parents[2]
ICON_PATH = ROOT / "resources" / "icons" / "floodmapper.svg"
FLOOD_STYLE = ROOT / "resources" / "styles" / "flood.qml"
FLOOD_EXTENT_STYLE = ROOT / "resources" / "styles" / "flood_extent.qml"  # flood water / permanent water
PROBABILITY_STYLE = ROOT / "resources" / "styles" / "water_probability.qml"


def icon() -> QIcon:
    return QIcon(str(ICON_PATH))
