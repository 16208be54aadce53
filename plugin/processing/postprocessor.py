"""Styles the flood layer after Processing loads it: paletted water/not-water (or flood water / permanent
water when the map was compared with a reference), figures in the metadata; and the water probability layer, a
colour ramp from 0 to 1.

Runs on the main thread when the algorithm has finished (never inside processAlgorithm). QGIS keeps only a
raw pointer to a post-processor, so every instance is also kept in `_KEEP` until QGIS has called it.
"""

from __future__ import annotations

from pathlib import Path

from qgis.core import (
    QgsColorRampShader,
    QgsMapLayer,
    QgsPalettedRasterRenderer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsRasterShader,
    QgsSingleBandPseudoColorRenderer,
)
from qgis.PyQt.QtGui import QColor

from ..toolbelt.compat import set_layer_abstract
from ..toolbelt.i18n import tr

WATER_COLOR = QColor(31, 120, 209)  # a clear blue, readable over imagery and basemaps
NOT_WATER_COLOR = QColor(0, 0, 0, 0)  # transparent: the flood layer only adds water to the map
# Flood extent: the flood in red, water that is always there in the blue of water. Red and blue differ in hue
# and in lightness, so they stay apart for colour-blind readers and in greyscale prints.
FLOOD_COLOR = QColor(227, 26, 28)
PERMANENT_WATER_COLOR = WATER_COLOR
# Water probability: ColorBrewer's sequential Blues, from clear where the model sees no water to a deep blue where
# it is sure; 0 is transparent, so the layer only adds colour where water is likely, as the flood layer does.
PROBABILITY_RAMP = (
    (0.0, QColor(247, 251, 255, 0), "0 (not water)"),
    (0.25, QColor(198, 219, 239), "0.25"),
    (0.5, QColor(107, 174, 214), "0.5"),
    (0.75, QColor(33, 113, 181), "0.75"),
    (1.0, QColor(8, 48, 107), "1 (water)"),
)


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


def probability_renderer(layer: QgsRasterLayer) -> QgsSingleBandPseudoColorRenderer:
    """The water probability, 0 to 1, on PROBABILITY_RAMP (colours interpolated between its stops)."""
    ramp = QgsColorRampShader(0.0, 1.0)
    ramp.setColorRampItemList([QgsColorRampShader.ColorRampItem(value, color, tr(label))
                               for value, color, label in PROBABILITY_RAMP])
    shader = QgsRasterShader(0.0, 1.0)
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(0.0)
    renderer.setClassificationMax(1.0)
    return renderer


def style_flood_layer(layer: QgsRasterLayer, summary: str = "", extent: bool = False) -> None:
    """Apply the flood style (also used by the demo script and tests, outside Processing); `extent` for a map
    compared with a reference (classes 0/1/2)."""
    layer.setRenderer(flood_renderer(layer, extent))
    _describe(layer, summary)


def style_probability_layer(layer: QgsRasterLayer, summary: str = "") -> None:
    """Apply the water probability ramp; the run's figures go into its abstract as into the flood layer's."""
    layer.setRenderer(probability_renderer(layer))
    _describe(layer, summary)


def _describe(layer: QgsRasterLayer, summary: str) -> None:
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


class ProbabilityLayerPostProcessor(FloodLayerPostProcessor):
    """The same for the water probability layer: its ramp instead of the classes."""

    def postProcessLayer(  # noqa: N802 (QGIS API)
        self, layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        if isinstance(layer, QgsRasterLayer) and layer.isValid():
            style_probability_layer(layer, self.summary)


def style_when_loaded(context: QgsProcessingContext, path: str, style: Path, name: str,
                      post_processor: type[FloodLayerPostProcessor], summary: str, extent: bool = False) -> None:
    """Put `style` beside the GeoTIFF at `path` and, when Processing loads it at the end of the run, name the
    layer `name` and have `post_processor` style it, with the run's `summary` in its metadata."""
    write_style_sidecar(path, style)
    if context.willLoadLayerOnCompletion(path):
        details = context.layerToLoadOnCompletionDetails(path)
        details.name = name
        details.setPostProcessor(post_processor.create(summary, extent))


def write_style_sidecar(output: str, style: Path) -> None:
    """Put a style (.qml: resources.FLOOD_STYLE, FLOOD_EXTENT_STYLE or PROBABILITY_STYLE) beside the GeoTIFF:
    QGIS applies it whenever the file is opened."""
    import os
    import shutil

    sidecar = Path(output).with_suffix(".qml")
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    shutil.copyfile(style, tmp)
    os.replace(tmp, sidecar)
