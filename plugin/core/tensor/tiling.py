"""Tile grid, blending weights and row-band stitching for client-side (tensor) inference.

Why this shape:
- Tiles start at (0, 0) and step by `tile - overlap`; a tile that runs past the raster is filled by
  reflection about the last row/column, exactly as the TerraTorch IOProcessor pads the whole image. With
  overlap 0 the two transports therefore cut identical tiles and give the same mask.
- Overlapping tiles are blended with separable cos^2 ramps that form a partition of unity (the weights of
  all tiles covering a pixel sum to exactly 1), so no normalisation buffer is needed, no seam shows, and
  no pixel inside the raster ever gets weight 0 (a tile edge on the raster border keeps weight 1).
- Memory: the tiles' weighted scores (their logits, or for two classes the water margin: scores.py) are
  accumulated per row band of tiles only. A band's rows are handed to the sink as soon as no pending tile
  touches them, so memory is channels x tile x width (plus the in-flight tiles), never the whole raster.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


@dataclass(frozen=True)
class Tile:
    row: int
    col: int
    x0: int
    y0: int
    width: int  # tile size (the model's input), not clipped
    height: int

    @property
    def index(self) -> tuple[int, int]:
        return (self.row, self.col)


def overlap_pixels(tile: int, fraction: float) -> int:
    """Overlap in pixels for a fraction of the tile, even (so the ramp is symmetric), < tile/2."""
    if not 0 <= fraction < 0.5:
        raise ValueError(f"overlap fraction must be in [0, 0.5), got {fraction}")
    px = int(round(tile * fraction))
    px -= px % 2
    return max(0, min(px, tile // 2 - 1 if tile > 2 else 0))


def axis_origins(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: 0, stride, 2*stride, ... until the raster is covered."""
    if size < 1 or tile < 1:
        raise ValueError("size and tile must be positive")
    if not 0 <= overlap < tile:
        raise ValueError("overlap must be in [0, tile)")
    stride = tile - overlap
    n = 1 if size <= tile else 1 + math.ceil((size - tile) / stride)
    return [i * stride for i in range(n)]


