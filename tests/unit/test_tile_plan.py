"""The plan of tiles to send: which tiles have a pixel to map, and the order the input's blocks are read in."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window

from plugin.core.area_of_interest import whole_area
from plugin.core.raster import inspect, valid_mask
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


def exact(path, grid, bands):
    """Per tile: whether a pixel of it has data in every used band (the run's own rule, raster.valid_mask)."""
    out = np.zeros((grid.n_rows, grid.n_cols), bool)
    with rasterio.open(path) as ds:
        for tile in grid:
            width, height = min(tile.width, ds.width - tile.x0), min(tile.height, ds.height - tile.y0)
            window = Window(tile.x0, tile.y0, width, height)
            out[tile.row, tile.col] = valid_mask(ds, [b - 1 for b in bands], window).any()
    return out


def test_the_tiles_planned_are_those_with_data_when_the_bands_share_their_nodata(holed):
    path, _ = holed
    grid, send = plan(path)
    expected = exact(path, grid, range(1, 7))
    np.testing.assert_array_equal(send, expected)
    assert expected.any() and not expected.all()


def write(path, data, **kw):
    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=data.dtype,
                       crs="EPSG:32633", transform=from_origin(500000, 4200000, 10, 10), **kw) as dst:
        dst.write(data)
    return str(path)


@pytest.mark.parametrize("kind", ["nodata per band", "NaN", "alpha", "float, no nodata"])
def test_no_tile_with_a_pixel_to_map_is_left_out(tmp_path, kind):
    """Whatever each band lacks: every tile with a pixel that has data in all bands is planned."""
    rng = np.random.default_rng(11)
    size, count = 300, 4
    grid = TileGrid.build(size, size, 64, 64, 8, 8)
    for trial in range(4):
        holes = rng.random((count, size // 10, size // 10)) < 0.6  # per band: 10 px cells without data
        holes = holes.repeat(10, axis=1).repeat(10, axis=2)
        bands = list(range(1, count + 1))
        if kind == "nodata per band":
            data = rng.integers(1, 3000, (count, size, size)).astype(np.uint16)
            data[holes] = 0
            path = write(tmp_path / f"{trial}.tif", data, nodata=0)
        elif kind == "NaN" or kind == "float, no nodata":
            data = rng.random((count, size, size)).astype(np.float32) + 0.01
            data[holes] = np.nan if kind == "NaN" else 0.0
            path = write(tmp_path / f"{trial}.tif", data)
        else:  # a band of alpha after the data, which GDAL does not apply to them
            data = rng.integers(1, 3000, (count + 1, size, size)).astype(np.uint16)
            data[-1] = np.where(holes[0], 0, 255)
            data[1][holes[1]] = 0
            path = write(tmp_path / f"{trial}.tif", data, nodata=None, photometric="MINISBLACK")
            with rasterio.open(path, "r+") as ds:
                ds.colorinterp = [ColorInterp.gray] * count + [ColorInterp.alpha]
        area = whole_area(inspect(path))
        with rasterio.open(path) as ds:
            send = tile_plan.tiles_to_send(ds, bands, grid, area)
        expected = exact(path, grid, bands)
        assert (send | ~expected).all(), f"{kind}, trial {trial}: tiles with data left out"
        assert expected.any()


def test_the_blocks_are_read_from_the_last_to_the_first(holed, monkeypatch):
    """The first tiles of the run read the blocks the plan read last: those are still in GDAL's block cache."""
    path, _ = holed
    windows = []
    read = tile_plan.band_valid

    def spy(ds, band, alpha, window):
        windows.append((int(window.row_off), int(window.col_off)))
        return read(ds, band, alpha, window)

    monkeypatch.setattr(tile_plan, "band_valid", spy)
    plan(path)
    assert windows[-1] == (0, 0)  # the first tile's block, read last
    rows = [row for row, _ in windows]
    assert rows == sorted(rows, reverse=True) and rows[0] == 2048


def vrt_band(number, name, size):
    return f"""  <VRTRasterBand dataType="UInt16" band="{number}">
    <NoDataValue>0</NoDataValue>
    <ComplexSource>
      <SourceFilename relativeToVRT="1">{name}</SourceFilename>
      <SourceBand>1</SourceBand>
      <SrcRect xOff="0" yOff="0" xSize="{size}" ySize="{size}" />
      <DstRect xOff="0" yOff="0" xSize="400" ySize="400" />
      <NODATA>0</NODATA>
    </ComplexSource>
  </VRTRasterBand>
"""


def test_a_stack_of_band_files_is_planned_from_its_coarsest_band(tmp_path, monkeypatch):
    """A 10 m stack of 10 m and 20 m band files: the 20 m file is a quarter of the pixels to decode."""
    rng = np.random.default_rng(5)
    fine = rng.integers(1, 3000, (1, 400, 400)).astype(np.uint16)
    fine[:, :, 300:] = 0  # the swath's edge
    fine[:, 10:30, 10:30] = 0
    coarse = rng.integers(1, 3000, (1, 200, 200)).astype(np.uint16)
    coarse[:, :, 140:] = 0  # the edge, a little further in at 20 m
    coarse[:, 100:140, 100:140] = 0
    for name, data, res in (("b02.tif", fine, 10), ("b8a.tif", coarse, 20)):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=1,
                           dtype="uint16", nodata=0, crs="EPSG:32633",
                           transform=from_origin(500000, 4200000, res, res)) as dst:
            dst.write(data)
    vrt = tmp_path / "stack.vrt"
    vrt.write_text('<VRTDataset rasterXSize="400" rasterYSize="400">\n  <SRS>EPSG:32633</SRS>\n'
                   "  <GeoTransform>500000, 10, 0, 4200000, 0, -10</GeoTransform>\n"
                   + vrt_band(1, "b02.tif", 400) + vrt_band(2, "b8a.tif", 200) + vrt_band(3, "b02.tif", 400)
                   + "</VRTDataset>\n")
    read = []
    band_valid = tile_plan.band_valid
    monkeypatch.setattr(tile_plan, "band_valid", lambda ds, band, *a: read.append(band) or band_valid(ds, band, *a))
    grid = TileGrid.build(400, 400, 64, 64, 8, 8)
    with rasterio.open(vrt) as ds:
        assert tile_plan.scan_band(ds, [1, 2, 3]) == 2
        assert tile_plan.scan_band(ds, [3, 1]) == 3  # the first on a tie
        send = tile_plan.tiles_to_send(ds, [1, 2, 3], grid, whole_area(inspect(str(vrt))))
    assert set(read) == {2}
    expected = exact(str(vrt), grid, [1, 2, 3])
    assert (send | ~expected).all() and expected.any() and not send.all()
