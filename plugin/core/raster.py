"""Raster I/O for flood maps: inspect the input, pick the model's bands, turn the server's answer into a map.

Everything that touches pixels works window by window: a Sentinel-2 scene is 10980² × 13 bands, and QGIS
must not load it whole. The output is written to a temporary file beside the target and moved into place
with os.replace, so a cancelled or failed job never leaves a half-written map (or a damaged old one).
"""

from __future__ import annotations

import io
import math
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile
from rasterio.windows import Window

from .errors import Cancelled, InputError, OutputError, ServerError

NODATA = 255  # output nodata; classes are 0 (not water) and 1 (water)
CLASS_NOT_WATER = 0
CLASS_WATER = 1
BLOCK = 1024  # processing window (a multiple of the output's 256-px tiles)
OUTPUT_TILE = 256

DEFAULT_MODEL_BANDS = ("BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2")

# Names a band description may carry for each model band (normalised: upper case, alphanumerics only,
# Sentinel-2 band numbers without leading zeros). Keys are TerraTorch's HLS/Sen1Floods11 band names.
BAND_ALIASES: dict[str, tuple[str, ...]] = {
    "COASTAL_AEROSOL": ("B1", "COASTAL", "COASTALAEROSOL", "AEROSOL"),
    "BLUE": ("B2", "BLUE", "BLU"),
    "GREEN": ("B3", "GREEN", "GRN"),
    "RED": ("B4", "RED"),
    "RED_EDGE_1": ("B5", "REDEDGE1", "RE1"),
    "RED_EDGE_2": ("B6", "REDEDGE2", "RE2"),
    "RED_EDGE_3": ("B7", "REDEDGE3", "RE3"),
    "NIR_BROAD": ("B8", "NIR", "NIRBROAD", "BROADNIR", "NIR1"),
    "NIR_NARROW": ("B8A", "NIRNARROW", "NARROWNIR", "NIRN", "NIR08", "NIR2", "REDEDGE4", "RE4"),
    "WATER_VAPOR": ("B9", "WATERVAPOUR", "WATERVAPOR", "WV"),
    "CIRRUS": ("B10", "CIRRUS"),
    "SWIR_1": ("B11", "SWIR1", "SWIR16"),
    "SWIR_2": ("B12", "SWIR2", "SWIR22"),
}
# Band order of a 13-band Sentinel-2 L1C product (B01..B12 with B8A after B08), used only when the file
# names no band at all and has exactly 13 of them.
S2_L1C_ORDER = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")

ProgressFn = Callable[[float], None]
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
    descriptions: tuple[Optional[str], ...]
    is_geographic: bool
    is_file: bool  # a local file (the server may read it by path), not a URL or /vsi path
    driver: str = ""


@dataclass(frozen=True)
class Stats:
    water_pixels: int
    valid_pixels: int
    water_fraction: float
    water_area_km2: float  # NaN when the raster has no CRS (the area of a pixel is unknown)


# ------------------------------------------------------------------------------------------- inspect
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
                descriptions=tuple(src.descriptions),
                is_geographic=bool(crs and crs.is_geographic),
                is_file=os.path.isfile(path),
                driver=src.driver,
            )
    except RasterioError as exc:
        raise InputError(
            f"Cannot open the raster '{path}': {str(exc).rstrip('.')}.",
            "Choose a raster GDAL can read (GeoTIFF, JP2, VRT, ...); for a URL check that it is reachable.",
        ) from None


# ------------------------------------------------------------------------------------- band selection
def _norm(text: str) -> str:
    token = re.sub(r"[^A-Z0-9]", "", text.upper())
    match = re.fullmatch(r"B0*(\d+A?)", token)
    return "B" + match.group(1) if match else token


def _aliases(name: str) -> set[str]:
    key = name.upper()
    return {_norm(a) for a in BAND_ALIASES.get(key, ())} | {_norm(name)}


