"""The "Flood Mapper" Processing provider (id `floodmapper`)."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ..toolbelt.i18n import tr

ICON = Path(__file__).resolve().parents[2] / "resources" / "icons" / "floodmapper.svg"


class FloodMapperProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "floodmapper"

    def name(self) -> str:
        return tr("Flood Mapper")

    def longName(self) -> str:
        return tr("Flood Mapper: flood maps with geospatial foundation models served by vLLM")

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def svgIconPath(self) -> str:
        return str(ICON)

    def loadAlgorithms(self) -> None:
        from .map_floods import MapFloodsAlgorithm
        from .models import shipped_models

        self.addAlgorithm(MapFloodsAlgorithm())
        try:
            from .prepare_model import PrepareModelAlgorithm
        except ImportError:  # lands with the model-preparation issue
            PrepareModelAlgorithm = None  # noqa: N806
        if PrepareModelAlgorithm is not None:
            self.addAlgorithm(PrepareModelAlgorithm())
        for model in shipped_models():  # resources/models/*.model3, group "Models"
            self.addAlgorithm(model)