@dataclass(frozen=True)
class TileGrid:
    width: int
    height: int
    tile_width: int
    tile_height: int
    overlap_x: int
    overlap_y: int
    xs: tuple[int, ...]
    ys: tuple[int, ...]

    @classmethod
    def build(cls, width: int, height: int, tile_width: int, tile_height: int,
              overlap_x: int = 0, overlap_y: int = 0) -> TileGrid:
        return cls(width, height, tile_width, tile_height, overlap_x, overlap_y,
                   tuple(axis_origins(width, tile_width, overlap_x)),
                   tuple(axis_origins(height, tile_height, overlap_y)))

    @property
    def n_cols(self) -> int:
        return len(self.xs)

    @property
    def n_rows(self) -> int:
        return len(self.ys)

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    def tile(self, row: int, col: int) -> Tile:
        return Tile(row, col, self.xs[col], self.ys[row], self.tile_width, self.tile_height)

    def __iter__(self) -> Iterator[Tile]:
        """Row-major, which the row-band stitcher relies on to keep few bands alive."""
        for r in range(self.n_rows):
            for c in range(self.n_cols):
                yield self.tile(r, c)

    def band_rows(self, row: int) -> tuple[int, int]:
        """Raster rows [start, stop) covered by the tiles of band `row` (clipped to the raster)."""
        y0 = self.ys[row]
        return y0, min(y0 + self.tile_height, self.height)

    def weights(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        """Separable blending weights (wy, wx) for a tile, float32, lengths tile_height and tile_width."""
        wy = axis_weights(self.tile_height, self.overlap_y, tile.row > 0, tile.row < self.n_rows - 1)
        wx = axis_weights(self.tile_width, self.overlap_x, tile.col > 0, tile.col < self.n_cols - 1)
        return wy, wx


def ramp(overlap: int) -> np.ndarray:
    """Rising cos^2 ramp over `overlap` samples; ramp + ramp[::-1] == 1, and no sample is 0 or 1."""
    k = (np.arange(overlap, dtype=np.float64) + 0.5) / overlap
    return np.sin(0.5 * np.pi * k) ** 2


def axis_weights(tile: int, overlap: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    w = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        r = ramp(overlap)
        if ramp_start:
            w[:overlap] *= r
        if ramp_end:
            w[tile - overlap:] *= r[::-1]
    return w.astype(np.float32)


def reflect_index(start: int, length: int, size: int) -> np.ndarray:
    """Source indices for positions start..start+length-1 of an axis of `size`, reflected past the end.

    Same as numpy.pad(mode="reflect") / torch reflect padding (the edge sample is not repeated), repeated
    for pads longer than the axis.
    """
    pos = np.arange(start, start + length, dtype=np.int64)
    if size == 1:
        return np.zeros(length, dtype=np.int64)
    period = 2 * (size - 1)
    m = np.mod(pos, period)
    return np.where(m < size, m, period - m)


def read_plan(start: int, length: int, size: int) -> tuple[int, int, Optional[np.ndarray]]:
    """What to read along one axis: (first, count) of raster pixels, plus gather indices if padded."""
    if start + length <= size:
        return start, length, None
    idx = reflect_index(start, length, size)
    lo, hi = int(idx.min()), int(idx.max())
    return lo, hi - lo + 1, idx - lo


Sink = Callable[[int, np.ndarray, np.ndarray], None]
"""sink(row0, scores[channels, h, width] float32, valid[h, width] bool) for finished raster rows. The arrays are
the stitcher's and serve later bands once the call returns: a sink copies what it keeps."""


class _Band:
    __slots__ = ("acc", "valid", "remaining", "seen")

    def __init__(self, acc: np.ndarray, valid: np.ndarray, n_cols: int) -> None:
        self.acc = acc
        self.valid = valid
        self.remaining = n_cols
        self.seen: set[int] = set()


SPARE_BANDS = 2  # buffers of flushed bands kept for the next ones: about as many as are alive at once


class RowBandStitcher:
    """Blends tile scores into row bands and emits finished rows, top to bottom, exactly once each.

    The buffers of a flushed band serve the next band, and the blending weights of each kind of tile (edge or
    inner, per side) are made once: a band of a wide raster is tens of megabytes, and fresh memory for each band
    and tile costs a page fault per 4 kB on first touch, and its zero pages a TLB flush on every core the process
    runs on.
    """

    def __init__(self, grid: TileGrid, channels: int, sink: Sink, start_row: int = 0, rows_emitted: int = 0,
                 carry: Optional[tuple[np.ndarray, np.ndarray]] = None,
                 on_flushed: Optional[Callable[[int, int, int, Optional[tuple[np.ndarray, np.ndarray]]], None]] = None,
                 ) -> None:
        """`start_row`, `rows_emitted`, `carry`: go on where an earlier stitcher of the same grid stopped (its bands
        before `start_row` flushed, its map rows before `rows_emitted` written). `on_flushed(next_row, first, end,
        carry)` hears each flush: map rows first..end-1 were written, and what the next band is owed."""
        self.grid = grid
        self.channels = channels
        self.sink = sink
        self._bands: dict[int, _Band] = {}
        self._next_row = start_row  # next band to flush
        self._carry = carry  # overlap rows owed to the next band
        self.rows_emitted = rows_emitted
        self.on_flushed = on_flushed
        self._spares: list[tuple[np.ndarray, np.ndarray]] = []
        self._weights: dict[tuple[bool, ...], np.ndarray] = {}
        self._scratch: Optional[np.ndarray] = None

    @property
    def live_bands(self) -> int:
        return len(self._bands)

    def _band(self, row: int) -> _Band:
        band = self._bands.get(row)
        if band is None:
            y0, y1 = self.grid.band_rows(row)
            shape = (self.channels, y1 - y0, self.grid.width)
            for i, (acc, valid) in enumerate(self._spares):
                if acc.shape == shape:
                    del self._spares[i]
                    acc.fill(0.0)
                    valid.fill(False)
                    break
            else:
                acc = np.empty(shape, dtype=np.float32)
                acc.fill(0.0)  # written, not calloc'ed: no zero pages to copy on the first blend
                valid = np.zeros(shape[1:], dtype=bool)
            band = _Band(acc, valid, self.grid.n_cols)
            self._bands[row] = band
        return band

    def _tile_weights(self, tile: Tile) -> np.ndarray:
        """The 2-D blending weights [th, tw] of a tile, one array per kind of tile."""
        g = self.grid
        key = (tile.row > 0, tile.row < g.n_rows - 1, tile.col > 0, tile.col < g.n_cols - 1)
        w = self._weights.get(key)
        if w is None:
            wy, wx = g.weights(tile)
            w = self._weights[key] = wy[:, None] * wx[None, :]
        return w

    def add(self, tile: Tile, scores: Optional[np.ndarray], valid: np.ndarray) -> None:
        """Add one tile's scores [channels, th, tw] (None = nothing valid) and its valid mask [th, tw]."""
        g = self.grid
        if tile.row < self._next_row:
            raise RuntimeError(f"tile {tile.index} added after its rows were written")
        band = self._band(tile.row)
        if tile.col in band.seen:
            raise RuntimeError(f"tile {tile.index} added twice")
        band.seen.add(tile.col)
        h = min(tile.height, g.height - tile.y0)
        w = min(tile.width, g.width - tile.x0)
        xs = slice(tile.x0, tile.x0 + w)
        if scores is not None:
            if g.overlap_x == 0 and g.overlap_y == 0:
                band.acc[:, :h, xs] += scores[:, :h, :w]  # every weight is 1
            else:
                if self._scratch is None or self._scratch.shape[0] != scores.shape[0]:
                    self._scratch = np.empty((scores.shape[0], g.tile_height, g.tile_width), dtype=np.float32)
                weighted = self._scratch[:, :h, :w]
                np.multiply(scores[:, :h, :w], self._tile_weights(tile)[:h, :w], out=weighted)
                band.acc[:, :h, xs] += weighted
        band.valid[:h, xs] |= valid[:h, :w]
        band.remaining -= 1
        while self._next_row in self._bands and self._bands[self._next_row].remaining == 0:
            first = self.rows_emitted
            self._flush(self._next_row)
            self._next_row += 1
            if self.on_flushed is not None:
                self.on_flushed(self._next_row, first, self.rows_emitted, self._carry)

    def _flush(self, row: int) -> None:
        g = self.grid
        band = self._bands.pop(row)
        y0, y1 = g.band_rows(row)
        if self._carry is not None:
            c_acc, c_valid = self._carry
            n = c_acc.shape[1]
            band.acc[:, :n] += c_acc
            band.valid[:n] |= c_valid
            self._carry = None
        if row < g.n_rows - 1:
            keep = y1 - g.ys[row + 1]  # rows the next band also covers
        else:
            keep = 0
        done = (y1 - y0) - keep
        if keep:
            self._carry = (band.acc[:, done:].copy(), band.valid[done:].copy())
        if done:
            self.sink(y0, band.acc[:, :done], band.valid[:done])
            self.rows_emitted += done
        if len(self._spares) < SPARE_BANDS:  # the sink has written the rows: the buffers are free
            self._spares.append((band.acc, band.valid))

    @property
    def finished(self) -> bool:
        return self._next_row == self.grid.n_rows
