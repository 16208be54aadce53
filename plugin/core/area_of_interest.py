"""The area a job maps: a pixel window of the input's grid, cut by an extent and by mask polygons.

    EXTENT (bounds, any CRS) and MASK polygons (GeoJSON-like, any CRS) -> Area: a window on the input's own
    grid (pixel-aligned, never resampled: every pixel the extent touches), and the polygons in the input's CRS

Everything here is geometry only (no pixel is read), so an extent that misses the raster or polygons that miss
the extent fail before any request. Which pixels of the window are mapped (polygons, clouds, the input's nodata)
is area_mask.py's job; the transports read and write the window only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import RasterioError
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from .cloud_values import (
    DEFAULT_CLOUD_VALUES,
    CloudBands,
    check_cloud_values,
    described_cloud_bands,
    format_values,
    named_cloud_bands,
)
from .errors import InputError, NothingToMap
from .layer_nodata import NodataRange
from .layer_nodata import describe as describe_nodata
from .raster import RasterInfo, grid_bounds

EDGE_TOLERANCE = 1e-6  # of a pixel: an extent on a pixel edge (up to float noise) does not take the next pixel

Bounds = tuple[float, float, float, float]  # (xmin, ymin, xmax, ymax)


class AreaMask:
    """Which pixels of the area are mapped, one bit per pixel (a whole Sentinel-2 tile fits in 15 MB).

    Filled once, block by block (blocks start on multiples of 8 columns); read by any thread afterwards.
    """

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.bits = np.zeros((height, (width + 7) // 8), dtype=np.uint8)

    def write(self, window: Window, mapped: np.ndarray) -> None:
        r0, c0 = int(window.row_off), int(window.col_off)
        if c0 % 8:
            raise ValueError("an area mask block must start on a multiple of 8 columns")
        packed = np.packbits(mapped.astype(bool), axis=1)
        self.bits[r0:r0 + packed.shape[0], c0 // 8:c0 // 8 + packed.shape[1]] = packed

    def read(self, window: Window) -> np.ndarray:
        """The mapped pixels of `window` (area coordinates, inside the area) as a bool array."""
        r0, c0 = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        first = c0 // 8
        bits = np.unpackbits(self.bits[r0:r0 + h, first:(c0 + w + 7) // 8], axis=1)
        return bits[:, c0 - 8 * first:c0 - 8 * first + w].astype(bool)


@dataclass(frozen=True, eq=False)
class Area:
    """A window of the input's grid, what is left out of it, and the pixel figures of the area."""

    window: Window  # on the input's grid (integer offsets and size)
    transform: Affine  # the window's geotransform: the map's grid
    whole: bool  # the window is the whole raster
    polygons: tuple[dict, ...] = ()  # GeoJSON-like polygons in the input's CRS; () = no polygon mask
    cloud_path: str = ""  # a raster whose `cloud_values` mark cloud; "" = none
    cloud_values: tuple[float, ...] = DEFAULT_CLOUD_VALUES
    cloud_bands: CloudBands = CloudBands()  # the cloud raster's bands read, and their cloud bits if flags
    # the layer's additional no data values (layer_nodata.py), of every band; build_mask keeps the used bands'
    layer_nodata: tuple[NodataRange, ...] = ()
    mask: Optional[AreaMask] = None  # set by area_mask.build_mask when something leaves pixels out
    data_pixels: int = -1  # pixels of the area with data in every used band (clouds included); -1 unknown
    cloud_pixels: int = 0  # of those, the pixels the cloud mask covers
    layer_nodata_pixels: int = 0  # pixels with data by the raster that the layer's no data values leave out

    @property
    def width(self) -> int:
        return int(self.window.width)

    @property
    def height(self) -> int:
        return int(self.window.height)

    @property
    def cloud_fraction(self) -> float:
        return self.cloud_pixels / self.data_pixels if self.data_pixels > 0 else 0.0

    @property
    def cloud_rule(self) -> str:
        """What marks cloud in the cloud mask, as the log says it."""
        read = self.cloud_bands
        if len(read.bands) > 1:
            return f"cloud flags in bands {format_values(read.bands)} ({read.what})"
        if read.bits:
            return f"cloud bits {format_values(read.bits)} ({read.what})"
        return f"cloud values {format_values(self.cloud_values)}" + (f" ({read.what})" if read.what else "")

    @property
    def bounds(self) -> Bounds:
        """(xmin, ymin, xmax, ymax) of the window, in the input's CRS."""
        return grid_bounds(self.transform, self.width, self.height)

    def on_input(self, window: Window) -> Window:
        """A window of the area as the same pixels' window on the input's grid."""
        return Window(int(self.window.col_off) + int(window.col_off), int(self.window.row_off) + int(window.row_off),
                      int(window.width), int(window.height))

    def grid(self, crs: Any) -> AreaGrid:
        """The map's grid (what output_profile reads): the window's size and transform in `crs`."""
        return AreaGrid(self.width, self.height, crs, self.transform)

    def view(self, info: RasterInfo) -> RasterInfo:
        """The input as the job maps it: the window's size and transform (what transport choice weighs)."""
        return info if self.whole else replace(info, width=self.width, height=self.height, transform=self.transform)

    def describe(self, info: RasterInfo) -> str:
        share = 100.0 * self.width * self.height / (info.width * info.height)
        text = (f"Area: {self.width}×{self.height} px from pixel ({int(self.window.col_off)}, "
                f"{int(self.window.row_off)}) of the {info.width}×{info.height} raster ({share:.3g} % of it)")
        if self.polygons:
            text += f"; {len(self.polygons)} mask polygon(s)"
        if self.cloud_path:
            text += f"; {self.cloud_rule} of {self.cloud_path}"
        if self.layer_nodata:
            text += f"; the layer's additional no data values ({describe_nodata(self.layer_nodata)})"
        return text


