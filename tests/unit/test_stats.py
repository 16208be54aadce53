"""Water statistics accumulated window by window (plugin/core/stats.py)."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from plugin.core.classes import NODATA
from plugin.core.stats import StatsAccumulator

GRIDS = {  # the CRS, the grid, and the shape of its pixel areas over the whole test window
    "projected": ("EPSG:32633", Affine(10, 0, 500000, 0, -10, 5000000), ()),  # one area for every pixel
    "geographic": ("EPSG:4326", Affine(0.001, 0, 10, 0, -0.001, 60), (120, 1)),  # one area per row
    "rotated": ("EPSG:4326", Affine(0.001, 0.0002, 10, 0.0002, -0.001, 60), (120, 90)),  # one per pixel
}


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_counts_and_area_are_the_sums_over_the_water_pixels(grid):
    crs, transform, cell_shape = GRIDS[grid]
    rng = np.random.default_rng(7)
    classes = rng.choice(np.array([0, 1, 2, NODATA], np.uint8), size=(120, 90))
    valid = (classes != NODATA) & (rng.random(classes.shape) > 0.1)
    acc = StatsAccumulator(CRS.from_string(crs).to_wkt(), transform)
    for y0 in range(0, 120, 50):  # three windows, the last one shorter
        rows = slice(y0, min(y0 + 50, 120))
        acc.add(Window(0, y0, 90, rows.stop - y0), classes[rows], valid[rows])
    water = valid & ((classes == 1) | (classes == 2))
    cell = acc.area.rows(Window(0, 0, 90, 120))
    assert np.shape(cell) == cell_shape
    cell = np.broadcast_to(cell, classes.shape)
    assert (acc.water, acc.valid) == (int(water.sum()), int(valid.sum()))
    assert 0 < acc.water < acc.valid
    assert acc.water_m2 == pytest.approx(float(cell[water].sum()), rel=1e-12)
    result = acc.result()
    assert result.water_fraction == pytest.approx(acc.water / acc.valid)
