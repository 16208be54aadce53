"""The "Flood Mapper" Processing provider (id `floodmapper`)."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ..toolbelt import resources
from ..toolbelt.i18n import tr


class FloodMapperProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "floodmapper"

    def name(self) -> str:
        return tr("Flood Mapper")

    def longName(self) -> str:
        return tr("Flood Mapper: flood maps with geospatial foundation models served by vLLM")

    def icon(self) -> QIcon:
        return resources.icon()

    def svgIconPath(self) -> str:
        return str(resources.ICON_PATH)

    def loadAlgorithms(self) -> None:
        from .compare_water_maps import CompareWaterMapsAlgorithm
        from .map_floods import MapFloodsAlgorithm
        from .models import shipped_models
        from .prepare_model import PrepareModelAlgorithm

        self.addAlgorithm(MapFloodsAlgorithm())
        self.addAlgorithm(CompareWaterMapsAlgorithm())
        self.addAlgorithm(PrepareModelAlgorithm())
        for model in shipped_models():  # resources/models/*.model3, group "Models"
            self.addAlgorithm(model)
