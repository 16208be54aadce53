"""The optional WATER_POLYGONS output: the flood map's water areas traced into a feature sink, each with its
class (`flood`, or `permanent` on a map compared with a reference), its ellipsoidal area in m² and its pixel
count; areas under MIN_AREA left out."""

from __future__ import annotations

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsDistanceArea,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingFeedback,
)

from ..core.classes import CLASS_NAMES
from ..toolbelt.compat import FIELD_DOUBLE, FIELD_INT, FIELD_STRING, WKB_POLYGON
from ..toolbelt.i18n import tr

DEFAULT_ELLIPSOID = "EPSG:7030"  # WGS 84, where no project gives one (qgis_process, scripts)
# the `class` field holds a class name: a length of its own, so a Shapefile (254 at most) takes it without a warning
CLASS_FIELD_LENGTH = 16


def write_water_polygons(alg: QgsProcessingAlgorithm, parameters: dict, name: str, min_area: float,
                         context: QgsProcessingContext, feedback: QgsProcessingFeedback,
                         classes_path: str) -> str | None:
    """Trace water areas into the sink parameter `name`; its destination id, or None when not asked for."""
    if not parameters.get(name):
        return None
    import rasterio

    from ..core.polygons import water_polygons

    with rasterio.open(classes_path) as ds:
        crs = QgsCoordinateReferenceSystem.fromWkt(ds.crs.to_wkt()) if ds.crs else QgsCoordinateReferenceSystem()
    fields = QgsFields()
    fields.append(QgsField("id", FIELD_INT))
    fields.append(QgsField("class", FIELD_STRING, "", CLASS_FIELD_LENGTH))
    fields.append(QgsField("area_m2", FIELD_DOUBLE))
    fields.append(QgsField("pixels", FIELD_INT))
    sink, dest_id = alg.parameterAsSink(parameters, name, context, fields, WKB_POLYGON, crs)
    if sink is None:
        return None
    measure = QgsDistanceArea()
    measure.setSourceCrs(crs, context.transformContext())
    ellipsoid = context.ellipsoid()
    measure.setEllipsoid(DEFAULT_ELLIPSOID if not ellipsoid or ellipsoid.upper() == "NONE" else ellipsoid)
    kept = dropped = 0
    areas = {name: 0.0 for name in CLASS_NAMES.values()}
    for polygon in water_polygons(classes_path):
        if feedback.isCanceled():
            break
        geometry = QgsGeometry.fromPolygonXY([[QgsPointXY(x, y) for x, y in ring] for ring in polygon.rings])
        area = measure.measureArea(geometry)
        if area < min_area:
            dropped += 1
            continue
        kept += 1
        name = CLASS_NAMES[polygon.value]
        areas[name] += area
        feature = QgsFeature(fields)
        feature.setGeometry(geometry)
        feature.setAttributes([kept, name, area, polygon.pixels])
        sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert)
    feedback.pushInfo(tr("Water polygons: {kept} kept ({flood:.3f} km² flood, {permanent:.3f} km² permanent), "
                         "{dropped} smaller than {min} m² left out.").format(
        kept=kept, flood=areas["flood"] / 1e6, permanent=areas["permanent"] / 1e6, dropped=dropped, min=min_area))
    return dest_id
