"""The tensor transport's map writer: row bands of any height, rows put back from an earlier run, and rows read back
mid-run give the map of the logits (argmax, softmax) from their scores; the finished rows of blocks reach the disk
during the run, not at its end."""

from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from plugin.core.classes import NODATA
from plugin.core.model_spec import ModelSpec
from plugin.core.tensor import scores
from plugin.core.tensor.writer import PROBABILITY_NODATA, MapWriter

SPEC = ModelSpec(channels=6, tile_height=512, tile_width=512, num_classes=2, means=[0.0] * 6, stds=[1.0] * 6)


class Grid:
    """The input's grid, as MapWriter reads it from a dataset."""

    crs = CRS.from_epsg(32633)
    transform = from_origin(500000, 5000000, 10, 10)

    def __init__(self, width: int, height: int, name: str) -> None:
        self.width, self.height, self.name = width, height, name


def logits_and_validity(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 2, (2, height, width)).astype(np.float32)
    valid = np.ones((height, width), bool)
    valid[300:340, 100:260] = False  # a stretch of nodata across a band's edge
    return logits, valid


def margin(logits: np.ndarray) -> np.ndarray:
    """What the writer is given for a two-class model: the water margin."""
    return scores.of_tile(logits, SPEC)


def assert_probability(got: np.ndarray, expected: np.ndarray) -> None:
    """The logistic function of the margin is the softmax of the two logits, to float32's rounding."""
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def expected_maps(logits: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes = np.where(valid, (logits[1] > logits[0]).astype(np.uint8), NODATA)
    e = np.exp(logits - logits.max(axis=0))
    probability = np.where(valid, (e[1] / e.sum(axis=0)).astype(np.float32), np.float32(PROBABILITY_NODATA))
    return classes, probability


def read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.mark.parametrize("heights", [[100, 300, 37, 163], [256, 256, 88], [600]])
def test_bands_of_any_height_give_the_map_of_their_logits(tmp_path, heights):
    width, height = 700, sum(heights)
    logits, valid = logits_and_validity(height, width)
    classes, probability = expected_maps(logits, valid)
    writer = MapWriter(Grid(width, height, str(tmp_path / "in.tif")), str(tmp_path / "flood.tif"),
                       str(tmp_path / "probability.tif"), SPEC)
    assert writer.files[0].block_shapes[0] == (256, 256)  # bands across blocks, and rows held between bands
    y0 = 0
    for h in heights:
        writer.sink(y0, margin(logits[:, y0:y0 + h]), valid[y0:y0 + h])
        y0 += h
        got_classes, got_probability = writer.read_rows(0, y0)  # what is on disk and what is held, together
        np.testing.assert_array_equal(got_classes, classes[:y0])
        assert_probability(got_probability, probability[:y0])
    writer.commit()
    np.testing.assert_array_equal(read(tmp_path / "flood.tif"), classes)
    assert_probability(read(tmp_path / "probability.tif"), probability)
    assert writer.stats.result().water_pixels == int((classes == 1).sum())


def test_rows_put_back_from_an_earlier_run_and_read_across_the_held_ones(tmp_path):
    width, height = 520, 600
    logits, valid = logits_and_validity(height, width)
    classes, probability = expected_maps(logits, valid)
    writer = MapWriter(Grid(width, height, str(tmp_path / "in.tif")), str(tmp_path / "flood.tif"),
                       str(tmp_path / "probability.tif"), SPEC)
    writer.replay(0, classes[:300], probability[:300])  # an earlier run's kept rows: 256 written, 44 held
    writer.sink(300, margin(logits[:, 300:420]), valid[300:420])  # no row of blocks finished: 256-419 held
    got = writer.read_rows(200, 400)  # 200-255 from the file, 256-399 held
    np.testing.assert_array_equal(got[0], classes[200:400])
    assert_probability(got[1], probability[200:400])
    writer.sink(420, margin(logits[:, 420:]), valid[420:])
    writer.commit()
    np.testing.assert_array_equal(read(tmp_path / "flood.tif"), classes)
    assert_probability(read(tmp_path / "probability.tif"), probability)


def test_finished_rows_of_blocks_reach_the_disk_during_the_run(tmp_path):
    """GDAL compresses and writes a write of whole blocks at once; other writes wait in its cache until the file is
    closed, after the last tile. Random probabilities hardly compress: the file grows with each row of blocks."""
    width, height = 2048, 1024
    logits, valid = logits_and_validity(height, width)
    with rasterio.Env(GDAL_CACHEMAX=512 * 1024 * 1024):  # room for the whole map in the cache
        writer = MapWriter(Grid(width, height, str(tmp_path / "in.tif")), str(tmp_path / "flood.tif"),
                           str(tmp_path / "probability.tif"), SPEC)
        probability_part = writer.outputs.temps[1]
        writer.sink(0, margin(logits[:, :448]), valid[:448])  # one row of blocks (256 rows) finished, 192 rows held
        one = os.path.getsize(probability_part)
        writer.sink(448, margin(logits[:, 448:896]), valid[448:896])  # two more (up to row 768)
        three = os.path.getsize(probability_part)
        raw_row_of_blocks = 256 * width * 4
        assert one > raw_row_of_blocks / 2, one
        assert three - one > 2 * raw_row_of_blocks / 2, (one, three)
        writer.sink(896, margin(logits[:, 896:]), valid[896:])
        writer.commit()
    assert_probability(read(tmp_path / "probability.tif"), expected_maps(logits, valid)[1])