def _band_canonical(description: Optional[str], names: tuple[str, ...]) -> Optional[str]:
    """The model band name a description stands for, preferring the most specific reading.

    "NIR_NARROW" must read as NIR_NARROW, not as the broad NIR its first token spells; "B02 (blue)" as BLUE.
    """
    if not description:
        return None
    tokens = [t for t in re.split(r"[^A-Za-z0-9]+", description) if t]
    candidates = [_norm(description)]
    candidates += [_norm(a + b) for a, b in zip(tokens, tokens[1:])]
    candidates += [_norm(t) for t in tokens]
    for candidate in candidates:
        for name in names:
            if candidate in _aliases(name):
                return name
    return None


def check_band_types(info: RasterInfo, bands: list[int]) -> None:
    """Complex bands (radar SLC) cannot be reflectance: say so before any request."""
    bad = [b for b in bands if np.dtype(info.dtypes[b]).kind == "c"]
    if bad:
        raise InputError(
            f"Band(s) {', '.join(str(b + 1) for b in bad)} of '{info.path}' hold complex numbers "
            f"({info.dtypes[bad[0]]}): a radar (SLC) product, not multispectral reflectance.",
            "Use a multispectral raster (e.g. Sentinel-2 or HLS reflectance); for radar, derive intensity "
            "first (Raster calculator) and use a model trained on it.",
        )


def select_bands(
    info: RasterInfo,
    bands: Optional[list[int]] = None,
    n_model_bands: int = 6,
    model_band_names: tuple[str, ...] = DEFAULT_MODEL_BANDS,
) -> tuple[list[int], list[str]]:
    """0-based input band indices in the model's band order, and warnings for the user.

    Explicit `bands` (1-based, as QGIS shows them) win. Otherwise the band descriptions are matched to the
    model's band names; without names the first N bands are taken, with a warning, since a wrong band
    order gives a plausible-looking but wrong map.
    """
    names = tuple(model_band_names)[:n_model_bands] if model_band_names else ()
    label = ", ".join(names) if names else f"{n_model_bands} bands"
    warnings: list[str] = []
    if bands:
        if len(bands) != n_model_bands:
            raise InputError(
                f"{len(bands)} band numbers were given, the model needs {n_model_bands} ({label}).",
                f"Give exactly {n_model_bands} band numbers in the model's order, or leave the bands empty "
                "for automatic selection.",
            )
        bad = [b for b in bands if not 1 <= int(b) <= info.count]
        if bad:
            raise InputError(
                f"Band number(s) {', '.join(map(str, bad))} out of range: the raster has {info.count} bands.",
                f"Use band numbers from 1 to {info.count}.",
            )
        if len(set(bands)) != len(bands):
            warnings.append(f"Bands {bands} repeat a band; each model band usually needs its own input band.")
        return [int(b) - 1 for b in bands], warnings

    if info.count < n_model_bands:
        raise InputError(
            f"The raster has {info.count} band(s); the model needs {n_model_bands} ({label}).",
            "Use a multispectral raster with those bands (e.g. Sentinel-2 or HLS), or stack them first "
            "(Raster > Miscellaneous > Build Virtual Raster, 'Place each input file into a separate band').",
        )

    found: dict[str, list[int]] = {}
    known = tuple(BAND_ALIASES) if names else ()
    lookup = tuple(dict.fromkeys((*names, *known)))  # model names first, then every band name we know
    for index, description in enumerate(info.descriptions):
        canonical = _band_canonical(description, lookup)
        if canonical:
            found.setdefault(canonical, []).append(index)

    if names and any(n in found for n in names):
        chosen: list[int] = []
        missing: list[str] = []
        for name in names:
            hits = found.get(name, [])
            if not hits and name.upper() == "NIR_NARROW" and found.get("NIR_BROAD"):
                hits = found["NIR_BROAD"]
                warnings.append(
                    "No narrow NIR band (B8A) found; using the broad NIR band (B08) "
                    f"(band {hits[0] + 1}) instead. Results may be slightly off."
                )
            if not hits:
                missing.append(name)
                continue
            if len(hits) > 1:
                warnings.append(f"Several bands look like {name} ({[h + 1 for h in hits]}); using band {hits[0] + 1}.")
            chosen.append(hits[0])
        if missing:
            raise InputError(
                f"The raster names its bands, but none is {', '.join(missing)} (found: "
                f"{_describe_found(info)}).",
                f"Give the band numbers for {label} explicitly in the 'Bands' parameter.",
            )
        return chosen, warnings

    if info.count == 13 and not any(info.descriptions):
        chosen = [S2_L1C_ORDER.index(_norm(a)) for a in ("B02", "B03", "B04", "B8A", "B11", "B12")]
        if n_model_bands == 6 and tuple(n.upper() for n in names) == DEFAULT_MODEL_BANDS:
            warnings.append(
                "The raster's 13 bands are unnamed; assuming Sentinel-2 L1C order and using bands "
                f"{[c + 1 for c in chosen]} (B02, B03, B04, B8A, B11, B12). Set 'Bands' if that is wrong."
            )
            return chosen, warnings

    chosen = list(range(n_model_bands))
    warnings.append(
        f"The raster's bands are not named; assuming bands 1-{n_model_bands} are {label} in that order. "
        "Set 'Bands' if that is wrong."
    )
    return chosen, warnings


