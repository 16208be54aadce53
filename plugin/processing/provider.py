"""The "Flood Mapper" Processing provider (id `floodmapper`)."""

from __future__ import annotations

import qgis.core
from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ..core.output import GEOTIFF_EXTENSIONS
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

    # The maps are GeoTIFFs: the file dialogs offer that format alone, a name for another one is refused before
    # the run, and temporary outputs are .tif whatever the user's default raster format.
    def supportedOutputRasterLayerExtensions(self) -> list[str]:  # asked by QGIS < 3.32
        return [ext.lstrip(".") for ext in GEOTIFF_EXTENSIONS]

    if hasattr(QgsProcessingProvider, "supportedOutputRasterLayerFormatAndExtensions") and not hasattr(
            qgis.core, "QgsProcessingFormatExtensionPair"):  # asked by QGIS 3.32+, as (GDAL driver, extension)
        def supportedOutputRasterLayerFormatAndExtensions(self) -> list[tuple[str, str]]:
            return [("GTiff", ext.lstrip(".")) for ext in GEOTIFF_EXTENSIONS]

    def defaultRasterFileExtension(self) -> str:
        return "tif"

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
