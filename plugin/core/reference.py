"""Reference water (water that is always there) read onto a water map's grid, window by window.

A reference is a raster, water where its value is >= a threshold (a 0/1 mask or an earlier flood map at 1,
the JRC Global Surface Water occurrence in percent at 50), or polygons (hydrography, OpenStreetMap water).
Rasters are warped onto the map's grid by GDAL (nearest neighbour: a class is never averaged); where a raster
reference has no data or does not reach, there is no reference. Polygons cover the whole map: outside them
is land. Several references are united: water in any of them is reference water.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
from affine import Affine
from rasterio.windows import Window

from .errors import InputError
from .raster import RasterInfo, grid_bounds, inspect

POLYGON_TYPES = ("Polygon", "MultiPolygon")


@dataclass(frozen=True)
class RasterReference:
    path: str
    threshold: float = 1.0  # water where value >= threshold
    label: str = "the reference water raster"


@dataclass(frozen=True)
class PolygonReference:
    shapes: list[dict]  # GeoJSON-like Polygon / MultiPolygon geometries
    crs_wkt: Optional[str]  # their CRS, as WKT or "EPSG:n" (None: the map's own coordinates)
    label: str = "the reference water polygons"
    skipped: int = field(default=0, compare=False)  # points or lines that were left out


Reference = Union[RasterReference, PolygonReference]


@dataclass(frozen=True)
class Grid:
    """A map's grid: where its pixels are."""

    crs_wkt: Optional[str]
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, info: RasterInfo) -> Grid:
        return cls(info.crs, info.transform, info.width, info.height)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        from rasterio.transform import array_bounds

        return array_bounds(self.height, self.width, self.transform)  # (west, south, east, north)


def check_threshold(info: RasterInfo, threshold: float, label: str) -> None:
    """The threshold must split the values the raster's type can hold: else no pixel, or every pixel, is water."""
    dtype = np.dtype(info.dtypes[0])
    hint = ("Use 1 for a 0/1 water mask or a Flood Mapper map, 50 for the JRC Global Surface Water "
            "occurrence layer (percent of the time a pixel was water).")
    if not math.isfinite(threshold):
        raise InputError(f"REFERENCE_THRESHOLD {threshold} is not a number.", hint)
    if np.issubdtype(dtype, np.integer):
        lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
        if not lo < threshold <= hi:
            everything = threshold <= lo
            raise InputError(
                f"REFERENCE_THRESHOLD {threshold:g} is outside the range of {label} ({dtype.name}: {lo} to {hi}): "
                f"{'every pixel' if everything else 'no pixel'} of it would be water.", hint)


def check_raster_reference(ref: RasterReference) -> RasterInfo:
    """A raster reference that can be used: one band, a threshold within its range, a CRS."""
    info = inspect(ref.path)
    if info.count != 1:
        raise InputError(
            f"{ref.label.capitalize()} ('{ref.path}') has {info.count} bands; a water reference has one (a 0/1 "
            "water mask, a water occurrence layer, or a flood map).",
            "Give one band (e.g. the JRC Global Surface Water occurrence GeoTIFF); an image of the place before "
            "the event goes to Map floods as PRE_EVENT, which maps it with the model.")
    check_threshold(info, ref.threshold, ref.label)
    if info.crs is None:
        raise InputError(f"{ref.label.capitalize()} ('{ref.path}') has no CRS, so where it lies is unknown.",
                         "Assign its CRS (Raster > Projections > Assign Projection) and run again.")
    return info


def polygon_parts(geometry: dict) -> list[dict]:
    """The polygons of a GeoJSON-like geometry (collections opened); [] for points and lines."""
    kind = geometry.get("type") if geometry else None
    if kind in POLYGON_TYPES:
        return [geometry]
    if kind == "GeometryCollection":
        return [p for g in geometry.get("geometries", []) for p in polygon_parts(g)]
    return []


def polygons_from(geometries: list[dict], crs_wkt: Optional[str], label: str, kind: str = "") -> PolygonReference:
    """A PolygonReference of the polygons among `geometries`; InputError when there are features but none is a
    polygon (points, lines: they have no area to compare with). `kind` names the layer's geometry type."""
    shapes: list[dict] = []
    skipped = 0
    for geometry in geometries:
        parts = polygon_parts(geometry)
        shapes.extend(parts)
        skipped += 0 if parts else 1
    if skipped and not shapes:
        raise InputError(
            f"{label.capitalize()} holds {kind or 'points or lines'}, not polygons: a line or a point has no area "
            "to hold water.",
            "Give water areas as polygons (e.g. OpenStreetMap water polygons, or rivers buffered to their "
            "width), or a water raster.")
    return PolygonReference(shapes, crs_wkt, label, skipped)


