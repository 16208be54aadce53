"""Map floods' area parameters (EXTENT, MASK, CLOUD_MASK, CLOUD_VALUES, and the CLOUD_* outputs), turned into
the plain values the core takes: the extent and the mask polygons in the raster's CRS (QGIS's own coordinate
transforms, with the project's transform context), the cloud raster's GDAL source and the cloud values.
"""

from __future__ import annotations

import json
import re

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeatureRequest,
    QgsGeometry,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingOutputNumber,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from ..core.cloud_values import DEFAULT_CLOUD_VALUES, format_values, parse_cloud_bits, parse_cloud_values
from ..core.errors import InputError
from ..core.jobs import MapFloodsRequest, MapFloodsResult
from ..toolbelt.i18n import tr

EXTENT = "EXTENT"
MASK = "MASK"
CLOUD_MASK = "CLOUD_MASK"
CLOUD_VALUES = "CLOUD_VALUES"
CLOUD_PIXELS = "CLOUD_PIXELS"
CLOUD_FRACTION = "CLOUD_FRACTION"

_NUMBER = r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
_EXTENT_TEXT = re.compile(rf"^{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}(\[.*\])?\s*$")


def add_parameters(alg: QgsProcessingAlgorithm) -> None:
    """The area parameters and the cloud figures, in the order the dialog shows them."""
    p = QgsProcessingParameterExtent(EXTENT, tr("Area to map (extent; empty = the whole raster)"), optional=True)
    p.setHelp(tr("Only this area is mapped and sent to the server, in any CRS (e.g. the map canvas extent). "
                 "The flood map is the input's grid cut to it: pixel-aligned, never resampled."))
    alg.addParameter(p)
    p = QgsProcessingParameterFeatureSource(MASK, tr("Mask polygons (only inside them is mapped)"),
                                            [QgsProcessing.SourceType.TypeVectorPolygon], optional=True)
    p.setHelp(tr("Pixels whose centre is outside the polygons (or in a hole) are nodata and are not sent to the "
                 "model. Any CRS; with EXTENT, both apply."))
    alg.addParameter(p)
    p = QgsProcessingParameterRasterLayer(CLOUD_MASK, tr("Cloud mask (e.g. the Sentinel-2 L2A SCL band)"),
                                          optional=True)
    p.setHelp(tr("Pixels with a cloud value here are nodata in the flood map. Any CRS and resolution (brought "
                 "onto the input's grid with nearest neighbour)."))
    alg.addParameter(p)
    p = QgsProcessingParameterString(CLOUD_VALUES, tr("Cloud values in the cloud mask (comma-separated)"),
                                     defaultValue=format_values(DEFAULT_CLOUD_VALUES).replace(" ", ""),
                                     optional=True)
    p.setHelp(tr("3,8,9,10 are cloud shadow, medium and high probability cloud and thin cirrus in the Sentinel-2 "
                 "L2A scene classification (SCL); use 1 for a 0/1 cloud mask, bits:1,2,3,4 for the cloud bits of a "
                 "bit-flag quality band whose name no longer says what it is. With these default values, a Landsat "
                 "QA_PIXEL, HLS Fmask or Sentinel-2 QA60 band (known by its file name) is read by its cloud bits "
                 "instead, and a Sentinel-2 MSK_CLASSI_B00 by its opaque-cloud and cirrus bands. A multi-band "
                 "cloud mask (e.g. an Earth Engine export with an SCL or QA60 band) is read by the band so "
                 "described."))
    alg.addParameter(p)
    alg.addOutput(QgsProcessingOutputNumber(CLOUD_PIXELS, tr("Cloud-masked pixels")))
    alg.addOutput(QgsProcessingOutputNumber(CLOUD_FRACTION, tr("Cloud-masked share of the pixels with data")))


def check_values(alg: QgsProcessingAlgorithm, parameters: dict, context: QgsProcessingContext) -> tuple[bool, str]:
    """The area parameters' own checks, before any run: (ok, message with the problem and the fix)."""
    try:
        _cloud_rule(alg.parameterAsString(parameters, CLOUD_VALUES, context))
        _extent_problem(alg, parameters, context)
    except InputError as err:
        return False, str(err)
    return True, ""