@dataclass(frozen=True)
class AreaGrid:
    width: int
    height: int
    crs: Any
    transform: Affine


def whole_area(info: Any) -> Area:
    """All of a raster (a RasterInfo or an open dataset): no window, no mask."""
    return Area(Window(0, 0, info.width, info.height), info.transform, True)


def plan_area(info: RasterInfo, extent: Optional[Bounds] = None, extent_crs: str = "",
              polygons: Optional[Sequence[dict]] = None, polygons_crs: str = "", cloud_path: str = "",
              cloud_values: Optional[Sequence[float]] = None, note=None,
              layer_nodata: Sequence[NodataRange] = (), cloud_bits: Sequence[int] = ()) -> Area:
    """The window the job maps: the raster, cut to `extent` and to the polygons' bounds; InputError when
    nothing is left. `polygons=None` is no mask; an empty list is a mask without polygons (an error).
    `note(message)` hears what was cut (e.g. an extent reaching past the raster). `layer_nodata`: the values
    the QGIS layer adds to the raster's nodata. `cloud_bits`, when given, mark cloud instead of `cloud_values`."""
    window = Window(0, 0, info.width, info.height)
    if extent is not None:
        bounds = _checked_extent(extent)
        if extent_crs:
            bounds = _to_raster_crs(info, bounds, extent_crs, "EXTENT")
        window = _window_of(info, bounds, window, "The extent does", _extent_hint(extent_crs))
        if note is not None and (window.width, window.height) != (info.width, info.height):
            full = _pixel_span(info, bounds)
            if (full.width, full.height) != (window.width, window.height):
                note(f"The extent reaches past the raster; the map covers the {int(window.width)}×"
                     f"{int(window.height)} px where they overlap.")
    shapes: tuple[dict, ...] = ()
    if polygons is not None:
        shapes = _checked_polygons(info, polygons, polygons_crs)
        within = " within the extent" if extent is not None else ""
        window = _polygons_window(info, shapes, window, "The mask polygons do", within,
                                  "Choose a mask layer (or features) over the raster"
                                  + (" and inside the extent" if extent is not None else "")
                                  + "; a layer in another CRS is reprojected, so check that its CRS is set right.")
    values = tuple(DEFAULT_CLOUD_VALUES if cloud_values is None else check_cloud_values(cloud_values))
    cloud_bands = _cloud_bands(cloud_path, values, tuple(cloud_bits)) if cloud_path else CloudBands()
    whole = (int(window.col_off), int(window.row_off), int(window.width), int(window.height)) == (
        0, 0, info.width, info.height)
    transform = info.transform if whole else window_transform(window, info.transform)
    return Area(window, transform, whole, shapes, cloud_path or "", values, cloud_bands, tuple(layer_nodata))