def _describe_found(info: RasterInfo) -> str:
    named = [f"{i + 1}={d}" for i, d in enumerate(info.descriptions) if d]
    return ", ".join(named) if named else "no names"


# ------------------------------------------------------------------------------------------- windows
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


def has_valid_pixels(path: str, band_indices: list[int], cancel: Optional[CancelFn] = None) -> bool:
    """Whether any pixel has data in all used bands; stops at the first window that has one."""
    with rasterio.open(path) as src:
        for window in iter_windows(src.width, src.height):
            if cancel is not None and cancel():
                raise Cancelled()
            if valid_mask(src, band_indices, window).any():
                return True
    return False


# ------------------------------------------------------------------------------------------ pixel area
_ELLIPSOID = re.compile(r'(?:SPHEROID|ELLIPSOID)\["[^"]*",\s*([0-9.eE+-]+),\s*([0-9.eE+-]+)')
WGS84 = (6378137.0, 298.257223563)


def _ellipsoid(crs: CRS) -> tuple[float, float]:
    """(semi-major axis in metres, eccentricity) of the CRS's ellipsoid; WGS84 if the WKT does not say."""
    match = _ELLIPSOID.search(crs.to_wkt())
    a, inv_f = (float(match.group(1)), float(match.group(2))) if match else WGS84
    f = 1.0 / inv_f if inv_f else 0.0
    return a, math.sqrt(max(f * (2.0 - f), 0.0))


def _authalic_q(phi: np.ndarray, e: float) -> np.ndarray:
    """q(φ) of the authalic latitude: the area from the equator to φ per radian of longitude is a²·q/2."""
    s = np.sin(phi)
    if e < 1e-12:
        return 2.0 * s
    es = e * s
    return (1.0 - e * e) * (s / (1.0 - es * es) - np.log((1.0 - es) / (1.0 + es)) / (2.0 * e))


