"""Reference water given as a file: a raster is used where it lies, a vector file's polygons are read.

QGIS hands its layers' polygons over itself; this reader is for the offline batch and plain Python. It uses
GDAL through whichever binding the Python at hand has: pyogrio in the vLLM environment, GDAL's own `osgeo.ogr`
in QGIS's Python. `path|layername=NAME` picks a layer of a multi-layer file, as in QGIS.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from .errors import InputError
from .reference import PolygonReference, RasterReference, Reference, polygons_from


def reference_from_path(path: str, threshold: float = 1.0) -> Reference:
    """REFERENCE_WATER given as a file: a raster (water >= threshold) or polygons (read now)."""
    from rasterio.errors import RasterioError

    name = os.path.basename(split_layer(path)[0])
    if not os.path.exists(split_layer(path)[0]) and not path.startswith(("/vsi", "http://", "https://")):
        raise InputError(f"The reference water '{path}' does not exist.", "Give an existing raster or polygon file.")
    try:
        import rasterio

        with rasterio.open(path):
            pass
    except RasterioError:
        return read_polygons(path, f"the reference water '{name}'")
    return RasterReference(path, float(threshold), f"the reference water '{name}'")


def split_layer(path: str) -> tuple[str, Optional[str]]:
    """'water.gpkg|layername=lakes' -> ('water.gpkg', 'lakes'); a plain path -> (path, None)."""
    base, _, options = path.partition("|")
    for option in options.split("|"):
        key, _, value = option.partition("=")
        if key.strip().lower() == "layername" and value:
            return base, value
    return base, None


WATER_FILES = "a polygon file GDAL reads (GeoPackage, shapefile, GeoJSON...) or a water raster"


def read_polygons(path: str, label: str = "") -> PolygonReference:
    """The file's polygons (in its own CRS) as a PolygonReference; InputError for unreadable files, points
    or lines. `label` names the reference in messages."""
    geometries, crs, kind = read_geometries(path)
    return polygons_from(geometries, crs, label or f"the reference water polygons '{path}'", kind)


def read_geometries(path: str, what: str = WATER_FILES) -> tuple[list[dict], Optional[str], str]:
    """The file's geometries (GeoJSON-like, in its own CRS), the CRS (WKT or "EPSG:n"; None when it has none) and
    the layer's geometry type; InputError, saying to give `what`, when the file cannot be read."""
    file, layer = split_layer(path)
    try:
        import pyogrio  # noqa: F401 - the vLLM environment
    except ImportError:
        return _read_ogr(file, layer, what)
    return _read_pyogrio(file, layer, what)


def _not_readable(path: str, detail: str, what: str) -> InputError:
    return InputError(f"Cannot read the vector file '{path}': {detail.rstrip('.')}.", f"Give {what}.")


def _read_pyogrio(path: str, layer: Optional[str], what: str) -> tuple[list[dict], Optional[str], str]:
    import pyogrio
    import shapely
    from shapely.geometry import mapping

    try:
        info = pyogrio.read_info(path, layer=layer)
        _, _, wkb, _ = pyogrio.raw.read(path, layer=layer, read_geometry=True, columns=[])
    except Exception as exc:  # noqa: BLE001 - pyogrio raises its own and GDAL's errors
        raise _not_readable(path, str(exc), what) from None
    geometries = [mapping(g) for g in shapely.from_wkb(wkb) if g is not None and not g.is_empty]
    return geometries, info.get("crs"), str(info.get("geometry_type") or "")  # crs: "EPSG:4326" or WKT


def _read_ogr(path: str, layer: Optional[str], what: str) -> tuple[list[dict], Optional[str], str]:
    try:
        from osgeo import ogr
    except ImportError:
        raise InputError(
            "Reading a vector file needs GDAL's Python bindings (pyogrio or osgeo), and this Python has neither.",
            f"Install python3-gdal (Debian/Ubuntu) or pyogrio{', or give a water raster' * (what == WATER_FILES)}."
        ) from None
    ogr.UseExceptions()
    try:
        source = ogr.Open(path)
    except RuntimeError as exc:
        raise _not_readable(path, str(exc), what) from None
    if source is None or source.GetLayerCount() == 0:
        raise _not_readable(path, "it holds no vector layer", what)
    lyr = source.GetLayerByName(layer) if layer else source.GetLayer(0)
    if lyr is None:
        raise _not_readable(path, f"it has no layer '{layer}'", what)
    srs = lyr.GetSpatialRef()
    kind = ogr.GeometryTypeToName(lyr.GetGeomType())
    geometries = []
    for feature in lyr:
        geom = feature.GetGeometryRef()
        if geom is not None and not geom.IsEmpty():
            geometries.append(json.loads(geom.ExportToJson()))
    return geometries, srs.ExportToWkt() if srs is not None else None, kind
