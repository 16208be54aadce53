"""Which tiles of a run are worth a request: those with a pixel to map (data in every used band, inside the
area, not cloud), found in one pass over the area before the first request, so that progress and the ETA count
only the tiles that will be sent.

Without an area mask the pass reads one used band's validity only: the one whose files hold the fewest pixels (a
Sentinel-2 product's 20 m bands in its 10 m stack), else the first. A pixel to map has data in every band, so a
tile without data in that band has none, and is never read or sent. Reading every band here would decode the whole
input once more before the first request: as long as the run's own reads of a product's JPEG 2000 band files. The
bands of one scene share their nodata; a tile whose data in that band lacks data in another band (a sliver at a
swath's edge) is found when it is read, gets no request, and leaves the count then.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional
from xml.etree import ElementTree

import numpy as np

from ..area_of_interest import Area
from ..errors import Cancelled
from ..raster import hidden_nodata, iter_windows
from ..vrt_sources import source_pixels
from .tiling import TileGrid

log = logging.getLogger("floodmapper.tensor")

CancelFn = Callable[[], bool]


def everything_valid(ds: Any, bands: list[int]) -> bool:
    """True when no used band can hold a pixel without data that a pass before the first request should look
    for (no nodata, mask, alpha or NaN).

    A raster that declares none of them can still hold zero fill (raster.HiddenNodata), but finding it here
    would decode the whole raster once more: its tiles are found when read instead, and get no request.
    """
    from rasterio.enums import MaskFlags

    if hidden_nodata(ds, bands).alpha is not None:
        return False
    for b in bands:
        if np.dtype(ds.dtypes[b - 1]).kind == "f" or MaskFlags.all_valid not in ds.mask_flag_enums[b - 1]:
            return False
    return True


def tiles_to_send(ds: Any, bands: list[int], grid: TileGrid, area: Area,
                  cancel: Optional[CancelFn] = None) -> np.ndarray:
    """bool [rows, cols] of the grid: True for a tile that can have a pixel to map inside the area.

    `bands` are 1-based. The area's mask already holds the input's validity; without one a band's validity
    (scan_band) is read block by block, from the area's end to its start (skipped when no band can lack data).
    """
    send = np.zeros((grid.n_rows, grid.n_cols), dtype=bool)
    if area.mask is None and everything_valid(ds, bands):
        send[:] = True
        return send
    ys = np.asarray(grid.ys)
    xs = np.asarray(grid.xs)
    if area.mask is not None:
        read = area.mask.read
    else:
        band, alpha = scan_band(ds, bands), hidden_nodata(ds, bands).alpha

        def read(block: Any) -> np.ndarray:
            return band_valid(ds, band, alpha, area.on_input(block))

    # From the last block to the first: the run's tiles start at the top, and the blocks of the area's first rows,
    # read last here, are still in GDAL's block cache when the first tiles read them (decoded once, not twice).
    for block in reversed(list(iter_windows(area.width, area.height))):
        if cancel is not None and cancel():
            raise Cancelled()
        by, bx = int(block.row_off), int(block.col_off)
        bh, bw = int(block.height), int(block.width)
        rows = np.flatnonzero((ys < by + bh) & (ys + grid.tile_height > by))
        cols = np.flatnonzero((xs < bx + bw) & (xs + grid.tile_width > bx))
        if send[np.ix_(rows, cols)].all():
            continue
        valid = read(block)
        if not valid.any():
            continue
        for r in rows:
            y0, y1 = max(ys[r], by) - by, min(ys[r] + grid.tile_height, by + bh) - by
            for c in cols:
                if not send[r, c]:
                    x0, x1 = max(xs[c], bx) - bx, min(xs[c] + grid.tile_width, bx + bw) - bx
                    send[r, c] = bool(valid[y0:y1, x0:x1].any())
    return send


def scan_band(ds: Any, bands: list[int]) -> int:
    """The used band (1-based) whose validity costs least to read: in a virtual raster, the one whose source files
    hold the fewest pixels for the raster's (the 20 m bands of a product's 10 m stack: a quarter of a 10 m band's);
    the first on a tie, and in any other raster."""
    if ds.driver != "VRT":
        return bands[0]
    try:
        pixels = [source_pixels(ds, band) for band in bands]
    except (ElementTree.ParseError, ValueError, TypeError) as exc:  # an unusual source: the first band is as good
        log.debug("sources of %s not read (%s)", ds.name, exc)
        return bands[0]
    return bands[pixels.index(min(pixels))]


def band_valid(ds: Any, band: int, alpha: Optional[int], window: Any) -> np.ndarray:
    """True where `band` has data (its nodata value, mask or NaN) and the alpha band GDAL does not apply (if any)
    lets the pixel through: every pixel with data in all used bands, and the few with data in this one only.

    A raster that declares no nodata at all (0 in every band as the fill: raster.HiddenNodata) is not judged
    here: a 0 in one band is data where another band has some.
    """
    valid = ds.read_masks(band, window=window) > 0
    if np.dtype(ds.dtypes[band - 1]).kind == "f":
        valid &= np.isfinite(ds.read(band, window=window))
    if alpha is not None:
        valid &= ds.read(alpha, window=window) > 0
    return valid
