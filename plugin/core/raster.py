"""The input raster: what it is (size, bands, CRS, nodata) and where it has data, window by window.

Everything that touches pixels works window by window: a Sentinel-2 scene is 10980² × 13 bands, and QGIS
must not load it whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import RasterioError
from rasterio.windows import Window

from .errors import Cancelled, InputError
from .vrt_sources import band_labels

BLOCK = 1024  # processing window (a multiple of the output's 256-px tiles)

CancelFn = Callable[[], bool]


@dataclass(frozen=True)
class RasterInfo:
    path: str
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    crs: Optional[str]  # WKT, or None when the raster has no CRS
    transform: Affine
    nodata: tuple[Optional[float], ...]
    descriptions: tuple[Optional[str], ...]  # a VRT band without one: its source's (vrt_sources.py)
    is_geographic: bool
    is_file: bool  # a local file (the server may read it by path), not a URL or /vsi path
    driver: str = ""

    @property
    def size_text(self) -> str:
        return f"{self.width}×{self.height} px ({self.width * self.height / 1e6:.1f} MP)"


def inspect(path: str) -> RasterInfo:
    """Open the raster's header only (no pixels) and describe it."""
    try:
        with rasterio.open(path) as src:
            crs = src.crs
            return RasterInfo(
                path=path,
                width=src.width,
                height=src.height,
                count=src.count,
                dtypes=tuple(src.dtypes),
                crs=crs.to_wkt() if crs else None,
                transform=src.transform,
                nodata=tuple(src.nodatavals),
                descriptions=band_labels(src) if src.driver == "VRT" else tuple(src.descriptions),
                is_geographic=bool(crs and crs.is_geographic),
                is_file=os.path.isfile(path),
                driver=src.driver,
            )
    except RasterioError as exc:
        raise InputError(
            f"Cannot open the raster '{path}': {str(exc).rstrip('.')}.",
            "Choose a raster GDAL can read (GeoTIFF, JP2, VRT, ...); for a URL check that it is reachable.",
        ) from None


def iter_windows(width: int, height: int, block: int = BLOCK) -> Iterator[Window]:
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield Window(col, row, min(block, width - col), min(block, height - row))


def valid_mask(src: rasterio.io.DatasetReader, band_indices: list[int], window: Window) -> np.ndarray:
    """True where EVERY used band has data: nodata value, internal mask, alpha band and NaN all count."""
    valid = np.ones((int(window.height), int(window.width)), dtype=bool)
    for index in sorted(set(band_indices)):
        valid &= src.read_masks(index + 1, window=window) > 0
        if np.issubdtype(np.dtype(src.dtypes[index]), np.floating):
            valid &= np.isfinite(src.read(index + 1, window=window))
    return valid


def has_valid_pixels(path: str, band_indices: list[int], cancel: Optional[CancelFn] = None,
                     window: Optional[Window] = None) -> bool:
    """Whether any pixel (of `window`, default all) has data in all used bands; stops at the first block
    that has one."""
    with rasterio.open(path) as src:
        area = window or Window(0, 0, src.width, src.height)
        c0, r0 = int(area.col_off), int(area.row_off)
        for block in iter_windows(int(area.width), int(area.height)):
            if cancel is not None and cancel():
                raise Cancelled()
            on_input = Window(c0 + block.col_off, r0 + block.row_off, block.width, block.height)
            if valid_mask(src, band_indices, on_input).any():
                return True
    return False


def require_valid_pixels(path: str, band_indices: list[int], cancel: Optional[CancelFn] = None) -> None:
    """InputError when no pixel has data in every used band (nothing to map)."""
    if not has_valid_pixels(path, band_indices, cancel):
        raise InputError(
            f"Every pixel of '{path}' is nodata in the bands used ({[b + 1 for b in band_indices]}).",
            "Check the raster and its nodata value, or choose other bands.",
        )
