"""What the model gets for a tile besides the raw pixels: the pixels normalised in the server's dtype, and the
tile's location (lon, lat) for a model that takes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ..errors import InputError
from ..model_spec import ModelSpec
from .codec import carrier_dtype, to_server_dtype
from .lookup import lookup
from .tiling import TileGrid

if TYPE_CHECKING:
    from ..area_of_interest import Area


class Normaliser:
    """raw -> (raw * scale + offset - mean) / std in the server's dtype; nodata pixels set to 0 (the mean).

    Integer rasters (the usual x10000 reflectance) go through a per-band lookup table computed once in
    float64 and rounded once to the target dtype: one gather per band instead of five float passes, and
    the same rounding as the IOProcessor's float64 path. Values beyond float16's range are clipped, since
    inf would become NaN inside the model.
    """

    def __init__(self, spec: ModelSpec, scale: float, offset: float, src_dtype: Any = None) -> None:
        means = np.asarray(spec.means, np.float64)[:, None]
        stds = np.asarray(spec.stds, np.float64)[:, None]
        self.server_dtype = spec.dtype
        self.dtype = carrier_dtype(spec.dtype)
        # float16 overflows at 65504; float32 and bfloat16 share float32's range
        self.limit = float(np.finfo(np.float16 if spec.dtype == "float16" else np.float32).max)
        self.a = (scale / stds[:, 0]).astype(np.float32)[:, None, None]
        self.b = ((offset - means[:, 0]) / stds[:, 0]).astype(np.float32)[:, None, None]
        self.lut: Optional[np.ndarray] = None
        src = np.dtype(src_dtype) if src_dtype is not None else None
        if src is not None and src.kind in "iu" and src.itemsize <= 2:
            n = 1 << (8 * src.itemsize)
            unsigned = np.dtype(f"u{src.itemsize}")
            values = np.arange(n, dtype=np.int64).astype(unsigned).view(src).astype(np.float64)
            # one table of bands x values made and then worked on in place: each fresh temporary of that size
            # costs a page fault per 4 kB, several milliseconds of every run
            lut = np.subtract(values * scale + offset, means)
            lut /= stds
            np.clip(lut, -self.limit, self.limit, out=lut)
            self.lut = to_server_dtype(lut if spec.dtype == "float16" else lut.astype(np.float32), spec.dtype)
            self.unsigned = unsigned

    def __call__(self, raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self.lut is not None and raw.dtype.itemsize == self.unsigned.itemsize and raw.dtype.kind in "iu":
            idx = raw.view(self.unsigned)
            out = np.empty(raw.shape, self.dtype)
            for c in range(raw.shape[0]):
                lookup(self.lut[c], idx[c], out=out[c])
        else:
            x = np.multiply(raw, self.a, dtype=np.float32)
            x += self.b
            if self.server_dtype != "float32":
                if not valid.all():
                    x[:, ~valid] = 0.0  # NaN/inf nodata must not decide the range check
                lo, hi = float(x.min()), float(x.max())
                if lo < -self.limit or hi > self.limit:
                    np.clip(x, -self.limit, self.limit, out=x)
            out = to_server_dtype(x, self.server_dtype)
        if not valid.all():
            out[:, ~valid] = 0
        return out


def tile_locations(ds: Any, grid: TileGrid, location_shape: tuple[int, ...],
                   mode: str = "tile", area: Optional[Area] = None) -> dict[tuple[int, int], np.ndarray]:
    """location_coords (lon, lat) per tile, in float32: the tile centre, or the raster's (the area's) centre as
    the IOProcessor does. The payload encoder casts them to the server's dtype."""
    from rasterio.transform import xy as rasterio_xy
    from rasterio.warp import transform as warp_transform

    if ds.crs is None:
        raise InputError(
            "The model takes the location (lon, lat) of each tile, and the raster has no CRS.",
            "Assign the raster's coordinate reference system (e.g. with gdal_edit.py -a_srs) and retry.")
    tiles = list(grid)
    width, height = (ds.width, ds.height) if area is None else (area.width, area.height)
    transform = ds.transform if area is None else area.transform
    if mode == "raster":
        cols = [width / 2.0] * len(tiles)
        rows = [height / 2.0] * len(tiles)
    elif mode == "tile":
        cols = [t.x0 + min(t.width, width - t.x0) / 2.0 for t in tiles]
        rows = [t.y0 + min(t.height, height - t.y0) / 2.0 for t in tiles]
    else:
        raise ValueError(f"location mode {mode!r}: use 'tile' or 'raster'")
    xs, ys = rasterio_xy(transform, rows, cols, offset="ul")
    lons, lats = warp_transform(ds.crs, "EPSG:4326", xs, ys)
    return {t.index: np.array([lon, lat], dtype=np.float32).reshape(location_shape)
            for t, lon, lat in zip(tiles, lons, lats)}
