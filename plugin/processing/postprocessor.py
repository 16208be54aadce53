"""Styles the flood layer after Processing loads it: paletted water/not-water (or flood water / permanent
water when the map was compared with a reference), figures in the metadata.

Runs on the main thread when the algorithm has finished (never inside processAlgorithm). QGIS keeps only a
raw pointer to a post-processor, so every instance is also kept in `_KEEP` until QGIS has called it.
"""

from __future__ import annotations

from qgis.core import (
    QgsMapLayer,
    QgsPalettedRasterRenderer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
)
from qgis.PyQt.QtGui import QColor

from ..toolbelt.compat import set_layer_abstract
from ..toolbelt.i18n import tr
from ..toolbelt.resources import FLOOD_EXTENT_STYLE, FLOOD_STYLE

WATER_COLOR = QColor(31, 120, 209)  # a clear blue, readable over imagery and basemaps
NOT_WATER_COLOR = QColor(0, 0, 0, 0)  # transparent: the flood layer only adds water to the map
# Flood extent: the flood in red, water that is always there in the blue of water. Red and blue differ in hue
# and in lightness, so they stay apart for colour-blind readers and in greyscale prints.
FLOOD_COLOR = QColor(227, 26, 28)
PERMANENT_WATER_COLOR = WATER_COLOR


def flood_renderer(layer: QgsRasterLayer, extent: bool = False) -> QgsPalettedRasterRenderer:
    """Water / not water; with `extent`, flood water (1) and permanent water (2)."""
    if extent:
        classes = [
            QgsPalettedRasterRenderer.Class(0, NOT_WATER_COLOR, tr("Not water")),
            QgsPalettedRasterRenderer.Class(1, FLOOD_COLOR, tr("Flood water")),
            QgsPalettedRasterRenderer.Class(2, PERMANENT_WATER_COLOR, tr("Permanent water")),
        ]
    else:
        classes = [
            QgsPalettedRasterRenderer.Class(0, NOT_WATER_COLOR, tr("Not water")),
            QgsPalettedRasterRenderer.Class(1, WATER_COLOR, tr("Water")),
        ]
    return QgsPalettedRasterRenderer(layer.dataProvider(), 1, classes)


def style_flood_layer(layer: QgsRasterLayer, summary: str = "", extent: bool = False) -> None:
    """Apply the flood style (also used by the demo script and tests, outside Processing); `extent` for a map
    compared with a reference (classes 0/1/2)."""
    layer.setRenderer(flood_renderer(layer, extent))
    if summary:
        set_layer_abstract(layer, summary)
        metadata = layer.metadata()
        metadata.setAbstract(summary)
        layer.setMetadata(metadata)
    layer.triggerRepaint()


class FloodLayerPostProcessor(QgsProcessingLayerPostProcessorInterface):
    _KEEP: list = []

    def __init__(self, summary: str, extent: bool = False) -> None:
        super().__init__()
        self.summary = summary
        self.extent = extent

    @classmethod
    def create(cls, summary: str, extent: bool = False) -> FloodLayerPostProcessor:
        instance = cls(summary, extent)
        cls._KEEP.append(instance)
        del cls._KEEP[:-64]  # QGIS has called the older ones long ago
        return instance

    def postProcessLayer(  # noqa: N802 (QGIS API)
        self, layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        if isinstance(layer, QgsRasterLayer) and layer.isValid():
            style_flood_layer(layer, self.summary, self.extent)


def write_style_sidecar(output: str, extent: bool = False) -> None:
    """Put the flood style (.qml) beside the GeoTIFF: QGIS applies it whenever the file is opened. `extent`:
    the flood water / permanent water style."""
    import os
    import shutil
    from pathlib import Path

    sidecar = Path(output).with_suffix(".qml")
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    shutil.copyfile(FLOOD_EXTENT_STYLE if extent else FLOOD_STYLE, tmp)
    os.replace(tmp, sidecar)