class PixelArea:
    """Area in m² of the pixels of a window: exact on the ellipsoid for geographic CRSs, not degrees²."""

    def __init__(self, crs_wkt: Optional[str], transform: Affine) -> None:
        self.transform = transform
        self.known = bool(crs_wkt)
        self.constant: Optional[float] = None
        if not crs_wkt:
            return
        crs = CRS.from_wkt(crs_wkt)
        self.geographic = crs.is_geographic
        if not self.geographic:
            _, factor = crs.linear_units_factor
            self.constant = abs(transform.determinant) * factor * factor
            return
        _, to_radians = crs.units_factor
        self.to_rad = float(to_radians) if to_radians else math.pi / 180.0
        self.a, self.e = _ellipsoid(crs)
        self.north_up = transform.b == 0 and transform.d == 0

    def rows(self, window: Window) -> Union[float, np.ndarray]:
        """Pixel area for the window: a scalar, a (rows, 1) column (north-up geographic) or a full array."""
        if not self.known:
            return float("nan")
        if self.constant is not None:
            return self.constant
        t = self.transform
        r0, c0 = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        if self.north_up:
            edges = (t.f + t.e * np.arange(r0, r0 + h + 1, dtype="float64")) * self.to_rad
            edges = np.clip(edges, -math.pi / 2, math.pi / 2)
            q = _authalic_q(edges, self.e)
            dlon = abs(t.a) * self.to_rad
            return (0.5 * self.a * self.a * dlon * np.abs(np.diff(q)))[:, None]
        # Rotated grid (rare): local ellipsoid scale at each pixel centre times the pixel's angular area.
        rows, cols = np.mgrid[r0 : r0 + h, c0 : c0 + w] + 0.5
        lat = (t.d * cols + t.e * rows + t.f) * self.to_rad
        s2 = np.sin(lat) ** 2
        e2 = self.e * self.e
        meridional = self.a * (1 - e2) / (1 - e2 * s2) ** 1.5
        normal = self.a / np.sqrt(1 - e2 * s2)
        return abs(t.determinant) * self.to_rad**2 * meridional * normal * np.cos(lat)


class StatsAccumulator:
    def __init__(self, crs_wkt: Optional[str], transform: Affine) -> None:
        self.area = PixelArea(crs_wkt, transform)
        self.water = 0
        self.valid = 0
        self.water_m2 = 0.0

    def add(self, window: Window, classes: np.ndarray, valid: np.ndarray) -> None:
        water = valid & (classes == CLASS_WATER)
        self.water += int(water.sum())
        self.valid += int(valid.sum())
        cell = self.area.rows(window)
        self.water_m2 += float((water * cell).sum()) if not np.isscalar(cell) else int(water.sum()) * float(cell)

    def result(self) -> Stats:
        fraction = self.water / self.valid if self.valid else 0.0
        area = self.water_m2 / 1e6 if self.area.known else float("nan")
        return Stats(self.water, self.valid, fraction, area)


def compute_stats(path: str) -> Stats:
    """Water/valid pixel counts and water area of a class raster (0/1, nodata 255) already on disk."""
    with rasterio.open(path) as src:
        acc = StatsAccumulator(src.crs.to_wkt() if src.crs else None, src.transform)
        nodata = NODATA if src.nodata is None else src.nodata
        for window in iter_windows(src.width, src.height):
            data = src.read(1, window=window)
            acc.add(window, data, data != nodata)
    return acc.result()


# ------------------------------------------------------------------------------------------- output
def _same_file(a: str, b: str) -> bool:
    if not a or not b:
        return False
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def check_output_path(output_path: str, input_path: str) -> None:
    """Fail early (before any request) when the output cannot or must not be written."""
    if not output_path:
        raise OutputError("No output file was given.", "Choose where to save the flood map (a .tif file).")
    if _same_file(output_path, input_path):
        raise OutputError(
            f"The output '{output_path}' is the input raster.",
            "Choose another output file; the input is never overwritten.",
        )
    folder = os.path.dirname(os.path.abspath(output_path))
    if not os.path.isdir(folder):
        raise OutputError(f"The output folder '{folder}' does not exist.", "Create it or choose another folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(
            f"The output folder '{folder}' is not writable.", "Choose a folder you can write to."
        )
    if os.path.isdir(output_path):
        raise OutputError(f"The output '{output_path}' is a folder.", "Give a file name ending in .tif.")


def temp_beside(output_path: str) -> str:
    """A fresh temporary file name in the output's folder (same file system, so os.replace is atomic)."""
    folder = os.path.dirname(os.path.abspath(output_path))
    base = os.path.basename(output_path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".part.tif", dir=folder)
    except OSError as exc:
        raise OutputError(f"Cannot write in '{folder}': {exc.strerror}.", "Choose a folder you can write to.") from None
    os.close(fd)
    return tmp


