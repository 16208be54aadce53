"""The block cache a tensor run asks for: two rows of the input's decoded blocks across the mapped width."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from plugin.core.tensor.block_cache import MARGIN, MAX_BYTES, MIN_BYTES, cache_bytes


def _tiff(path: Path, width: int, height: int, count: int, block: int, interleave: str = "pixel",
          res: float = 10.0) -> Path:
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype="uint16", tiled=True,
                   blockxsize=block, blockysize=block, compress="deflate", interleave=interleave,
                   crs="EPSG:32633", transform=from_origin(500000, 5000000, res, res))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ones((count, height, width), np.uint16))
    return path


def test_a_wide_pixel_interleaved_file_gets_two_block_rows_of_every_band(tmp_path):
    path = _tiff(tmp_path / "wide.tif", 12000, 64, 6, 512)
    with rasterio.open(path) as ds:
        got = cache_bytes(ds, [1, 2, 3], 512, ds.width)
    # 2 rows of 512-row blocks x 12000 px x 6 bands of 2 bytes (a block holds every band), with the margin
    assert got == int(2 * 512 * 12000 * 6 * 2 * MARGIN)


def test_a_band_interleaved_file_counts_the_bands_read_only(tmp_path):
    path = _tiff(tmp_path / "bands.tif", 20000, 64, 6, 512, interleave="band")
    with rasterio.open(path) as ds:
        three = cache_bytes(ds, [1, 2, 3], 512, ds.width)
        six = cache_bytes(ds, [1, 2, 3, 4, 5, 6], 512, ds.width)
    assert three == int(2 * 512 * 20000 * 3 * 2 * MARGIN)
    assert six == int(2 * 512 * 20000 * 6 * 2 * MARGIN)


def test_an_area_narrower_than_the_raster_needs_its_own_width_and_one_block_more(tmp_path):
    path = _tiff(tmp_path / "wide.tif", 16000, 64, 6, 512)
    with rasterio.open(path) as ds:
        got = cache_bytes(ds, [1], 512, 10000)
    assert got == int(2 * 512 * (10000 + 512) * 6 * 2 * MARGIN)


def test_small_and_huge_rasters_stay_within_the_bounds(tmp_path):
    small = _tiff(tmp_path / "small.tif", 512, 512, 6, 256)
    huge = _tiff(tmp_path / "huge.tif", 60000, 16, 6, 1024, interleave="band")
    with rasterio.open(small) as ds:
        assert cache_bytes(ds, [1, 2, 3, 4, 5, 6], 512, ds.width) == MIN_BYTES
    with rasterio.open(huge) as ds:
        assert cache_bytes(ds, [1, 2, 3, 4, 5, 6], 512, ds.width) == MAX_BYTES


def test_a_stack_of_band_files_counts_each_source_at_its_own_resolution_and_block_size(tmp_path):
    from osgeo import gdal

    fine = _tiff(tmp_path / "B02_10m.tif", 20000, 16, 1, 1024)
    coarse = _tiff(tmp_path / "B11_20m.tif", 10000, 8, 1, 1024, res=20.0)
    vrt = tmp_path / "stack.vrt"
    gdal.BuildVRT(str(vrt), [str(fine), str(coarse)], separate=True, resolution="highest").FlushCache()
    assert "BlockYSize" in vrt.read_text()
    with rasterio.open(vrt) as ds:
        assert ds.block_shapes[0] != (1024, 1024)  # the VRT's own blocks are not what is decoded
        got = cache_bytes(ds, [1, 2], 512, ds.width)
    # 10 m: two rows of 1024-row blocks x 20000 px; 20 m: the same rows of its own blocks x 10000 px
    assert got == int((2 * 1024 * 20000 * 2 + 2 * 1024 * 10000 * 2) * MARGIN)
    assert got > MIN_BYTES


@pytest.mark.parametrize("text", ["<VRTDataset", "<VRTDataset></VRTDataset>"])
def test_a_vrt_whose_sources_cannot_be_read_falls_back_to_its_own_blocks(tmp_path, text):
    from osgeo import gdal

    fine = _tiff(tmp_path / "B02.tif", 20000, 16, 1, 1024)
    vrt = tmp_path / "stack.vrt"
    gdal.BuildVRT(str(vrt), [str(fine)]).FlushCache()
    with rasterio.open(vrt) as ds:
        vrt.write_text(text)  # the file changed under the open dataset: its XML no longer says the sources
        block_h, _ = ds.block_shapes[0]
        assert cache_bytes(ds, [1], 512, ds.width) == max(MIN_BYTES, int(2 * max(block_h, 512) * 20000 * 2 * MARGIN))