def _extent_problem(alg: QgsProcessingAlgorithm, parameters: dict, context: QgsProcessingContext) -> None:
    value = parameters.get(EXTENT)
    if value is None or value == "":
        return
    definition = alg.parameterDefinition(EXTENT)
    text = value.strip() if isinstance(value, str) else ""
    if text and not definition.checkValueIsAcceptable(value, context):
        raise InputError(f"EXTENT '{text}' is not an extent.",
                         "Give xmin,xmax,ymin,ymax with an optional [EPSG:code] (e.g. 500000,510000,4990000,"
                         "5000000 [EPSG:32633]), a layer whose extent to use, or draw it on the map canvas.")
    match = _EXTENT_TEXT.match(text)
    if match:
        xmin, xmax, ymin, ymax = (float(match.group(i)) for i in range(1, 5))
        if xmin > xmax or ymin > ymax:
            raise InputError(f"EXTENT '{text}' has a minimum above its maximum.",
                             "QGIS reads an extent as xmin,xmax,ymin,ymax: check the order of the numbers.")
    rect = alg.parameterAsExtent(parameters, EXTENT, context)
    if rect.isNull() or rect.isEmpty() or not rect.isFinite():
        raise InputError(f"EXTENT '{text or rect.toString()}' is empty (no width or no height).",
                         "Draw an extent with an area (or use the map canvas extent), or leave EXTENT empty to "
                         "map the whole raster.")


def cloud_source(alg: QgsProcessingAlgorithm, parameters: dict, context: QgsProcessingContext) -> str:
    """The cloud mask's GDAL source ("" for none); read on the main thread, with the input layer."""
    from .layer_inputs import layer_source

    if parameters.get(CLOUD_MASK) in (None, ""):
        return ""
    layer = alg.parameterAsRasterLayer(parameters, CLOUD_MASK, context)
    if layer is None:
        raise InputError(f"CLOUD_MASK '{parameters.get(CLOUD_MASK)}' is not a raster layer or a readable raster "
                         "file.", "Choose the scene's cloud raster (e.g. its SCL band), or leave CLOUD_MASK empty.")
    return layer_source(layer)


def fill_request(request: MapFloodsRequest, alg: QgsProcessingAlgorithm, parameters: dict,
                 context: QgsProcessingContext, raster_crs: QgsCoordinateReferenceSystem, cloud_path: str) -> None:
    """The area fields of the request, in the raster's CRS; InputError (the problem and the fix) when bad."""
    ok, message = check_values(alg, parameters, context)
    if not ok:
        raise InputError(message)
    if parameters.get(EXTENT) not in (None, ""):
        rect = alg.parameterAsExtent(parameters, EXTENT, context, raster_crs)
        request.extent = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
    if parameters.get(MASK) not in (None, ""):
        request.mask_polygons = _mask_polygons(alg, parameters, context, raster_crs)
    request.cloud_mask_path = cloud_path
    request.cloud_values, request.cloud_bits = _cloud_rule(alg.parameterAsString(parameters, CLOUD_VALUES, context))


def _cloud_rule(text: str) -> tuple:
    """CLOUD_VALUES as (cloud values, cloud bits): "3,8,9,10" -> ((3, 8, 9, 10), ()); "bits:1-4" -> (None,
    (1, 2, 3, 4)). InputError (the problem and the fix) for anything else."""
    bits = parse_cloud_bits(text)
    return (None, bits) if bits is not None else (parse_cloud_values(text), ())


def _mask_polygons(alg: QgsProcessingAlgorithm, parameters: dict, context: QgsProcessingContext,
                   raster_crs: QgsCoordinateReferenceSystem) -> list[dict]:
    source = alg.parameterAsSource(parameters, MASK, context)
    if source is None:
        raise InputError(f"MASK '{parameters.get(MASK)}' is not a polygon layer.",
                         "Choose a polygon layer (or file) with the area to map, or leave MASK empty.")
    features = QgsFeatureRequest()
    if raster_crs.isValid():
        features.setDestinationCrs(raster_crs, context.transformContext())
    polygons = []
    for feature in source.getFeatures(features):
        geometry = feature.geometry()
        if geometry.isNull() or geometry.isEmpty():
            continue
        if geometry.constGet().hasCurvedSegments():
            geometry = QgsGeometry(geometry.constGet().segmentize())
        polygons.append(json.loads(geometry.asJson(17)))
    return polygons


def cloud_summary(result: MapFloodsResult, cloud_path: str) -> str:
    """The cloud figures for the summary line ("" without a cloud mask)."""
    if not cloud_path:
        return ""
    return tr("Cloud-masked: {pixels:,} pixels ({fraction:.2%} of the area's pixels with data).").format(
        pixels=result.cloud_pixels, fraction=result.cloud_fraction)


def cloud_outputs(result: MapFloodsResult) -> dict:
    return {CLOUD_PIXELS: result.cloud_pixels, CLOUD_FRACTION: result.cloud_fraction}