def output_profile(src: rasterio.io.DatasetReader) -> dict:
    tiled = src.width >= OUTPUT_TILE and src.height >= OUTPUT_TILE
    profile = {
        "driver": "GTiff",
        "width": src.width,
        "height": src.height,
        "count": 1,
        "dtype": "uint8",
        "nodata": NODATA,
        "crs": src.crs,
        "transform": src.transform,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    if tiled:
        profile.update(tiled=True, blockxsize=OUTPUT_TILE, blockysize=OUTPUT_TILE)
    return profile


def decode_classes(codes: np.ndarray) -> np.ndarray:
    """TerraTorch writes class × 255 as uint8 (0 → 0, 1 → 255, k → 256 − k by wrap-around): undo it."""
    codes = codes.astype(np.uint16)
    return ((256 - codes) % 256).astype(np.uint8)


def _open_server_raster(server_tiff: Union[bytes, str, os.PathLike]):
    if isinstance(server_tiff, (bytes, bytearray)):
        memfile = MemoryFile(io.BytesIO(bytes(server_tiff)))
        try:
            return memfile, memfile.open()
        except RasterioError as exc:
            memfile.close()
            raise ServerError(
                f"The server's answer is not a readable GeoTIFF: {exc}.",
                "Check the server's log; the TerraTorch plugin may be misconfigured.",
            ) from None
    try:
        return None, rasterio.open(server_tiff)
    except RasterioError as exc:
        raise ServerError(f"The server's output '{server_tiff}' cannot be read: {exc}.", "") from None


def _check_same_grid(server: rasterio.io.DatasetReader, src: rasterio.io.DatasetReader) -> None:
    problems = []
    if (server.width, server.height) != (src.width, src.height):
        problems.append(f"size {server.width}×{server.height} instead of {src.width}×{src.height}")
    if not server.transform.almost_equals(src.transform, precision=1e-9):
        problems.append(f"geotransform {tuple(server.transform)[:6]} instead of {tuple(src.transform)[:6]}")
    if (server.crs is None) != (src.crs is None) or (server.crs and src.crs and server.crs != src.crs):
        problems.append(f"CRS {server.crs} instead of {src.crs}")
    if server.count < 1:
        problems.append("no band")
    if problems:
        raise ServerError(
            "The server's flood map does not match the input raster's grid: " + "; ".join(problems) + ".",
            "The server's TerraTorch plugin returned a different raster; update TerraTorch on the server, "
            "or use the tensor transport.",
        )


def finalize_classes(
    server_tiff: Union[bytes, str, os.PathLike],
    input_path: str,
    band_indices: list[int],
    output_path: str,
    cancel: Optional[CancelFn] = None,
    on_progress: Optional[ProgressFn] = None,
) -> Stats:
    """Write the flood map: server classes remapped to 0/1, nodata 255 wherever an input band has none.

    The server knows nothing of nodata (TerraTorch predicts on the fill value too), so the mask comes from
    the input's own dataset masks, for exactly the bands that were sent.
    """
    check_output_path(output_path, input_path)
    memfile, server = _open_server_raster(server_tiff)
    tmp = None
    try:
        with server, rasterio.open(input_path) as src:
            _check_same_grid(server, src)
            acc = StatsAccumulator(src.crs.to_wkt() if src.crs else None, src.transform)
            tmp = temp_beside(output_path)
            windows = list(iter_windows(src.width, src.height))
            with rasterio.open(tmp, "w", **output_profile(src)) as dst:
                for i, window in enumerate(windows):
                    if cancel is not None and cancel():
                        raise Cancelled()
                    classes = decode_classes(server.read(1, window=window))
                    valid = valid_mask(src, band_indices, window)
                    dst.write(np.where(valid, classes, NODATA).astype(np.uint8), 1, window=window)
                    acc.add(window, classes, valid)
                    if on_progress is not None:
                        on_progress((i + 1) / len(windows))
        os.replace(tmp, output_path)
        tmp = None
        return acc.result()
    except RasterioError as exc:
        raise OutputError(
            f"Making the flood map '{output_path}' failed: {exc}.",
            "Check free disk space and permissions of the output folder, and that the input is readable.",
        ) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if memfile is not None:
            memfile.close()
