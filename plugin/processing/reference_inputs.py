"""The flood-extent parameters and outputs the algorithms share: PRE_EVENT (and Map floods'
PRE_EVENT_CLOUD_MASK), REFERENCE_WATER and REFERENCE_THRESHOLD in, as the core takes them (paths, or polygons
already in the map's CRS), and the flood figures out. The core's reference module (numpy) is imported only when
the algorithm runs, after its dependency check."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Optional

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeatureRequest,
    QgsMapLayer,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingOutputNumber,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
    QgsWkbTypes,
)

from ..core.errors import InputError
from ..core.jobs import MapFloodsResult
from ..toolbelt.compat import POLYGON_GEOMETRY
from ..toolbelt.i18n import tr
from .layer_inputs import layer_nodata, layer_source

PRE_EVENT = "PRE_EVENT"
PRE_EVENT_CLOUD_MASK = "PRE_EVENT_CLOUD_MASK"
REFERENCE_WATER = "REFERENCE_WATER"
REFERENCE_THRESHOLD = "REFERENCE_THRESHOLD"
FLOOD_PIXELS = "FLOOD_PIXELS"
FLOOD_AREA_KM2 = "FLOOD_AREA_KM2"
PERMANENT_WATER_PIXELS = "PERMANENT_WATER_PIXELS"
PERMANENT_WATER_AREA_KM2 = "PERMANENT_WATER_AREA_KM2"
NO_REFERENCE_PIXELS = "NO_REFERENCE_PIXELS"

CLASSES_HELP = ("With a reference, the map's classes are 0 = not water, 1 = flood water (water now, not in the "
                "reference), 2 = permanent water (water now and in the reference), 255 = no data; without one, "
                "1 = water. Where the reference has no data or does not reach, water counts as flood (the log "
                "gives how many pixels had no reference).")


def add_reference_parameters(alg: QgsProcessingAlgorithm, pre_event_label: str, pre_event_help: str,
                             pre_event_clouds: bool = False) -> None:
    """PRE_EVENT (with PRE_EVENT_CLOUD_MASK when the pre-event image is mapped), REFERENCE_WATER and
    REFERENCE_THRESHOLD, all optional."""
    p = QgsProcessingParameterRasterLayer(PRE_EVENT, pre_event_label, optional=True)
    p.setHelp(pre_event_help)
    alg.addParameter(p)
    if pre_event_clouds:
        p = QgsProcessingParameterRasterLayer(
            PRE_EVENT_CLOUD_MASK, tr("Cloud mask of the pre-event image (read with CLOUD_VALUES)"), optional=True)
        p.setHelp(tr("The pre-event image's own cloud raster (e.g. its SCL band), any CRS and resolution, read like "
                     "CLOUD_MASK. Its clouds and cloud shadows are then no reference rather than land or water: the "
                     "event's water there counts as flood, unless REFERENCE_WATER says otherwise. Empty: with a "
                     "CLOUD_MASK, the pre-event image's own cloud band if a band's description names one (SCL, "
                     "QA60, QA_PIXEL, ...), else none."))
        alg.addParameter(p)
    p = QgsProcessingParameterMapLayer(
        REFERENCE_WATER, tr("Reference water: water that is always there (polygons or raster)"), optional=True,
        types=[QgsProcessing.SourceType.TypeVectorPolygon, QgsProcessing.SourceType.TypeRaster])
    p.setHelp(tr("Permanent water, in any CRS: polygons (national hydrography, OpenStreetMap water) or a raster "
                 "read as water where its value is >= REFERENCE_THRESHOLD (a 0/1 mask, an earlier flood map, the "
                 "JRC Global Surface Water occurrence layer). Water now and in the reference is permanent water; "
                 "water now only is flood water."))
    alg.addParameter(p)
    p = QgsProcessingParameterNumber(
        REFERENCE_THRESHOLD, tr("Reference raster: water where value >= (1 for a 0/1 mask, 50 for JRC occurrence)"),
        type=QgsProcessingParameterNumber.Type.Double, defaultValue=1.0)
    p.setHelp(tr("For a raster REFERENCE_WATER: 1 for a 0/1 mask or a Flood Mapper map, 50 for the JRC Global "
                 "Surface Water occurrence layer (percent of the time a pixel was water)."))
    alg.addParameter(p)


def add_extent_outputs(alg: QgsProcessingAlgorithm) -> None:
    alg.addOutput(QgsProcessingOutputNumber(FLOOD_PIXELS, tr("Flood water pixels")))
    alg.addOutput(QgsProcessingOutputNumber(FLOOD_AREA_KM2, tr("Flood water area (km²)")))
    alg.addOutput(QgsProcessingOutputNumber(PERMANENT_WATER_PIXELS, tr("Permanent water pixels")))
    alg.addOutput(QgsProcessingOutputNumber(PERMANENT_WATER_AREA_KM2, tr("Permanent water area (km²)")))
    alg.addOutput(QgsProcessingOutputNumber(NO_REFERENCE_PIXELS, tr("Valid pixels with no reference")))


def extent_values(result: MapFloodsResult) -> dict:
    return {
        FLOOD_PIXELS: result.flood_pixels,
        FLOOD_AREA_KM2: result.flood_area_km2,
        PERMANENT_WATER_PIXELS: result.permanent_water_pixels,
        PERMANENT_WATER_AREA_KM2: result.permanent_water_area_km2,
        NO_REFERENCE_PIXELS: result.no_reference_pixels,
    }


def area_text(value: float) -> str:
    """An area in km² for the log and the layer's abstract; NaN (a raster without a CRS) says so."""
    return tr("{area:.3f} km²").format(area=value) if not math.isnan(value) else tr("area unknown (no CRS)")