def _cloud_bands(path: str, values: tuple[float, ...], bits: tuple[int, ...] = ()) -> CloudBands:
    """The cloud raster's bands to read: a bit-flag quality raster given with the default (Sentinel-2 SCL) values
    by its name, with its own cloud bits; else a band known by its description (SCL, QA60, …), else band 1. Bits
    given (CLOUD_VALUES bits:…) are tested in the band a QA description names, else in band 1."""
    default = values == DEFAULT_CLOUD_VALUES and not bits
    named = named_cloud_bands(path) if default else None
    if named is not None:
        return named
    try:
        with rasterio.open(path) as src:
            descriptions = src.descriptions
    except RasterioError:  # reported with its fix when the mask is read (area_mask.py)
        descriptions = ()
    read = described_cloud_bands(descriptions, default) or CloudBands()
    if bits:
        band = read.bands[0]
        return CloudBands((band,), bits, "CLOUD_VALUES" + (f", band {band}" if band != 1 else ""))
    return read


# ------------------------------------------------------------------------------------------------ extent
def _checked_extent(extent: Bounds) -> Bounds:
    try:
        xmin, ymin, xmax, ymax = (float(v) for v in extent)
    except (TypeError, ValueError):
        raise InputError(f"EXTENT {extent!r} is not an extent.",
                         "Give xmin, ymin, xmax, ymax (in QGIS: xmin,xmax,ymin,ymax [CRS]), or pick it on "
                         "the map canvas.") from None
    if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
        raise InputError(f"EXTENT ({xmin}, {ymin}, {xmax}, {ymax}) is not finite.",
                         "Give an extent of finite numbers, or pick it on the map canvas.")
    if xmin > xmax or ymin > ymax:
        raise InputError(f"EXTENT has its minimum above its maximum (x {xmin} to {xmax}, y {ymin} to {ymax}).",
                         "Give the extent as xmin, xmax, ymin, ymax, or pick it on the map canvas.")
    if xmin == xmax or ymin == ymax:
        raise InputError(f"EXTENT is empty: {xmax - xmin:g} wide and {ymax - ymin:g} high.",
                         "Draw an extent with an area (or pick the map canvas extent), or leave EXTENT empty "
                         "to map the whole raster.")
    return xmin, ymin, xmax, ymax


def _extent_hint(extent_crs: str) -> str:
    return ("Choose an extent over the raster (e.g. the map canvas over it, or the layer's extent)"
            + ("; check that the extent's CRS is the right one." if extent_crs else "; check the extent's CRS."))


def _to_raster_crs(info: RasterInfo, bounds: Bounds, crs: str, what: str) -> Bounds:
    from rasterio.errors import CRSError
    from rasterio.warp import transform_bounds

    if info.crs is None:
        raise InputError(f"{what} has a CRS and the raster has none, so they cannot be put together.",
                         "Assign the raster's CRS (Raster > Projections > Assign Projection) and run again.")
    try:
        return tuple(transform_bounds(crs, info.crs, *bounds, densify_pts=21))
    except (CRSError, ValueError) as exc:
        raise InputError(f"{what}'s CRS '{crs}' cannot be used: {exc}.", "Give an EPSG code or a WKT.") from None


