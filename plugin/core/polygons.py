"""Water areas of a class raster as polygons (QGIS-free; rasterio.features does the tracing).

Polygons follow pixel edges exactly, so their summed area equals the raster's water area (up to the
area model: planar in projected CRSs, ellipsoidal where the caller measures it so). Holes (islands) are kept.
On a flood-extent map, flood water and permanent water are traced apart: each polygon has one class.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .classes import CLASS_FLOOD, WATER_CLASSES


@dataclass
class WaterPolygon:
    rings: list[list[tuple[float, float]]]  # exterior first, then holes; map coordinates
    pixels: int
    value: int = CLASS_FLOOD  # the class: 1 = flood water (or water, without a reference), 2 = permanent water


def water_polygons(path: str, connectivity: int = 4) -> Iterator[WaterPolygon]:
    """Yield one polygon per connected area of one water class."""
    import rasterio
    from rasterio import features

    with rasterio.open(path) as ds:
        classes = ds.read(1)
        transform = ds.transform
    water = np.isin(classes, WATER_CLASSES)
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    for geom, value in features.shapes(np.where(water, classes, 0).astype(np.uint8), mask=water,
                                       transform=transform, connectivity=connectivity):
        if int(value) not in WATER_CLASSES:
            continue
        rings = [[(float(x), float(y)) for x, y in ring] for ring in geom["coordinates"]]
        area = _ring_area(rings[0]) - sum(_ring_area(r) for r in rings[1:])
        yield WaterPolygon(rings, int(round(area / pixel_area)) if pixel_area else 0, int(value))


def _ring_area(ring: list[tuple[float, float]]) -> float:
    xs = np.array([p[0] for p in ring])
    ys = np.array([p[1] for p in ring])
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2.0)
