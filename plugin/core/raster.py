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
    scales: tuple[float, ...] = ()  # each band's own scale and offset (GDAL's; QGIS shows values with them)
    offsets: tuple[float, ...] = ()
    add_offsets: tuple[Optional[float], ...] = ()  # Sentinel-2's BOA_/RADIO_ADD_OFFSET per band, in stored units

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
                scales=tuple(src.scales),
                offsets=tuple(src.offsets),
                add_offsets=tuple(_add_offset(src.tags(band)) for band in range(1, src.count + 1)),
            )
    except RasterioError as exc:
        raise InputError(
            f"Cannot open the raster '{path}': {str(exc).rstrip('.')}.",
            "Choose a raster GDAL can read (GeoTIFF, JP2, VRT, ...); for a URL check that it is reachable.",
        ) from None


def grid_bounds(transform: Affine, width: float, height: float) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of a grid of width x height pixels, whichever way its axes point."""
    from rasterio.transform import array_bounds

    west, south, east, north = array_bounds(height, width, transform)
    return min(west, east), min(south, north), max(west, east), max(south, north)


def _add_offset(tags: dict[str, str]) -> Optional[float]:
    """A band's Sentinel-2 BOA_ADD_OFFSET (L2A) or RADIO_ADD_OFFSET (L1C), as GDAL's SENTINEL2 driver gives it
    and a GeoTIFF saved from it keeps; None when the band has neither."""
    for key in ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET"):
        try:
            return float(tags[key])
        except (KeyError, ValueError):
            continue
    return None


def iter_windows(width: int, height: int, block: int = BLOCK) -> Iterator[Window]:
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield Window(col, row, min(block, width - col), min(block, height - row))


@dataclass(frozen=True)
class HiddenNodata:
    """What says a pixel has no data where GDAL's band masks do not.

    `alpha`: the 1-based number of an alpha band GDAL does not apply as a mask (it does so only for a
    2-band grey + alpha or a 4-band RGBA raster; `gdalwarp -dstalpha` or *Clip raster by mask layer* with an
    alpha band make a 7-band one). `zero_fill`: the used bands declare no nodata value, mask or alpha, so a
    pixel that is 0 in every one of them is the fill of the product (Sentinel-2 beyond a swath's edge,
    Landsat), not an observation.
    """

    alpha: Optional[int] = None
    zero_fill: bool = False

    def __bool__(self) -> bool:
        return self.alpha is not None or self.zero_fill

    def describe(self) -> str:
        if self.alpha is not None:
            return f"Band {self.alpha} is an alpha band: its transparent pixels are no data"
        if self.zero_fill:
            return ("The raster declares no nodata value: pixels that are 0 in every band used are taken as "
                    "no data (the fill of Sentinel-2 and Landsat products, e.g. beyond a swath's edge)")
        return ""

    def invalid(self, src: rasterio.io.DatasetReader, window: Window, data: np.ndarray) -> Optional[np.ndarray]:
        """bool [h, w]: the window's pixels without data by this rule, given the used bands' values `data`
        [C, h, w] read there (None when the rule is empty)."""
        if self.alpha is not None:
            return src.read(self.alpha, window=window) == 0
        if self.zero_fill:
            return ~data.any(axis=0)
        return None


def hidden_nodata(src: rasterio.io.DatasetReader, bands: list[int]) -> HiddenNodata:
    """The rule for the used `bands` (1-based): header only, no pixels read."""
    from rasterio.enums import ColorInterp, MaskFlags

    alphas = [i + 1 for i, ci in enumerate(src.colorinterp) if ci == ColorInterp.alpha and i + 1 not in bands]
    flags = [src.mask_flag_enums[b - 1] for b in bands]
    if alphas and not any(MaskFlags.alpha in f for f in flags):
        return HiddenNodata(alpha=alphas[0])
    if not alphas and all(MaskFlags.all_valid in f for f in flags):
        return HiddenNodata(zero_fill=True)
    return HiddenNodata()


def hidden_nodata_of(path: str, band_indices: list[int]) -> HiddenNodata:
    """hidden_nodata() of the raster at `path`, for 0-based `band_indices`."""
    with rasterio.open(path) as src:
        return hidden_nodata(src, [i + 1 for i in band_indices])


def valid_mask(src: rasterio.io.DatasetReader, band_indices: list[int], window: Window) -> np.ndarray:
    """True where EVERY used band has data: nodata value, internal mask, alpha band, NaN and, in a raster
    that declares none of them, 0 in every band all count (HiddenNodata)."""
    shape = (int(window.height), int(window.width))
    bands = sorted({i + 1 for i in band_indices})
    hidden = hidden_nodata(src, bands)
    valid = np.ones(shape, dtype=bool)
    nonzero = np.zeros(shape, dtype=bool) if hidden.zero_fill else None
    for band in bands:  # each band's values read at most once
        valid &= src.read_masks(band, window=window) > 0
        floating = np.issubdtype(np.dtype(src.dtypes[band - 1]), np.floating)
        if floating or nonzero is not None:
            values = src.read(band, window=window)
            if floating:
                valid &= np.isfinite(values)
            if nonzero is not None:
                nonzero |= values != 0
    if nonzero is not None:
        valid &= nonzero
    if hidden.alpha is not None:
        valid &= src.read(hidden.alpha, window=window) > 0
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


def require_reflectance_depth(info: RasterInfo, band_indices: list[int], scale: Optional[float]) -> None:
    """InputError for 8-bit bands whose reflectance scale is left to detection.

    Reflectance comes as integers × 10000 (16 bits) or as 0-1 floats; 0-255 is neither. Detection would take
    8-bit values as reflectance × 10000 (2.55 % at most), so a display product (a true-colour TCI, a stretched
    export) would be mapped as nearly all water. With a SCALE given, the values are the user's to define.
    """
    if scale is not None or not band_indices:
        return
    if all(np.dtype(info.dtypes[b]).itemsize == 1 for b in band_indices):
        raise InputError(
            f"The bands used ({[b + 1 for b in band_indices]}) of '{info.path}' are 8-bit (values 0-255), which "
            "is not reflectance: the automatic scale would read them as reflectance × 10000 (2.55 % at most), "
            "and the map would be nearly all water. 8-bit rasters are usually display products (e.g. "
            "Sentinel-2's true-colour TCI, or a stretched export).",
            "Use the reflectance bands (Sentinel-2 L1C/L2A band files, HLS or Landsat surface reflectance), or "
            "set SCALE to what turns these values into reflectance 0-1 (e.g. 0.003922 if 0-255 stands for 0-1).",
        )


def require_valid_pixels(path: str, band_indices: list[int], cancel: Optional[CancelFn] = None) -> None:
    """InputError when no pixel has data in every used band (nothing to map)."""
    if not has_valid_pixels(path, band_indices, cancel):
        raise InputError(
            f"Every pixel of '{path}' is nodata in the bands used ({[b + 1 for b in band_indices]}).",
            "Check the raster and its nodata value, or choose other bands (in a raster that declares no nodata "
            "value, a pixel that is 0 in every band used counts as no data).",
        )
