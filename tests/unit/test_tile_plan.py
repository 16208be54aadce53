"""The plan of tiles to send: which tiles have a pixel to map, and the order the input's blocks are read in."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from plugin.core.area_of_interest import whole_area
from plugin.core.raster import inspect
from plugin.core.tensor import tile_plan
from plugin.core.tensor.tiling import TileGrid

WIDTH, HEIGHT = 2600, 2200  # 3 x 3 blocks of the plan's 1024 px


@pytest.fixture
def holed(tmp_path):
    """6 bands with nodata 0: a hole of no data in the middle, and a pixel with data in one band only."""
    data = np.full((6, HEIGHT, WIDTH), 1200, np.uint16)
    data[:, 500:1700, 600:2000] = 0
    data[2, 1000, 1000] = 7  # data in band 3 alone: not a pixel to map
    path = tmp_path / "holed.tif"
    with rasterio.open(path, "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=6, dtype="uint16", nodata=0,
                       crs="EPSG:32633", transform=from_origin(500000, 4200000, 10, 10), tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate") as dst:
        dst.write(data)
    return str(path), data


def plan(path):
    area = whole_area(inspect(path))
    grid = TileGrid.build(WIDTH, HEIGHT, 512, 512, 64, 64)
    with rasterio.open(path) as ds:
        return grid, tile_plan.tiles_to_send(ds, list(range(1, 7)), grid, area)


def test_a_tile_is_sent_when_a_pixel_has_data_in_every_band(holed):
    path, data = holed
    grid, send = plan(path)
    valid = (data != 0).all(axis=0)
    expected = np.zeros_like(send)
    for tile in grid:
        expected[tile.row, tile.col] = valid[tile.y0:tile.y0 + tile.height, tile.x0:tile.x0 + tile.width].any()
    np.testing.assert_array_equal(send, expected)
    assert expected.any() and not expected.all()


def test_the_blocks_are_read_from_the_last_to_the_first(holed, monkeypatch):
    """The first tiles of the run read the blocks the plan read last: those are still in GDAL's block cache."""
    path, _ = holed
    windows = []
    read = tile_plan.valid_mask

    def spy(ds, indices, window):
        windows.append((int(window.row_off), int(window.col_off)))
        return read(ds, indices, window)

    monkeypatch.setattr(tile_plan, "valid_mask", spy)
    plan(path)
    assert windows[-1] == (0, 0)  # the first tile's block, read last
    rows = [row for row, _ in windows]
    assert rows == sorted(rows, reverse=True) and rows[0] == 2048
