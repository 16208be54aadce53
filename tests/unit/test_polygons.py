"""Water polygons follow pixel edges: their pixel counts and areas add up to the raster's."""

from __future__ import annotations

import numpy as np
import rasterio
from rasterio.transform import from_origin

from plugin.core.polygons import water_polygons


def _write(path, classes, pixel=10.0):
    with rasterio.open(path, "w", driver="GTiff", width=classes.shape[1], height=classes.shape[0], count=1,
                       dtype="uint8", nodata=255, crs="EPSG:32633",
                       transform=from_origin(500000, 4600000, pixel, pixel)) as ds:
        ds.write(classes, 1)


def test_polygons_count_pixels_and_keep_holes(tmp_path):
    classes = np.zeros((40, 50), np.uint8)
    classes[5:25, 5:30] = 1          # a lake ...
    classes[10:15, 10:15] = 0        # ... with an island
    classes[30:32, 40:41] = 1        # a 2-pixel speck
    classes[0:3, 45:50] = 255        # nodata is not water
    path = tmp_path / "c.tif"
    _write(path, classes)
    polys = list(water_polygons(str(path)))
    assert sorted(p.pixels for p in polys) == [2, 20 * 25 - 25]
    lake = max(polys, key=lambda p: p.pixels)
    assert len(lake.rings) == 2  # exterior + the island's hole
    assert sum(p.pixels for p in polys) == int((classes == 1).sum())
