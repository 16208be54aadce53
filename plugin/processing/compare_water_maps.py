"""Processing algorithm `floodmapper:compare_water_maps`: two water maps already made (and/or reference water)
in, the flood extent out (0 = not water, 1 = flood water, 2 = permanent water, 255 = no data). No server.

The same core comparison as Map floods with PRE_EVENT (core/flood_extent.py), for maps made earlier, by
another tool, or in a Model Designer model.
"""

from __future__ import annotations

import traceback

from qgis.core import (
    Qgis,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)
from qgis.PyQt.QtGui import QIcon

from ..core.errors import FloodMapperError, InputError
from ..core.jobs import MapFloodsResult
from ..toolbelt import log as qlog
from ..toolbelt import resources
from ..toolbelt.dependencies import require_dependencies
from ..toolbelt.i18n import tr
from .feedback import FeedbackProgress
from .layer_inputs import layer_source
from .map_outputs import flood_map_outputs
from .postprocessor import FloodLayerPostProcessor, style_when_loaded
from .reference_inputs import (
    CLASSES_HELP,
    ReferenceInputs,
    add_extent_outputs,
    add_reference_parameters,
    area_text,
    extent_text,
    read_reference_inputs,
)


class CompareWaterMapsAlgorithm(QgsProcessingAlgorithm):
    INPUT = "INPUT"
    OUTPUT = "OUTPUT"
    WATER_POLYGONS = "WATER_POLYGONS"
    MIN_AREA = "MIN_AREA"
    WATER_PIXELS = "WATER_PIXELS"
    VALID_PIXELS = "VALID_PIXELS"
    WATER_AREA_KM2 = "WATER_AREA_KM2"

    def __init__(self) -> None:
        super().__init__()
        self._source = ""
        self._input_name = ""
        self._source_error: InputError | None = None
        self._references = ReferenceInputs()

    def createInstance(self) -> CompareWaterMapsAlgorithm:
        return CompareWaterMapsAlgorithm()

    def name(self) -> str:
        return "compare_water_maps"

    def displayName(self) -> str:
        return tr("Flood extent from water maps")

    def shortDescription(self) -> str:
        return tr("Tell flood water from permanent water by comparing a water map with an earlier one or a "
                  "reference")

    def icon(self) -> QIcon:
        return resources.icon()

    def tags(self) -> list[str]:
        return ["flood", "extent", "water", "permanent water", "change", "pre-event", "reference", "jrc"]

    def shortHelpString(self) -> str:
        return tr(
            "Compares a water map of the event (INPUT: a Flood Mapper map or any one-band raster where water "
            ">= 1) with a water map of the same place before the event (PRE_EVENT, same rule) and/or reference "
            "water (REFERENCE_WATER: polygons, or a raster at REFERENCE_THRESHOLD). The maps may be on any grids "
            "and CRSs: the references are brought onto INPUT's grid (nearest neighbour) and the output is on "
            "INPUT's exact grid. No server is needed.\n\n"
        ) + tr(CLASSES_HELP)

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, tr("Water map of the event")))
        add_reference_parameters(
            self, tr("Water map before the event"),
            tr("A water map of the same place before the event (a Flood Mapper map or a 0/1 raster; water >= 1), "
               "on any grid. Its water is permanent water; where it has no data or does not reach, there is no "
               "reference."))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, tr("Flood extent")))
        p = QgsProcessingParameterFeatureSink(
            self.WATER_POLYGONS, tr("Water polygons"), type=QgsProcessing.SourceType.TypeVectorPolygon,
            optional=True, createByDefault=False)
        p.setHelp(tr("Flood and permanent water areas as polygons, with their class and area in m² (optional)."))
        self.addParameter(p)
        p = QgsProcessingParameterNumber(
            self.MIN_AREA, tr("Smallest water polygon to keep (m²)"),
            type=QgsProcessingParameterNumber.Type.Double, minValue=0.0, defaultValue=0.0)
        self.addParameter(p)
        add_extent_outputs(self)
        self.addOutput(QgsProcessingOutputNumber(self.WATER_PIXELS, tr("Water pixels")))
        self.addOutput(QgsProcessingOutputNumber(self.VALID_PIXELS, tr("Valid pixels")))
        self.addOutput(QgsProcessingOutputNumber(self.WATER_AREA_KM2, tr("Water area (km²)")))

    def prepareAlgorithm(self, parameters, context, feedback) -> bool:
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(
                tr("INPUT is not a raster layer or a readable raster file. Choose a water map."))
        self._input_name = layer.name()
        try:
            self._source = layer_source(layer)
        except InputError as err:
            self._source_error = err
        self._references = read_reference_inputs(self, parameters, context, layer.crs(), layer.extent())
        return True

    def processAlgorithm(self, parameters, context, feedback):
        require_dependencies()
        progress = FeedbackProgress(feedback)
        failure = ""
        try:
            result = self._run(parameters, context, progress)
        except FloodMapperError as err:
            failure = str(err)
            traceback.clear_frames(err.__traceback__)
        if failure:
            qlog.log(f"Flood extent from water maps failed on '{self._input_name}': {failure}",
                     Qgis.MessageLevel.Critical)
            raise QgsProcessingException(failure)
        summary = tr("Flood extent of {name}: water {water:,} of {valid:,} valid pixels ({area}). "
                     ).format(name=self._input_name, water=result.water_pixels, valid=result.valid_pixels,
                              area=area_text(result.water_area_km2)) + extent_text(result)
        feedback.pushInfo(summary)
        qlog.log(summary)
        style_when_loaded(context, result.output_path, resources.FLOOD_EXTENT_STYLE,
                          f"{self._input_name} – flood extent", FloodLayerPostProcessor, summary, extent=True)
        return flood_map_outputs(self, parameters, context, feedback, result)

    def _run(self, parameters, context, progress: FeedbackProgress) -> MapFloodsResult:
        from ..core.flood_extent import compare_water_maps, describe
        from ..core.reference import RasterReference
        from ..core.reference_files import reference_from_path

        if self._source_error is not None:
            raise self._source_error
        fields = self._references.request_fields()
        refs = []
        if fields["pre_event_path"]:
            refs.append(RasterReference(fields["pre_event_path"], 1.0, tr("the water map before the event")))
        if fields["reference_path"]:
            refs.append(reference_from_path(fields["reference_path"], fields["reference_threshold"]))
        if fields["reference_polygons"] is not None:
            refs.append(fields["reference_polygons"])
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        stats = compare_water_maps(self._source, refs, output, progress)
        return MapFloodsResult(output_path=output, transport="", model="", warnings=list(stats.warnings),
                               reference=describe(refs), **stats.result_fields())