def overlaps(ref: Reference, grid: Grid) -> bool:
    """Whether the reference's footprint meets the map's (by bounding boxes: cheap, for an early warning)."""
    from rasterio.warp import transform_bounds

    if isinstance(ref, RasterReference):
        info = inspect(ref.path)
        bounds = grid_bounds(info.transform, info.width, info.height)
        crs = info.crs
    else:
        if not ref.shapes:
            return False
        bounds = _union_bounds([_bounds(s) for s in ref.shapes])
        crs = ref.crs_wkt
    if crs and grid.crs_wkt:
        try:
            bounds = transform_bounds(crs, grid.crs_wkt, *bounds, densify_pts=21)
        except Exception:  # noqa: BLE001 - a footprint that cannot be projected: let the warp decide
            return True
    west, south, east, north = grid.bounds
    return bounds[0] < east and bounds[2] > west and bounds[1] < north and bounds[3] > south


class ReferenceReader:
    """Reference water on a map's grid, one window at a time: (water, covered) boolean arrays."""

    def __init__(self, refs: list[Reference], grid: Grid) -> None:
        self.grid = grid
        self._stack = ExitStack()
        self._rasters: list[tuple[object, float]] = []  # (warped dataset, threshold)
        self._shapes: list[dict] = []
        self._boxes = np.zeros((0, 4))
        try:
            for ref in refs:
                if isinstance(ref, RasterReference):
                    self._rasters.append((self._warped(ref), ref.threshold))
                else:
                    self._shapes.extend(self._in_map_crs(ref))
            if self._shapes:
                self._boxes = np.array([_bounds(s) for s in self._shapes])
        except Exception:
            self._stack.close()
            raise
        self.polygons = any(isinstance(r, PolygonReference) for r in refs)

    def _warped(self, ref: RasterReference):
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        src = self._stack.enter_context(rasterio.open(ref.path))
        # add_alpha: where the source does not reach (or is nodata) the alpha is 0, with or without a nodata value
        return self._stack.enter_context(WarpedVRT(
            src, crs=self.grid.crs_wkt, transform=self.grid.transform, width=self.grid.width,
            height=self.grid.height, resampling=Resampling.nearest, add_alpha=True))

    def _in_map_crs(self, ref: PolygonReference) -> list[dict]:
        from rasterio.warp import transform_geom

        if not ref.shapes or not ref.crs_wkt or not self.grid.crs_wkt or _same_crs(ref.crs_wkt, self.grid.crs_wkt):
            return list(ref.shapes)
        return list(transform_geom(ref.crs_wkt, self.grid.crs_wkt, ref.shapes))

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        shape = (int(window.height), int(window.width))
        water = np.zeros(shape, bool)
        covered = np.full(shape, self.polygons)
        for vrt, threshold in self._rasters:
            values = vrt.read(1, window=window)
            here = vrt.read_masks(1, window=window) > 0
            if np.issubdtype(values.dtype, np.floating):
                here &= np.isfinite(values)
            covered |= here
            water |= here & (values >= threshold)
        if self._shapes:
            water |= self._rasterize(window, shape)
        return water, covered

    def _rasterize(self, window: Window, shape: tuple[int, int]) -> np.ndarray:
        from rasterio.features import rasterize
        from rasterio.windows import bounds as window_bounds
        from rasterio.windows import transform as window_transform

        left, bottom, right, top = window_bounds(window, self.grid.transform)
        west, east, south, north = min(left, right), max(left, right), min(bottom, top), max(bottom, top)
        b = self._boxes
        near = np.flatnonzero((b[:, 0] < east) & (b[:, 2] > west) & (b[:, 1] < north) & (b[:, 3] > south))
        if near.size == 0:
            return np.zeros(shape, bool)
        burnt = rasterize(((self._shapes[i], 1) for i in near), out_shape=shape,
                          transform=window_transform(window, self.grid.transform), fill=0, dtype="uint8")
        return burnt.astype(bool)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> ReferenceReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _same_crs(a: str, b: str) -> bool:
    from rasterio.crs import CRS

    return CRS.from_user_input(a) == CRS.from_user_input(b)


def _coordinates(geometry: dict) -> Iterator[tuple[float, float]]:
    def walk(c):
        if c and isinstance(c[0], (int, float)):
            yield c[0], c[1]
        else:
            for item in c:
                yield from walk(item)

    yield from walk(geometry.get("coordinates", []))


def _bounds(geometry: dict) -> tuple[float, float, float, float]:
    xy = np.array(list(_coordinates(geometry)), dtype="float64").reshape(-1, 2)
    if xy.size == 0:
        return (math.inf, math.inf, -math.inf, -math.inf)
    return float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max())


def _union_bounds(boxes: list[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    b = np.array(boxes)
    return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())
