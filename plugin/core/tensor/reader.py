"""Tiles of the input raster: each read in one window (reflect-padded past the edges) with its nodata mask,
and the reflectance scale the whole raster uses.

The worker threads share one dataset handle, read under a lock (SharedDataset).
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ..errors import InputError
from ..raster import HiddenNodata, hidden_nodata
from .tiling import Tile, read_plan

if TYPE_CHECKING:
    from ..area_of_interest import Area


def band_numbers(band_indices: list[int], count: int, channels: int) -> list[int]:
    """1-based rasterio band numbers from 0-based indices (the IOProcessor's `indices` convention)."""
    if len(band_indices) != channels:
        raise InputError(f"The model takes {channels} bands and {len(band_indices)} were selected.",
                         f"Select exactly {channels} input bands in the model's order.")
    bad = [i for i in band_indices if not 0 <= int(i) < count]
    if bad:
        raise InputError(f"Band index(es) {bad} do not exist in a {count}-band raster.",
                         "Band indices are 0-based here; check the band selection.")
    return [int(i) + 1 for i in band_indices]


def mask_needs_read(ds: Any, bands: list[int]) -> bool:
    from rasterio.enums import MaskFlags

    for b in bands:
        flags = ds.mask_flag_enums[b - 1]
        if MaskFlags.per_dataset in flags or MaskFlags.alpha in flags:
            return True
    return False


def _nodata_in(nodata: Optional[float], dtype: np.dtype) -> Any:
    """The nodata value as a scalar of the data's dtype; None when no pixel can hold it (or it is NaN,
    which the finiteness check covers)."""
    if nodata is None or math.isnan(nodata):
        return None
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if nodata != int(nodata) or not info.min <= nodata <= info.max:
            return None
        return dtype.type(int(nodata))
    return dtype.type(nodata)


def read_tile(ds: Any, bands: list[int], tile: Tile, mask_read: bool = False,
              area: Optional[Area] = None, hidden: Optional[HiddenNodata] = None) -> tuple[np.ndarray, np.ndarray]:
    """(data [C, th, tw] in the file's dtype, valid [th, tw]) for a tile, reflect-padded past the edges.

    With an `area`, the tile is on the area's grid: read at the window's offset, padded past the area's edges
    (as if the raster were cut to it), and pixels the area leaves out are not valid. `hidden` is the raster's
    rule for nodata GDAL's masks do not give (raster.hidden_nodata).
    """
    from rasterio.windows import Window

    width, height = (ds.width, ds.height) if area is None else (area.width, area.height)
    x_first, x_count, gx = read_plan(tile.x0, tile.width, width)
    y_first, y_count, gy = read_plan(tile.y0, tile.height, height)
    window = Window(x_first, y_first, x_count, y_count)
    data = ds.read(bands, window=window if area is None else area.on_input(window))
    invalid = np.zeros(data.shape[1:], dtype=bool)
    for i, b in enumerate(bands):
        nd = _nodata_in(ds.nodatavals[b - 1], data.dtype)
        if nd is not None:
            invalid |= data[i] == nd
    if data.dtype.kind == "f":
        invalid |= ~np.isfinite(data).all(axis=0)
    if mask_read:
        invalid |= (ds.read_masks(bands, window=window if area is None else area.on_input(window)) == 0).any(axis=0)
    if hidden:
        invalid |= hidden.invalid(ds, window if area is None else area.on_input(window), data=data)
    if area is not None and area.mask is not None:
        invalid |= ~area.mask.read(window)
    if gy is not None:
        data, invalid = data[:, gy], invalid[gy]
    if gx is not None:
        data, invalid = data[:, :, gx], invalid[:, gx]
    return data, ~invalid


def detect_scale(ds: Any, bands: list[int], area: Optional[Area] = None) -> float:
    """Reflectance factor the IOProcessor would use: 1e-4 when the image mean is > 1, else 1.

    Estimated from up to 9 windows spread over the raster (or the area; nodata excluded), so a 20k x 20k
    file is not read twice. Each window is moved to start on a block of the file where it can, so that it
    decodes one compressed block rather than up to four. Values that cannot be negative (unsigned integers,
    the digital numbers of most products) stop the reading as soon as the windows left cannot bring the mean
    down to 1 even if all their values were 0: one window, for a scene of digital numbers in the hundreds.
    """
    side = 256
    width, height = (ds.width, ds.height) if area is None else (area.width, area.height)
    x_off, y_off = (0, 0) if area is None else (int(area.window.col_off), int(area.window.row_off))
    block_h, block_w = ds.block_shapes[bands[0] - 1]
    xs = [0] if width <= 3 * side else [_on_block(x, x_off, width, side, block_w)
                                        for x in (0, (width - side) // 2, width - side)]
    ys = [0] if height <= 3 * side else [_on_block(y, y_off, height, side, block_h)
                                         for y in (0, (height - side) // 2, height - side)]
    w = width if len(xs) == 1 else side
    h = height if len(ys) == 1 else side
    total, count = 0.0, 0
    hidden = hidden_nodata(ds, bands)
    windows = [(x, y) for y in ys for x in xs]
    unsigned = all(np.dtype(ds.dtypes[b - 1]).kind == "u" for b in bands)
    for i, (x, y) in enumerate(windows):
        data, valid = read_tile(ds, bands, Tile(0, 0, x, y, w, h), area=area, hidden=hidden)
        if valid.all():  # summed in place: no copy of the window's values
            total += float(data.sum(dtype=np.float64))
            count += data.size
        elif valid.any():  # each pixel's bands summed first, so only a band's worth of values is picked out
            total += float(data.sum(axis=0, dtype=np.float64)[valid].sum())
            count += int(valid.sum()) * data.shape[0]
        if unsigned and total > count + (len(windows) - 1 - i) * len(bands) * w * h:
            break  # the mean stays above 1 whatever the windows left hold
    if count == 0:
        return 1e-4 if np.dtype(ds.dtypes[bands[0] - 1]).kind in "iu" else 1.0
    return 1e-4 if total / count > 1.0 else 1.0


def _on_block(pos: int, offset: int, size: int, length: int, block: int) -> int:
    """`pos` (on an axis of `size` starting at `offset` of the file) moved to the start of its block of the file,
    or of the next one, where a window of `length` from there lies inside the axis and inside that block. A block
    as long as the axis (a striped file's row) is decoded whole wherever the window lies: `pos` stays."""
    if length <= block < size:
        first = (offset + pos) // block * block - offset
        for start in (first, first + block):
            if 0 <= start and start + length <= size:
                return start
    return pos


class SharedDataset:
    """The run's dataset for all worker threads, read under a lock (a GDAL handle must not be used by two threads
    at once).

    GDAL's block cache belongs to a dataset handle: with one handle per thread, every thread whose tile
    touched a compressed block decoded it again (three times the reading CPU on a deflate raster with four
    threads and the default overlap). With one handle each block is decoded once; only the reads wait for
    each other, and rasterio releases the GIL while GDAL reads, so the other threads normalise, encode and
    wait for the server meanwhile. The handle is the one the run opened in its own thread: opening a raster with a
    CRS in a fresh worker thread costs that thread ~8 ms of CPU before its first read (GDAL sets up its coordinate
    system database once per thread; 1 ms without a CRS), and the blocks the run has read already are in its cache.
    """

    def __init__(self, ds: Any) -> None:
        self.lock = threading.Lock()
        self.ds: Any = ds

    def __enter__(self) -> Any:
        self.lock.acquire()
        if self.ds is None:
            self.lock.release()
            raise RuntimeError("the run's dataset was read after the run ended")
        return self.ds

    def __exit__(self, *exc: object) -> None:
        self.lock.release()

    def close(self) -> None:
        """No reads from now on: the dataset is closed, and its cached blocks freed before the map is committed."""
        with self.lock:
            if self.ds is not None:
                self.ds.close()
            self.ds = None