def extent_text(result: MapFloodsResult) -> str:
    """The flood figures for the log and the layer's abstract ("" without a reference)."""
    if not result.reference:
        return ""
    share = result.no_reference_pixels / result.valid_pixels if result.valid_pixels else 0.0
    return tr(
        "Flood water {flood:,} px, {flood_area}; permanent water {permanent:,} px, {permanent_area} "
        "(compared with {reference}). {no_ref:,} valid pixels ({share:.1%}) have no reference: their water "
        "counts as flood."
    ).format(flood=result.flood_pixels, flood_area=area_text(result.flood_area_km2),
             permanent=result.permanent_water_pixels, permanent_area=area_text(result.permanent_water_area_km2),
             reference=result.reference, no_ref=result.no_reference_pixels, share=share)


@dataclass
class LayerPolygons:
    """A polygon layer's features as GeoJSON-like geometries in the raster's CRS (read on the main thread)."""

    geometries: list[dict] = field(default_factory=list)
    crs_wkt: Optional[str] = None
    label: str = ""
    kind: str = ""  # the layer's geometry type, e.g. "MultiPolygon" or "LineString"


@dataclass
class ReferenceInputs:
    """What the user gave, read on the main thread; `error` is raised when the algorithm runs."""

    pre_event_path: str = ""
    pre_event_nodata: tuple = ()  # the pre-event layer's additional no data values (layer_nodata.NodataRange)
    pre_event_cloud_path: str = ""  # the pre-event image's cloud mask
    warnings: list = field(default_factory=list)  # what the layers' settings leave unfollowed
    reference_path: str = ""
    reference_threshold: float = 1.0
    polygons: Optional[LayerPolygons] = None
    error: Optional[InputError] = None

    def request_fields(self) -> dict:
        """The MapFloodsRequest fields; raises the error found when the layers were read, and the core's
        for a layer of points or lines."""
        if self.error is not None:
            raise self.error
        reference_polygons = None
        if self.polygons is not None:
            from ..core.reference import polygons_from

            p = self.polygons
            reference_polygons = polygons_from(p.geometries, p.crs_wkt, p.label, p.kind)
        return {"pre_event_path": self.pre_event_path, "pre_event_layer_nodata": self.pre_event_nodata,
                "pre_event_cloud_mask_path": self.pre_event_cloud_path,
                "reference_path": self.reference_path,
                "reference_threshold": self.reference_threshold, "reference_polygons": reference_polygons}


