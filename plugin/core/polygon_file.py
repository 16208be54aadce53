"""A map's water areas as a GeoJSON file: one polygon per connected area of one class, with its class, its area in
m² and its pixel count, for the batch to hand on without QGIS.

GeoJSON as RFC 7946 defines it (WGS 84 longitude/latitude, 7 decimals: about a centimetre) is read by every GIS, web
map and phone app a response team shares maps with. The areas are measured on the map's own grid, as the batch's
table measures the water (stats.PixelArea), so a map's polygons add up to its water area in that table. The file is
written under a temporary name and moved into place whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .classes import CLASS_NAMES
from .errors import InputError
from .output import AtomicOutputs, write_failed
from .polygons import water_polygons
from .stats import PixelArea

SUFFIX = ".geojson"
DECIMALS = 7


@dataclass
class PolygonsWritten:
    path: str
    kept: int = 0
    dropped: int = 0  # smaller than the minimum area
    m2: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CLASS_NAMES.values(), 0.0))


def polygons_path(map_path: str) -> str:
    """The polygons file that goes with a map: its name with .geojson."""
    return os.path.splitext(map_path)[0] + SUFFIX


def write_water_geojson(map_path: str, target: str, min_area_m2: float = 0.0) -> PolygonsWritten:
    """Trace the water of the map at `map_path` into the GeoJSON file `target`, areas under `min_area_m2` left
    out. InputError for a map without a CRS (its polygons could not be placed on the Earth)."""
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.warp import transform_geom

    try:
        with rasterio.open(map_path) as ds:
            crs, transform = ds.crs, ds.transform
    except RasterioError as exc:
        raise InputError(f"The map {map_path} cannot be read: {exc}.",
                         "Map its raster again to replace it.") from None
    if crs is None:
        raise InputError(f"The map {map_path} has no coordinate reference system, so its water polygons cannot be "
                         "placed on the Earth.", "Give the input raster a CRS (Raster ▸ Projections ▸ Assign "
                         "Projection in QGIS, or gdal_edit.py -a_srs) and map it again.")
    area = PixelArea(crs.to_wkt(), transform)
    written = PolygonsWritten(target)
    outputs = AtomicOutputs([target], keep=map_path)
    try:
        with open(outputs.temps[0], "w", encoding="utf-8") as fh:
            fh.write('{"type": "FeatureCollection", "features": [\n')
            for polygon in water_polygons(map_path):
                m2 = area.of_polygon(polygon.rings, polygon.pixels)
                if m2 < min_area_m2:
                    written.dropped += 1
                    continue
                geometry = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": polygon.rings})
                coordinates = [[[round(x, DECIMALS), round(y, DECIMALS)] for x, y in ring]
                               for ring in geometry["coordinates"]]
                name = CLASS_NAMES[polygon.value]
                written.kept += 1
                written.m2[name] += m2
                feature = {"type": "Feature", "id": written.kept,
                           "properties": {"id": written.kept, "class": name, "area_m2": round(m2, 2),
                                          "pixels": polygon.pixels},
                           "geometry": {"type": "Polygon", "coordinates": coordinates}}
                fh.write(("" if written.kept == 1 else ",\n") + json.dumps(feature, separators=(",", ":")))
            fh.write("\n]}\n")
        outputs.commit()
    except OSError as exc:
        raise write_failed(target, exc, "water polygons file") from None
    finally:
        outputs.discard()
    return written
