"""Tile grid, blending weights and row-band stitching (plugin/core/tiling.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from plugin.core.tensor.tiling import (
    RowBandStitcher,
    TileGrid,
    axis_origins,
    axis_weights,
    overlap_pixels,
    ramp,
    read_plan,
    reflect_index,
)

SIZES = [(1, 1), (7, 300), (100, 80), (256, 256), (257, 256), (512, 1000), (700, 555), (1030, 260)]


@pytest.mark.parametrize("size", [1, 5, 255, 256, 257, 500, 511, 512, 1000, 4097])
@pytest.mark.parametrize("tile,overlap", [(256, 0), (256, 32), (512, 64), (64, 30)])
def test_axis_origins_cover_and_step(size, tile, overlap):
    xs = axis_origins(size, tile, overlap)
    assert xs[0] == 0
    assert xs[-1] + tile >= size  # covered
    assert all(b - a == tile - overlap for a, b in zip(xs, xs[1:]))
    assert all(x < size for x in xs)  # no tile starts outside the raster
    if len(xs) > 1:
        assert xs[-2] + tile < size  # and none is superfluous


def test_axis_origins_exact_multiple_has_no_extra_tile():
    assert axis_origins(1024, 512, 0) == [0, 512]
    assert axis_origins(512, 512, 64) == [0]
    assert axis_origins(960, 512, 64) == [0, 448]


def test_overlap_pixels_even_and_bounded():
    assert overlap_pixels(512, 0.125) == 64
    assert overlap_pixels(512, 0) == 0
    assert overlap_pixels(100, 0.13) % 2 == 0
    assert overlap_pixels(4, 0.49) < 2
    with pytest.raises(ValueError):
        overlap_pixels(512, 0.5)


def test_ramp_is_complementary_and_never_zero():
    for n in (1, 2, 7, 64):
        r = ramp(n)
        assert np.allclose(r + r[::-1], 1.0)
        assert (r > 0).all() and (r < 1).all()
        assert (np.diff(r) > 0).all()


@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("tile,overlap", [(256, 0), (256, 32), (64, 8), (128, 62)])
def test_weights_are_a_partition_of_unity(width, height, tile, overlap):
    grid = TileGrid.build(width, height, tile, tile, overlap, overlap)
    total = np.zeros((height, width), np.float64)
    for t in grid:
        wy, wx = grid.weights(t)
        h, w = min(tile, height - t.y0), min(tile, width - t.x0)
        total[t.y0:t.y0 + h, t.x0:t.x0 + w] += np.outer(wy[:h], wx[:w])
    assert np.allclose(total, 1.0, atol=1e-6)


def test_border_tiles_keep_full_weight_at_the_raster_edge():
    grid = TileGrid.build(1000, 1000, 256, 256, 32, 32)
    wy, wx = grid.weights(grid.tile(0, 0))
    assert wx[0] == 1.0 and wy[0] == 1.0  # raster border: nothing to blend with
    assert wx[-1] < 0.01  # interior edge: ramps down
    assert axis_weights(8, 0, True, True).tolist() == [1.0] * 8


@pytest.mark.parametrize("size", [1, 2, 3, 10])
@pytest.mark.parametrize("pad", [0, 1, 2, 9, 25])
def test_reflect_index_matches_numpy_reflect_pad(size, pad):
    a = np.arange(size) * 10
    assert (a[reflect_index(0, size + pad, size)] == np.pad(a, (0, pad), mode="reflect")).all()


def test_read_plan_interior_and_edge():
    assert read_plan(0, 256, 1000) == (0, 256, None)
    first, count, gather = read_plan(900, 256, 1000)
    assert first + count <= 1000 and gather is not None and len(gather) == 256
    src = np.arange(1000)
    expected = np.pad(src, (0, 156), mode="reflect")[900:1156]
    assert (src[first:first + count][gather] == expected).all()


def _field(c, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(c, h, w)).astype(np.float32)


def _run_stitcher(width, height, tile, overlap, order="row-major", c=2, seed=0):
    grid = TileGrid.build(width, height, tile, tile, overlap, overlap)
    field = _field(c, height, width, seed)
    out = np.full((c, height, width), np.nan, np.float32)
    got_valid = np.zeros((height, width), bool)
    emitted = []

    def sink(row0, logits, valid):
        emitted.append((row0, logits.shape[1]))
        assert np.isnan(out[:, row0:row0 + logits.shape[1]]).all(), "a row was written twice"
        out[:, row0:row0 + logits.shape[1]] = logits
        got_valid[row0:row0 + logits.shape[1]] = valid

    stitcher = RowBandStitcher(grid, c, sink)
    tiles = list(grid)
    if order == "shuffled":
        random.Random(seed).shuffle(tiles)
    max_live = 0
    for t in tiles:
        iy = reflect_index(t.y0, tile, height)
        ix = reflect_index(t.x0, tile, width)
        logits = field[:, iy][:, :, ix]
        stitcher.add(t, logits, np.ones((tile, tile), bool))
        max_live = max(max_live, stitcher.live_bands)
    assert stitcher.finished
    return field, out, got_valid, emitted, max_live


@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("tile,overlap", [(256, 0), (64, 8), (128, 30)])
@pytest.mark.parametrize("order", ["row-major", "shuffled"])
def test_stitcher_reassembles_the_field_exactly_once(width, height, tile, overlap, order):
    field, out, valid, emitted, _ = _run_stitcher(width, height, tile, overlap, order)
    assert np.allclose(out, field, atol=1e-5)  # right place, weights summing to 1
    assert valid.all()
    rows = [r for r, _ in emitted]
    assert rows == sorted(rows) and rows[0] == 0
    assert sum(n for _, n in emitted) == height


@pytest.mark.parametrize("width,height,tile,overlap", [(1000, 700, 128, 16), (300, 100, 128, 0), (129, 300, 128, 30)])
@pytest.mark.parametrize("order", ["row-major", "shuffled", "right-to-left"])
def test_stitcher_equals_the_plain_weighted_sum_with_empty_tiles_and_holes(width, height, tile, overlap, order):
    """Tiles without logits, nodata holes, any order, and band buffers holding NaN from before: every emitted
    value is the sum of the weighted logits of the tiles over it, every validity the OR of theirs."""
    grid = TileGrid.build(width, height, tile, tile, overlap, overlap)
    rng = np.random.default_rng(len(grid))
    field = _field(2, height, width, len(grid))
    holes = rng.random((height, width)) < 0.1
    expected = np.zeros((2, height, width), np.float64)
    expected_valid = np.zeros((height, width), bool)
    out = np.full((2, height, width), np.nan, np.float32)
    out_valid = np.zeros((height, width), bool)

    def sink(row0, logits, valid):
        out[:, row0:row0 + logits.shape[1]] = logits
        out_valid[row0:row0 + logits.shape[1]] = valid

    stitcher = RowBandStitcher(grid, 2, sink)
    for y0, y1 in {grid.band_rows(r) for r in range(grid.n_rows)}:  # buffers a band left behind, never cleared
        stitcher._spares.append((np.full((2, y1 - y0, width), np.nan, np.float32), np.ones((y1 - y0, width), bool)))
    tiles = list(grid)
    if order == "shuffled":
        random.Random(1).shuffle(tiles)
    elif order == "right-to-left":
        tiles.sort(key=lambda t: (t.row, -t.col))
    empty = set(random.Random(2).sample(range(len(tiles)), len(tiles) // 4))
    for i, t in enumerate(tiles):
        iy, ix = reflect_index(t.y0, tile, height), reflect_index(t.x0, tile, width)
        h, w = min(tile, height - t.y0), min(tile, width - t.x0)
        if i in empty:
            stitcher.add(t, None, np.zeros((tile, tile), bool))
            continue
        logits = np.ascontiguousarray(field[:, iy][:, :, ix])
        valid = ~holes[iy][:, ix]
        stitcher.add(t, logits, valid)
        wy, wx = grid.weights(t)
        region = (slice(t.y0, t.y0 + h), slice(t.x0, t.x0 + w))
        expected[(slice(None), *region)] += (logits * (wy[:, None] * wx[None, :]))[:, :h, :w]
        expected_valid[region] |= valid[:h, :w]
    assert stitcher.finished
    assert np.allclose(out, expected, rtol=0, atol=1e-5)
    assert (out_valid == expected_valid).all()


def test_stitcher_keeps_at_most_two_bands_in_row_major_order():
    *_, max_live = _run_stitcher(3000, 1500, 128, 16)
    assert max_live <= 2


def test_stitcher_empty_tile_leaves_rows_invalid():
    grid = TileGrid.build(300, 100, 128, 128, 0, 0)
    got = {}

    def sink(row0, logits, valid):
        got["valid"], got["logits"] = valid.copy(), logits.copy()

    st = RowBandStitcher(grid, 2, sink)
    for t in grid:
        if t.col == 1:
            st.add(t, None, np.zeros((128, 128), bool))
        else:
            st.add(t, np.ones((2, 128, 128), np.float32), np.ones((128, 128), bool))
    assert not got["valid"][:, 128:256].any() and got["valid"][:, :128].all()
    assert (got["logits"][:, :, 128:256] == 0).all()


def test_stitcher_rejects_a_tile_twice():
    grid = TileGrid.build(300, 100, 128, 128, 0, 0)
    st = RowBandStitcher(grid, 2, lambda *a: None)
    t = grid.tile(0, 0)
    st.add(t, np.zeros((2, 128, 128), np.float32), np.ones((128, 128), bool))
    with pytest.raises(RuntimeError, match="twice"):
        st.add(t, np.zeros((2, 128, 128), np.float32), np.ones((128, 128), bool))
    for c in (1, 2):
        st.add(grid.tile(0, c), np.zeros((2, 128, 128), np.float32), np.ones((128, 128), bool))
    assert st.finished
    with pytest.raises(RuntimeError, match="after its rows"):
        st.add(t, np.zeros((2, 128, 128), np.float32), np.ones((128, 128), bool))