def read_reference_inputs(alg: QgsProcessingAlgorithm, parameters: dict, context: QgsProcessingContext,
                          grid_crs: QgsCoordinateReferenceSystem, grid_extent: QgsRectangle) -> ReferenceInputs:
    """PRE_EVENT and REFERENCE_WATER as paths or polygons (main thread: prepareAlgorithm)."""
    inputs = ReferenceInputs(reference_threshold=alg.parameterAsDouble(parameters, REFERENCE_THRESHOLD, context))
    try:
        if parameters.get(PRE_EVENT):
            layer = alg.parameterAsRasterLayer(parameters, PRE_EVENT, context)
            if layer is None:
                raise InputError(tr("PRE_EVENT is not a raster layer or a readable raster file."),
                                 tr("Choose a raster of the same place before the event, or leave it empty."))
            inputs.pre_event_path = layer_source(layer)
            inputs.pre_event_nodata, inputs.warnings = layer_nodata(layer)
        if parameters.get(PRE_EVENT_CLOUD_MASK):
            layer = alg.parameterAsRasterLayer(parameters, PRE_EVENT_CLOUD_MASK, context)
            if layer is None:
                raise InputError(tr("PRE_EVENT_CLOUD_MASK is not a raster layer or a readable raster file."),
                                 tr("Choose the pre-event scene's cloud raster (e.g. its SCL band), or leave it "
                                    "empty."))
            if inputs.pre_event_path:
                inputs.pre_event_cloud_path = layer_source(layer)
            else:
                inputs.warnings.append(tr("PRE_EVENT_CLOUD_MASK is set but PRE_EVENT is empty, so it is not used. "
                                          "Give the pre-event image too, or leave PRE_EVENT_CLOUD_MASK empty."))
        if parameters.get(REFERENCE_WATER):
            layer = alg.parameterAsLayer(parameters, REFERENCE_WATER, context)
            if isinstance(layer, QgsRasterLayer):
                inputs.reference_path = layer_source(layer)
            elif isinstance(layer, QgsVectorLayer):
                inputs.polygons = layer_polygons(layer, grid_crs, grid_extent, context)
            else:
                kind = tr("a {type} layer").format(type=layer.type()) if isinstance(layer, QgsMapLayer) else tr(
                    "not a layer or readable file")
                raise InputError(tr("REFERENCE_WATER is {kind}.").format(kind=kind),
                                 tr("Give a polygon layer or a water raster, or leave it empty."))
    except InputError as err:
        inputs.error = err
    return inputs


def layer_polygons(layer: QgsVectorLayer, crs: QgsCoordinateReferenceSystem, extent: QgsRectangle,
                   context: QgsProcessingContext) -> LayerPolygons:
    """The layer's polygons near `extent` (in `crs`), transformed to `crs`."""
    label = tr("the reference water layer '{name}'").format(name=layer.name())
    kind = QgsWkbTypes.displayString(layer.wkbType())
    if QgsWkbTypes.geometryType(layer.wkbType()) != POLYGON_GEOMETRY:
        return LayerPolygons([{"type": kind}], None, label, kind)  # the core refuses points and lines
    request = QgsFeatureRequest().setNoAttributes()
    if crs.isValid():
        # with a destination CRS, QGIS transforms the features and takes the filter rectangle in that CRS
        request.setDestinationCrs(crs, context.transformContext()).setFilterRect(extent)
    geometries = [json.loads(f.geometry().asJson()) for f in layer.getFeatures(request)
                  if f.hasGeometry() and not f.geometry().isEmpty()]
    return LayerPolygons(geometries, crs.toWkt() if crs.isValid() else None, label, kind)
