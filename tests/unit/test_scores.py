"""The scores the row bands blend: for two classes the water margin, which decides the class and the probability as
the blended logits do; for more classes the logits themselves."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from plugin.core.model_spec import ModelSpec
from plugin.core.tensor import scores
from plugin.core.tensor.tiling import RowBandStitcher, TileGrid


def spec(num_classes: int = 2, water_class: int = 1) -> ModelSpec:
    return ModelSpec(channels=6, tile_height=64, tile_width=64, num_classes=num_classes, means=[0.0] * 6,
                     stds=[1.0] * 6, water_class=water_class)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits.astype(np.float64) - logits.max(axis=0))
    return e / e.sum(axis=0)


def stitched(grid: TileGrid, tiles: dict, channels: int) -> np.ndarray:
    out = np.zeros((channels, grid.height, grid.width), np.float32)

    def sink(row0, rows, valid):
        out[:, row0:row0 + rows.shape[1]] = rows

    stitcher = RowBandStitcher(grid, channels, sink)
    for tile in grid:
        stitcher.add(tile, tiles[tile.index], np.ones((grid.tile_height, grid.tile_width), bool))
    assert stitcher.finished
    return out


@pytest.mark.parametrize("water_class", [0, 1])
def test_blended_margins_give_the_class_and_probability_of_the_blended_logits(water_class):
    """Overlapping tiles whose logits disagree (each tile its own random field): blending the margin and blending
    the logits, then taking the argmax and the softmax, give the same map."""
    s = spec(water_class=water_class)
    grid = TileGrid.build(300, 200, 64, 64, 16, 16)
    rng = np.random.default_rng(3)
    logits = {t.index: rng.normal(0, 2, (2, 64, 64)).astype(np.float32) for t in grid}
    margins = {index: scores.of_tile(tile_logits, s) for index, tile_logits in logits.items()}
    assert scores.channels(s) == 1 and all(m.shape == (1, 64, 64) and m.dtype == np.float32 for m in margins.values())

    blended_logits = stitched(grid, logits, 2)
    blended_margin = stitched(grid, margins, 1)
    expected_water = np.argmax(blended_logits, axis=0) == water_class
    decided = np.abs(blended_logits[1] - blended_logits[0]) > 1e-4  # not a tie to float32's rounding
    assert decided.mean() > 0.999
    np.testing.assert_array_equal(scores.water(blended_margin, s)[decided], expected_water[decided])
    assert 0.3 < expected_water.mean() < 0.7  # both classes are there
    np.testing.assert_allclose(scores.probability(blended_margin, s), softmax(blended_logits)[water_class],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("water_class", [0, 1])
def test_a_tie_goes_to_the_lower_class_as_argmax_does(water_class):
    s = spec(water_class=water_class)
    logits = np.full((2, 1, 3), 0.25, np.float32)
    water = scores.water(scores.of_tile(logits, s), s)
    np.testing.assert_array_equal(water, np.argmax(logits, axis=0) == water_class)
    assert water.all() == (water_class == 0)
    np.testing.assert_array_equal(scores.probability(scores.of_tile(logits, s), s), np.float32(0.5))


def test_margins_beyond_float32s_exponent_give_0_and_1_without_a_warning():
    s = spec()
    margin = np.array([[[-1e30, -1000.0, -50.0, 0.0, 50.0, 1000.0, 1e30]]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in exp would warn
        p = scores.probability(margin, s)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p[0], [0.0, 0.0, 1.9287e-22, 0.5, 1.0, 1.0, 1.0], rtol=1e-4)
    np.testing.assert_array_equal(scores.water(margin, s)[0], [False, False, False, False, True, True, True])


def test_a_model_with_more_classes_blends_its_logits():
    s = spec(num_classes=4, water_class=2)
    logits = np.random.default_rng(5).normal(0, 3, (4, 32, 48)).astype(np.float32)
    assert scores.channels(s) == 4
    assert scores.of_tile(logits, s) is logits
    np.testing.assert_array_equal(scores.water(logits, s), np.argmax(logits, axis=0) == 2)
    p = scores.probability(logits, s)
    assert p.dtype == np.float32 and p.shape == (32, 48)
    np.testing.assert_allclose(p, softmax(logits)[2], rtol=1e-5, atol=1e-7)