def _pixel_span(info: RasterInfo, bounds: Bounds) -> Window:
    """Every pixel the bounds touch (outward), unclipped; rotated grids through their four corners."""
    from rasterio.transform import rowcol

    xmin, ymin, xmax, ymax = bounds
    rows, cols = rowcol(info.transform, [xmin, xmin, xmax, xmax], [ymin, ymax, ymin, ymax], op=float)
    c0, c1 = math.floor(min(cols) + EDGE_TOLERANCE), math.ceil(max(cols) - EDGE_TOLERANCE)
    r0, r1 = math.floor(min(rows) + EDGE_TOLERANCE), math.ceil(max(rows) - EDGE_TOLERANCE)
    return Window(c0, r0, max(c1 - c0, 0), max(r1 - r0, 0))


def _window_of(info: RasterInfo, bounds: Bounds, within: Window, what: str, hint: str, where: str = "") -> Window:
    """The pixels of `within` that the bounds touch; NothingToMap ("`what` not overlap the raster`where`") when
    there are none."""
    span = _pixel_span(info, bounds)
    c0 = max(span.col_off, within.col_off)
    r0 = max(span.row_off, within.row_off)
    c1 = min(span.col_off + span.width, within.col_off + within.width)
    r1 = min(span.row_off + span.height, within.row_off + within.height)
    if c1 <= c0 or r1 <= r0:
        xmin, ymin, xmax, ymax = bounds
        raster = _bounds_text(info)
        subject, verb = what.rsplit(" ", 1)
        raise NothingToMap(f"{subject} ({xmin:.10g}, {ymin:.10g} to {xmax:.10g}, {ymax:.10g} in the raster's CRS) "
                           f"{verb} not overlap the raster{where} ({raster}): there is nothing to map.", hint)
    return Window(int(c0), int(r0), int(c1 - c0), int(r1 - r0))


def _bounds_text(info: RasterInfo) -> str:
    xmin, ymin, xmax, ymax = grid_bounds(info.transform, info.width, info.height)
    return f"{xmin:.10g}, {ymin:.10g} to {xmax:.10g}, {ymax:.10g}"


# ---------------------------------------------------------------------------------------------- polygons
def _checked_polygons(info: RasterInfo, polygons: Sequence[dict], crs: str) -> tuple[dict, ...]:
    shapes = tuple(g for g in polygons if _is_polygon(g))
    if not shapes:
        raise InputError("The mask layer has no polygons (no features, or none with a polygon geometry).",
                         "Choose a polygon layer with the area to map (or select features and tick 'Selected "
                         "features only'), or leave MASK empty to map the whole raster.")
    if crs:
        from rasterio.errors import CRSError
        from rasterio.warp import transform_geom

        if info.crs is None:
            raise InputError("The mask polygons have a CRS and the raster has none, so they cannot be put "
                             "together.", "Assign the raster's CRS (Raster > Projections > Assign Projection).")
        try:
            shapes = tuple(transform_geom(crs, info.crs, g) for g in shapes)
        except (CRSError, ValueError) as exc:
            raise InputError(f"The mask's CRS '{crs}' cannot be used: {exc}.", "Give an EPSG code or a WKT.") from None
    return shapes


def _is_polygon(geometry: Any) -> bool:
    return (isinstance(geometry, dict) and geometry.get("type") in ("Polygon", "MultiPolygon")
            and bool(geometry.get("coordinates")))


def _polygons_window(info: RasterInfo, shapes: Sequence[dict], within: Window, what: str, where: str,
                     hint: str) -> Window:
    """The pixels of `within` touched by the polygons' boxes (each box cut to `within` first)."""
    from rasterio.features import bounds

    boxes = np.array([bounds(g) for g in shapes], dtype=np.float64)
    spans = []
    for box in boxes:
        try:
            spans.append(_window_of(info, tuple(box), within, what, hint, where))
        except InputError:
            continue
    if not spans:  # the error for all of them together
        _window_of(info, (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()),
                   Window(0, 0, 0, 0), what, hint, where)
    c0 = min(s.col_off for s in spans)
    r0 = min(s.row_off for s in spans)
    c1 = max(s.col_off + s.width for s in spans)
    r1 = max(s.row_off + s.height for s in spans)
    return Window(int(c0), int(r0), int(c1 - c0), int(r1 - r0))
